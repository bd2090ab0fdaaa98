"""Benchmark gaspar_tw against its peers, side by side: ``python bench/run.py [--quick] [--json]``.

Each row (gaspar_tw over TCP, over the framed protocol, through submit(), pool.call() and
pool.map(); ampoule; ProcessPoolExecutor; multiprocessing.Pool; deferToThread; a raw txZMQ round
trip; a bare Twisted server) runs in its own process (bench/server.py). The function-call
workloads are bench/calls.py's (``--only calls`` runs them alone). Every row of a workload is
started, then measured in turn, several rounds, the order rotated each round. Ratios between
rows are computed round by round and the median is reported, because the machine's speed
drifts. TCP rows are driven by bench/loadgen.c (a one-thread C epoll client compiled here with
gcc), in-process rows by a driver in the row's own reactor. Outputs go to bench/results/
(latest.md, latest.json, bench.png, server logs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import time

import calls
from spin import spin

BENCH = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCH, "results")
CONCURRENCY = 64
FRAMED_CONNECTIONS = 8
KIB = 1024
MIB = 1024 * 1024

ROW_NAMES = {
    "gaspar-tcp": "gaspar_tw TCP (gaspar format, 1 conn/request)",
    "framed": "gaspar_tw framed (8 conns x 8 pipelined)",
    "submit": "gaspar_tw submit()",
    "ampoule": "ampoule (recycleAfter=0)",
    "ppe": "ProcessPoolExecutor + callFromThread",
    "txzmq": "raw txZMQ PUSH/PULL round trip",
    "bare": "bare Twisted Int32StringReceiver (TCP ceiling)",
    "processes": "plain processes looping the handler (no pool: the hardware's ceiling)",
    "call": "gaspar_tw pool.call()",
    "thread": "deferToThread",
    "map": "gaspar_tw pool.map()",
    "ppe-map-1": "ProcessPoolExecutor.map, chunksize 1",
    "ppe-map-100": "ProcessPoolExecutor.map, chunksize 100",
    "ppe-map-1000": "ProcessPoolExecutor.map, chunksize 1,000",
    "ppe-map-auto": "ProcessPoolExecutor.map, chunksize len / (4 x workers)",
    "mp-map": "multiprocessing.Pool.map, default chunksize",
}
TCP_ROWS = {"gaspar-tcp", "framed", "bare"}


def workloads() -> list[dict]:
    """Each workload: a handler, a payload size and its rows as (row, workers), or (row,
    workers, handler) for a row that runs another handler than the workload's. Optional:
    C{concurrency}; C{once}, rows measured in the first round only; C{slow}, rows left out
    with --quick; C{nocopy}, rows asked for the large-argument measurement after the rounds;
    C{names}, C{unit}, C{latency}, C{reference}, C{reference_label} and C{about}, for the
    table."""
    return [
        {
            "name": "echo 100 B",
            "handler": "echo",
            "size": 100,
            "rows": [
                (r, 2)
                for r in ("submit", "txzmq", "ppe", "ampoule", "framed", "gaspar-tcp", "bare")
            ],
        },
        {
            "name": "echo 64 KiB",
            "handler": "echo",
            "size": 64 * KIB,
            "rows": [(r, 2) for r in ("submit", "txzmq", "ppe", "framed", "gaspar-tcp")],
        },
        {
            "name": "echo 1 MiB",
            "handler": "echo",
            "size": MIB,
            "rows": [(r, 2) for r in ("submit", "txzmq", "ppe", "framed")],
        },
        {
            "name": "cpu 5 ms",
            "handler": "cpu",
            "size": 100,
            "concurrency": 16,
            "rows": [(r, w) for r in ("submit", "ampoule", "ppe", "processes") for w in (1, 2)],
        },
        *calls.workloads(),
    ]


def row_key(row: str, workers: int) -> str:
    return f"{row} w{workers}"


class SpinRow:
    """The C{processes} row: no server, plain processes started for each measurement."""

    port = None
    unavailable = None

    def __init__(self, row: str, handler: str, workers: int) -> None:
        self.row, self.handler, self.workers = row, handler, workers

    def wait_ready(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class Row:
    """A row's server process and the pipe we talk to it through."""

    def __init__(self, row: str, handler: str, workers: int, log_name: str) -> None:
        self.row, self.workers = row, workers
        self.log = open(os.path.join(RESULTS, log_name), "wb")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(BENCH, "server.py"), row, handler, str(workers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=RESULTS,
        )
        self.port = None
        #: Why the row cannot run here, if it said so when ready.
        self.unavailable: str | None = None

    def read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.row}: no answer within {timeout}s (see {self.log.name})")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.row}: server exited (see {self.log.name})")
        return json.loads(line)

    def wait_ready(self, timeout: float = 30.0) -> None:
        message = self.read(timeout)
        if not message.get("ready"):
            raise RuntimeError(f"{self.row} failed to start:\n{message.get('error')}")
        self.port = message["port"]
        self.unavailable = message.get("unavailable")

    def stop(self) -> None:
        """Ask the row to stop (close its stdin); L{close} waits for it."""
        try:
            self.process.stdin.close()
        except OSError:
            pass

    def send(self, command: str) -> None:
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def close(self, timeout: float = 20.0) -> None:
        self.stop()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def build_loadgen() -> str:
    """Compile bench/loadgen.c with gcc into bench/results/."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("bench needs gcc (or cc) to build the C load generator bench/loadgen.c")
    binary = os.path.join(RESULTS, "loadgen")
    subprocess.run(
        [compiler, "-O2", "-o", binary, os.path.join(BENCH, "loadgen.c")],
        check=True,
    )
    return binary


def measure(
    row: Row, size: int, seconds: float, loadgen: str, concurrency: int = CONCURRENCY
) -> dict:
    """One measurement of one row: requests/s, latencies, parent CPU, reactor lag."""
    if isinstance(row, SpinRow):
        result = spin(row.handler, row.workers, seconds)
    elif row.row in TCP_ROWS:
        mode = "framed" if row.row == "framed" else "oneshot"
        row.send("start")
        out = subprocess.run(
            [
                loadgen,
                "127.0.0.1",
                str(row.port),
                mode,
                str(concurrency),
                str(FRAMED_CONNECTIONS),
                str(seconds),
                str(size),
            ],
            capture_output=True,
            check=True,
            timeout=seconds + 30,
        )
        result = json.loads(out.stdout)
        row.send("stop")
        result.update(row.read(10))
    else:
        row.send(f"run {seconds} {size} {concurrency}")
        result = row.read(seconds + 30)
    if "failed" in result or "skipped" in result:
        return result
    done = max(1, result["completed"])
    result["rps"] = result["requests"] / result["seconds"]
    result["mib_s"] = result["rps"] * size / MIB
    result["cpu_us"] = result["cpu_s"] / done * 1e6
    return result


def start_rows(work: dict, number: int) -> list[Row | SpinRow]:
    rows: list[Row | SpinRow] = []
    for r, w, *handler in work["rows"]:
        h = handler[0] if handler else work["handler"]
        rows.append(
            SpinRow(r, h, w) if r == "processes" else Row(r, h, w, f"{number}-{h}-{r}-w{w}.log")
        )
    return rows


def lag_text(lag: float | None) -> str:
    return "     -" if lag is None else f"{lag:6.2f}"


def run_workload(
    work: dict, rows: list[Row], rounds: int, seconds: float, warmup: float, loadgen: str
) -> dict:
    concurrency = work.get("concurrency", CONCURRENCY)
    print(
        f"== {work['name']}: {rounds} rounds x {seconds}s per row, "
        + work.get("about", f"{concurrency} in flight"),
        file=sys.stderr,
    )
    # Rows that cannot run, or stopped running, have a note instead of samples.
    notes: dict[str, str] = dict(work.get("notes", {}))
    once = set(work.get("once", ()))

    def noted(key: str, result: dict) -> bool:
        if "failed" in result or "skipped" in result:
            notes[key] = result.get("skipped") or "failed: " + result["failed"].splitlines()[-1]
            print(f"   {key}: {notes[key]}", file=sys.stderr)
            return True
        return False

    for row in rows:
        row.wait_ready()
        if row.unavailable:
            notes[row_key(row.row, row.workers)] = "not available: " + row.unavailable
    live = [row for row in rows if not row.unavailable]
    for row in live:
        if row_key(row.row, row.workers) not in once:
            result = measure(row, work["size"], warmup, loadgen, concurrency)
            noted(row_key(row.row, row.workers), result)
    samples: dict[str, list[dict]] = {row_key(r.row, r.workers): [] for r in live}
    for round_number in range(rounds if live else 0):
        shift = round_number % len(live)
        for row in live[shift:] + live[:shift]:
            key = row_key(row.row, row.workers)
            if key in notes or (key in once and round_number > 0):
                continue
            result = measure(row, work["size"], seconds, loadgen, concurrency)
            if noted(key, result):
                continue
            result["round"] = round_number
            samples[key].append(result)
            print(
                f"   round {round_number + 1} {key:14s}"
                f" {result['rps']:9.0f} {work.get('unit', 'req')}/s"
                f"  p99 {result['p99_ms']:7.2f} ms"
                f"  lag p99 {lag_text(result['lag_p99_ms'])} ms  errors {result['errors']}",
                file=sys.stderr,
            )
    nocopy = {}
    for row in live:
        key = row_key(row.row, row.workers)
        if key in work.get("nocopy", {}).get("names", {}):
            row.send(f"nocopy {work['nocopy']['bytes']}")
            result = row.read(120)
            if not noted(key, result):
                nocopy[key] = result
                print(f"   {key} nocopy: {result}", file=sys.stderr)
    result = {
        "name": work["name"],
        "size": work["size"],
        "concurrency": concurrency,
        "samples": {key: measured for key, measured in samples.items() if measured},
        "notes": notes,
    }
    if nocopy:
        result["nocopy"] = nocopy
    if nocopy:
        result["nocopy_names"] = work["nocopy"]["names"]
    for field in ("names", "unit", "latency", "reference", "reference_label", "about"):
        if field in work:
            result[field] = work[field]
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(samples: dict, a: str, b: str) -> float | None:
    """Median over rounds of rps(a)/rps(b), each ratio taken within one round."""
    return calls.speedup(samples, a, b)


def scaling_share(samples: dict, row: str) -> float | None:
    """Median over rounds of (row's 2 vs 1 workers) / (plain processes' 2 vs 1)."""
    keys = (f"{row} w2", f"{row} w1", "processes w2", "processes w1")
    if not all(k in samples for k in keys):
        return None
    values = [
        (a["rps"] / b["rps"]) / (c["rps"] / d["rps"])
        for a, b, c, d in zip(*(samples[k] for k in keys), strict=False)
        if b["rps"] and c["rps"] and d["rps"]
    ]
    return median(values) if values else None


def row_name(result: dict, key: str) -> str:
    row, workers = key.split()
    if row in result.get("names", {}):
        return result["names"][row]
    return ROW_NAMES[row] + f", {workers[1:]} worker(s)"


def summarize(result: dict) -> list[dict]:
    rows = []
    for key, samples in result["samples"].items():
        if not samples:
            continue
        lags = [s["lag_p99_ms"] for s in samples if s["lag_p99_ms"] is not None]
        rows.append(
            {
                "row": key,
                "name": row_name(result, key),
                "rps": median([s["rps"] for s in samples]),
                "mib_s": median([s["mib_s"] for s in samples]),
                "p50_ms": median([s["p50_ms"] for s in samples]),
                "p99_ms": median([s["p99_ms"] for s in samples]),
                "cpu_us": median([s["cpu_us"] for s in samples]),
                "lag_p99_ms": median(lags) if lags else None,
                "errors": sum(s["errors"] for s in samples),
                "vs_reference": ratio(result["samples"], result.get("reference", "submit w2"), key),
            }
        )
    return rows


def targets(results: dict) -> list[tuple[str, float | None, float, str]]:
    """(target, measured, goal, unit) for each target of issue 4 (bench/calls.py has issue
    13's)."""
    by_name = {r["name"]: r["samples"] for r in results}
    echo = by_name.get("echo 100 B", {})
    cpu = by_name.get("cpu 5 ms", {})
    big = by_name.get("echo 1 MiB", {})
    # Reactor lag: each row's median over rounds; the worst gaspar_tw row, and for scale the
    # bare Twisted server's under its own load (what the box gives a reactor at all).
    row_lags = {
        f"{r['name']}: {key}": median([s["lag_p99_ms"] for s in samples])
        for r in results
        if not r["name"].startswith("calls:")  # issue 13's (bench/calls.py) have their own
        for key, samples in r["samples"].items()
        if key.split()[0] in ("submit", "gaspar-tcp", "framed") and samples
    }
    worst = max(row_lags, key=row_lags.get, default=None)
    bare_lag = median([s["lag_p99_ms"] for s in echo.get("bare w2", [])])
    gaspar_p99 = median([s["p99_ms"] for s in echo.get("gaspar-tcp w2", [])])
    big_rate = median([s["mib_s"] for s in big.get("submit w2", [])])
    return [
        ("submit() echo vs ampoule", ratio(echo, "submit w2", "ampoule w2"), 8.0, "x"),
        ("submit() echo vs ProcessPoolExecutor", ratio(echo, "submit w2", "ppe w2"), 7.0, "x"),
        ("submit() echo vs raw txZMQ", ratio(echo, "submit w2", "txzmq w2"), 1.5, "x"),
        ("framed echo vs gaspar TCP", ratio(echo, "framed w2", "gaspar-tcp w2"), 4.0, "x"),
        ("gaspar TCP vs bare Twisted", ratio(echo, "gaspar-tcp w2", "bare w2"), 0.85, "x"),
        ("gaspar TCP p99 (ms, at most)", gaspar_p99, 20.0, "ms"),
        ("cpu 5 ms: submit() 2 workers vs 1", ratio(cpu, "submit w2", "submit w1"), 1.9, "x"),
        (
            "(for scale) cpu 5 ms: 2 plain processes vs 1, no pool (the hardware's ceiling)",
            ratio(cpu, "processes w2", "processes w1"),
            1.9,
            "x",
        ),
        (
            "(for scale) cpu 5 ms: submit() 2 vs 1 as a share of the hardware's 2 vs 1",
            scaling_share(cpu, "submit"),
            1.0,
            "",
        ),
        (
            f"reactor lag p99, worst gaspar_tw row ({worst}) (ms, at most)",
            row_lags.get(worst),
            5.0,
            "ms",
        ),
        ("(for scale) reactor lag p99 of bare Twisted under TCP load (ms)", bare_lag, 5.0, "ms"),
        ("1 MiB echo through submit() (MiB/s)", big_rate, 1000.0, "MiB/s"),
    ]


def render_targets(title: str, targets: list[tuple[str, float | None, float, str]]) -> list[str]:
    """A targets table (none if nothing of it was measured): "(for scale)" rows have no goal,
    "at most" rows are met at or under their goal, the others at or over it."""
    if all(value is None or value != value for _, value, _, _ in targets):
        return []
    lines = [f"### {title}", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, value, goal, unit in targets:
        if value is None or value != value:
            wanted = "-" if name.startswith("(for scale)") else f"{goal:,} {unit}"
            lines.append(f"| {name} | n/a | {wanted} | - |")
            continue
        if name.startswith("(for scale)"):
            lines.append(f"| {name} | {value:,.2f} {unit} | - | - |")
            continue
        at_most = "at most" in name
        met = value <= goal if at_most else value >= goal
        lines.append(
            f"| {name} | {value:,.2f} {unit} | {goal:,} {unit} | {'yes' if met else 'NO'} |"
        )
    return [*lines, ""]


def render_workload(result: dict) -> list[str]:
    unit = result.get("unit", "req")
    latency = f" {result['latency']}" if "latency" in result else ""
    reference = result.get("reference_label", "submit() w2")
    lines = [f"### {result['name']}", ""]
    if "about" in result:
        lines += [result["about"] + ".", ""]
    rate = "req/s" if unit == "req" else f"{unit}s/s"
    lines += [
        f"| row | {rate} | MiB/s | p50 ms{latency} | p99 ms{latency} "
        f"| parent CPU µs/{unit} | lag p99 ms | errors | {reference} / row |",
        "|" + "---|" * 9,
    ]
    for r in summarize(result):
        vs = f"{r['vs_reference']:.2f}x" if r["vs_reference"] else "-"
        mib = f"{r['mib_s']:,.1f}" if result["size"] else "-"
        cpu = f"{r['cpu_us']:.2f}" if unit == "item" else f"{r['cpu_us']:.0f}"
        lag = "-" if r["lag_p99_ms"] is None else f"{r['lag_p99_ms']:.2f}"
        lines.append(
            f"| {r['name']} | {r['rps']:,.0f} | {mib} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {cpu} | {lag} | {r['errors']} | {vs} |"
        )
    lines.append("")
    for key, note in result.get("notes", {}).items():
        lines.append(f"- {row_name(result, key)}: {note}")
    if result.get("notes"):
        lines.append("")
    if result.get("nocopy"):
        lines += [
            "| one call with a 256 MiB bytes argument, len(data) | parent peak RSS growth MiB "
            "| parent tracemalloc peak MiB | seconds |",
            "|---|---|---|---|",
        ]
        for key, n in result["nocopy"].items():
            lines.append(
                f"| {result['nocopy_names'].get(key, key)} | {n['peak_rss_growth_mib']:,.1f} "
                f"| {n['tracemalloc_peak_mib']:,.1f} | {n['seconds']:.2f} |"
            )
        lines.append("")
    return lines


def render(results: dict, meta: dict) -> str:
    lines = [
        f"Command: {meta['command']}",
        f"Machine: {meta['machine']}; {meta['rounds']} rounds x {meta['seconds']}s per row, "
        f"{CONCURRENCY} requests in flight (cpu: 16; calls: as said under each); medians over"
        " rounds; ratios taken round by round.",
        f"TCP load generator: {meta['loadgen']}.",
        "",
    ]
    for result in results:
        lines += render_workload(result)
    lines += render_targets("Targets (issue 4)", targets(results))
    lines += render_targets("Targets (issue 13: function calls)", calls.targets(results))
    return "\n".join(lines).rstrip("\n")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 5), squeeze=False)
    for ax, result in zip(axes[0], results, strict=False):
        rows = summarize(result)
        names = [r["row"] for r in rows]
        values = [r["rps"] for r in rows]
        colors = [
            "tab:green" if n.split()[0] in TCP_ROWS | {"submit", "call", "map"} else "tab:gray"
            for n in names
        ]
        ax.barh(names, values, color=colors)
        ax.set_title(result["name"])
        ax.set_xlabel("requests/s (median)")
        ax.invert_yaxis()
    fig.suptitle("gaspar_tw vs peers (green: gaspar_tw and the TCP ceiling)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (under a minute; too short to quote)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, help="rounds per workload")
    parser.add_argument("--seconds", type=float, help="seconds per measurement")
    parser.add_argument(
        "--only",
        action="append",
        help="run only workloads whose name contains this (e.g. 'calls', 'echo 100 B')",
    )
    parser.add_argument("--rows", help="comma-separated rows to run (default: all)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (0.2 if args.quick else 0.5)
    warmup = 0.03 if args.quick else 0.3
    os.makedirs(RESULTS, exist_ok=True)
    loadgen = build_loadgen()
    started = time.monotonic()
    chosen = [w for w in workloads() if not args.only or any(o in w["name"] for o in args.only)]
    if args.rows:
        wanted = set(args.rows.split(","))
        for w in chosen:
            w["rows"] = [spec for spec in w["rows"] if spec[0] in wanted]
        chosen = [w for w in chosen if w["rows"]]
    if args.quick:
        for w in chosen:
            slow = set(w.get("slow", ()))
            w["notes"] = {key: "not run with --quick (it takes seconds)" for key in slow}
            w["rows"] = [spec for spec in w["rows"] if row_key(spec[0], spec[1]) not in slow]
    # Every row starts at once (idle rows cost nothing) and all stop together at the end.
    all_rows = [start_rows(w, n) for n, w in enumerate(chosen)]
    try:
        results = [
            run_workload(w, rows, rounds, seconds, warmup, loadgen)
            for w, rows in zip(chosen, all_rows, strict=True)
        ]
    finally:
        for rows in all_rows:
            for row in rows:
                row.stop()
        for rows in all_rows:
            for row in rows:
                row.close()
    meta = {
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or '?'}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "rounds": rounds,
        "seconds": seconds,
        "loadgen": "one-thread C epoll client (bench/loadgen.c, gcc -O2), "
        "on the same 2 cores as the server",
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    table = render(results, meta)
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(table + "\n")
    document = {
        "meta": meta,
        "workloads": results,
        "targets": targets(results),
        "call_targets": calls.targets(results),
    }
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(document, f, indent=1)
    try:
        plot(results, os.path.join(RESULTS, "bench.png"))
    except ImportError:
        print("matplotlib not installed (pip install '.[bench]'): no PNG", file=sys.stderr)
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(table)
    print(f"({meta['wall_seconds']} s; outputs in {RESULTS})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
