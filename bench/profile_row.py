"""Profile one benchmark row's parent process with py-spy while it is under load.

    python bench/profile_row.py ROW [--handler echo] [--size 100] [--seconds 4] [--workers 2]

Prints the functions where the parent (reactor) process spends its time, by own samples
and by inclusive samples, and the CPU seconds of the parent and of each worker. Needs py-spy
(``pip install py-spy``) and permission to ptrace the child (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile

import run

CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("row", choices=sorted(run.ROW_NAMES))
    parser.add_argument("--handler", default="echo")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    os.makedirs(run.RESULTS, exist_ok=True)
    loadgen = run.build_loadgen()
    row = run.Row(args.row, args.handler, args.workers, f"profile-{args.row}.log")
    try:
        row.wait_ready()
        pid = row.process.pid
        watched = [pid, *children(pid)]
        before = {p: cpu_seconds(p) for p in watched}
        raw = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "-r",
                "500",
                "-f",
                "raw",
                "-o",
                raw,
                "-d",
                str(int(args.seconds)),
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = run.measure(row, args.size, args.seconds, loadgen)
        spy.wait(args.seconds + 30)
        after = {p: cpu_seconds(p) for p in watched}
    finally:
        row.close()
    print(
        f"{args.row}: {result['rps']:.0f} req/s, p99 {result['p99_ms']:.2f} ms, "
        f"lag p99 {result['lag_p99_ms']:.2f} ms, parent {result['cpu_us']:.1f} µs/request"
    )
    for p in watched:
        role = "parent" if p == pid else "child "
        print(f"  {role} pid {p}: {after[p] - before[p]:.2f} CPU s")
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    os.unlink(raw)
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        print(f"\nTop {args.top} by {title} ({total} samples):")
        for frame, n in counter.most_common(args.top):
            print(f"  {100 * n / max(1, total):5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
