"""Paired A/B of bench/run.py: two checkouts, alternating runs, each row's ratio pair by pair.

    git archive 93c3bbd | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    python bench/ab.py /tmp/old . --pairs 6 -- --rows gaspar-tcp,framed,submit

Each pair runs ``bench/run.py --json`` of one checkout, then of the other (the order swapped
every pair, so a drift of the machine's speed falls on both alike), each with its own
``bench/`` and its own ``gaspar_tw`` first on the path. For every workload and row it prints
the median requests/s and parent CPU µs per request of each side, the median of the new/old
ratios of the pairs, and each pair's ratio (their spread is the resolution of the comparison).
Arguments after ``--`` go to bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(checkout: str, extra: list[str]) -> dict[str, float]:
    """One bench/run.py of C{checkout}: C{{"workload | row": rps, "... | cpu_us": µs}}."""
    env = dict(os.environ, PYTHONPATH=checkout)
    done = subprocess.run(
        [sys.executable, os.path.join(checkout, "bench", "run.py"), "--json", *extra],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    document = json.loads(done.stdout[done.stdout.index("{") :])
    figures = {}
    for workload in document["workloads"]:
        for row, samples in workload["samples"].items():
            key = f"{workload['name']} | {row}"
            figures[key] = statistics.median(s["rps"] for s in samples)
            figures[key + " | cpu_us"] = statistics.median(s["cpu_us"] for s in samples)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Arguments after -- go to bench/run.py."
    )
    parser.add_argument("old", help="the checkout to compare against")
    parser.add_argument("new", help="the checkout under test")
    parser.add_argument("--pairs", type=int, default=6, help="runs of each side [6]")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if extra else 0)])
    sides = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for pair in range(args.pairs):
        order = ("old", "new") if pair % 2 == 0 else ("new", "old")
        for side in order:
            results[side].append(run(sides[side], extra))
            print(f"pair {pair + 1}/{args.pairs}: {side} done", file=sys.stderr, flush=True)
    print(f"{'workload | row':<42} {'old':>9} {'new':>9} {'new/old':>8}  each pair")
    for key in sorted(results["old"][0]):
        old = [figures[key] for figures in results["old"]]
        new = [figures[key] for figures in results["new"]]
        ratios = [n / o for o, n in zip(old, new, strict=True) if o]
        print(
            f"{key:<42} {statistics.median(old):>9.0f} {statistics.median(new):>9.0f}"
            f" {statistics.median(ratios):>8.2f}  {' '.join(f'{r:.2f}' for r in ratios)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
