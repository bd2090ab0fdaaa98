"""The ``gaspar-tw`` console script against live daemons: ``status`` and ``bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import child_env
from test_framed import framed_daemon
from test_metrics import metrics_address

from gaspar_tw.version import version

GASPAR_TW = Path(sys.executable).parent / "gaspar-tw"


def gaspar_tw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    assert GASPAR_TW.exists(), "the gaspar-tw console script is installed with the package"
    return subprocess.run(
        [str(GASPAR_TW), *args], capture_output=True, text=True, timeout=timeout, env=child_env()
    )


def test_bench_drives_a_bounded_load_and_reports_every_request_ok(daemon):
    endpoint = f"tcp:{daemon.host}:{daemon.port}"
    args = ("--concurrency", "16", "--requests", "200", "--size", "100", "--progress")
    result = gaspar_tw("bench", endpoint, *args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] == summary["sent"] == 200 and summary["errors"] == 0
    assert summary["throughput"] > 0 and summary["elapsed"] > 0
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert "200/200" in result.stderr  # the progress bar finished

    text = gaspar_tw("bench", f"{daemon.host}:{daemon.port}", "-n", "50", "-c", "8")
    assert text.returncode == 0 and "50 ok, 0 empty replies, 0 errors" in text.stdout
    assert "requests/s" in text.stdout and "p99" in text.stdout


def test_bench_drives_the_framed_port_over_a_few_connections(daemon_factory):
    daemon, (host, port) = framed_daemon(daemon_factory)
    args = ("--framed", "--connections", "4", "-c", "32", "-n", "300", "--json")
    result = gaspar_tw("bench", f"tcp:{host}:{port}", *args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] == summary["sent"] == 300 and summary["errors"] == 0
    # Over the framed protocol an empty reply is a reply (failures have a status of their own).
    empty = gaspar_tw("bench", f"tcp:{host}:{port}", "--framed", "-n", "5", "-s", "0", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["ok"] == 5


def test_bench_counts_failed_requests_and_exits_non_zero(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:fail", workers=1)
    result = gaspar_tw("bench", f"tcp:{daemon.host}:{daemon.port}", "-n", "20", "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["ok"] == 0 and summary["empty"] == 20


def test_status_prints_workers_pids_and_counters(daemon_factory):
    daemon = daemon_factory(
        "--handler", "gaspar_tw.examples:echo", "--metrics", "tcp:0:interface=127.0.0.1"
    )
    result = gaspar_tw("status", f"http://{metrics_address(daemon)}/metrics")  # the logged URL
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"gaspar-tw {version()} producer pid {daemon.process.pid}")
    assert f"pid {daemon.process.pid} on {daemon.address}" in out and "workers 2/2 alive," in out
    rows = [line.split() for line in out.splitlines()[-2:]]
    assert {int(row[1]): int(row[2]) for row in rows} == daemon.worker_pids
    assert [row[0] for row in rows] == ["local", "local"]

    raw = json.loads(gaspar_tw("status", metrics_address(daemon), "--json").stdout)
    assert sorted(w["pid"] for w in raw["workers"]) == sorted(daemon.worker_pids.values())
    assert raw["version"] == version()

    wrong = gaspar_tw("status", daemon.address)  # its gaspar port, not its metrics port
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr == (
        f"gaspar-tw status: {daemon.address} does not answer HTTP: give the daemon's"
        " --metrics address, not its gaspar port\n"
    )


def test_percentiles_are_nearest_rank():
    from gaspar_tw.ops.loadgen import LoadResult

    result = LoadResult(100, ok=100, elapsed=2.0, latencies=[i / 1000 for i in range(100, 0, -1)])
    assert result.percentile(50) == 0.050 and result.percentile(99) == 0.099
    assert result.percentile(100) == 0.100 and result.throughput == 50.0
    assert LoadResult(1).percentile(50) == 0.0
