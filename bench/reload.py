"""Requests served during a SIGHUP reload, against the same load without one, in one run.

For each round: start ``twistd -n gaspar`` (the echo handler, ``--workers`` workers) on a
loopback port the OS picks, drive it with ``gaspar-tw bench`` (``--requests`` requests,
``--concurrency`` in flight, one connection per request), and, in the ``reload`` rounds, send
SIGHUP ``--reloads`` times while the load runs (every worker is replaced each time). Rounds
alternate (no reload, reload, ...) so that both see the same machine. Prints, per round,
requests ok / failed, requests per second and the latency percentiles, then the medians.

    .venv/bin/python bench/reload.py            # 3 rounds of each, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]
LISTENING = re.compile(r"listening on tcp [\d.]+:(\d+)")


def start_daemon(log: Path, workers: int) -> tuple[subprocess.Popen, int]:
    argv = [*TWISTD, "-n", "--pidfile=", "gaspar", "--handler", "gaspar_tw.examples:echo"]
    argv += ["--workers", str(workers), "--endpoint", "tcp:0:interface=127.0.0.1"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    with open(log, "w") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        found = LISTENING.search(text)
        if found and text.count(" ready (pid ") >= workers:
            return daemon, int(found.group(1))
        if daemon.poll() is not None:
            break
        time.sleep(0.05)
    daemon.kill()
    raise SystemExit(f"the daemon did not start:\n{log.read_text()}")


def one_round(args, reloads: int, log: Path) -> dict:
    daemon, port = start_daemon(log, args.workers)
    try:
        bench = subprocess.Popen(
            [sys.executable, "-m", "gaspar_tw.ops.cli", "bench", f"127.0.0.1:{port}"]
            + ["--requests", str(args.requests), "--concurrency", str(args.concurrency), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(args.first_reload_after)
        for _ in range(reloads):
            if bench.poll() is not None:
                raise SystemExit("the load ended before the reloads: raise --requests")
            daemon.send_signal(signal.SIGHUP)
            time.sleep(args.between_reloads)
        result = json.loads(bench.communicate(timeout=600)[0])
    finally:
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(30)
    done = log.read_text().count("reload done:")
    if done != reloads or status != 0:
        raise SystemExit(f"{done} of {reloads} reloads, exit status {status}:\n{log.read_text()}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reloads", type=int, default=2)
    parser.add_argument("--first-reload-after", type=float, default=1.0)
    parser.add_argument("--between-reloads", type=float, default=1.5)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"no reload": [], f"{args.reloads} reloads": []}
    with tempfile.TemporaryDirectory() as directory:
        for number in range(args.rounds):
            for name, reloads in (("no reload", 0), (f"{args.reloads} reloads", args.reloads)):
                result = one_round(args, reloads, Path(directory) / f"{number}-{reloads}.log")
                rows[name].append(result)
                latency = result["latency_ms"]
                print(
                    f"round {number + 1} {name:>10}: ok {result['ok']:,}, failed"
                    f" {result['errors'] + result['empty']}, {result['throughput']:,.0f} req/s,"
                    f" p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms,"
                    f" max {latency['max']:.1f} ms",
                    flush=True,
                )
    print(
        f"\n{args.workers} echo workers, {args.requests:,} requests a round, {args.concurrency}"
        " in flight (gaspar-tw bench, one connection per request, same machine); medians:"
    )
    for name, results in rows.items():
        failed = sum(r["errors"] + r["empty"] for r in results)
        rate = statistics.median(r["throughput"] for r in results)
        p99 = statistics.median(r["latency_ms"]["p99"] for r in results)
        print(f"  {name:>10}: {rate:,.0f} req/s, p99 {p99:.1f} ms, {failed} failed in all")


if __name__ == "__main__":
    main()
