"""The ``gaspar-tw`` command: ``status`` of a running daemon, ``bench`` load against one."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from gaspar_tw.client import parse_address

#: Endpoint types given as they are to Twisted's clientFromString.
_ENDPOINT_TYPES = ("tcp:", "tcp6:", "unix:", "ssl:", "tls:")


def fetch_status(address: str, timeout: float = 10.0) -> dict:
    """GET C{http://HOST:PORT/status} from a daemon's metrics port."""
    host, port = parse_address(address)
    if ":" in host:
        host = f"[{host}]"
    with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=timeout) as response:
        return json.load(response)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    return f"{minutes}m {seconds:02d}s"


def format_status(status: dict) -> str:
    """A daemon's /status for people."""
    requests = ", ".join(f"{name} {count}" for name, count in status["requests"].items())
    lines = [
        f"gaspar-tw producer pid {status['pid']} on {status['address'] or '(no listener)'},"
        f" handler {status['handler']}",
        f"up {_duration(status['uptime'])}; workers {_workers(status)},"
        f" {status['worker_restarts']} restarts;"
        f" {status['pending']} pending, {status['queued']} queued",
        f"requests: {requests}",
        "",
        f"{'where':<16}  {'slot':>4}  {'pid':>8}  {'served':>10}  {'up':>12}",
    ]
    for worker in status["workers"]:
        up = _duration(worker["uptime"]) if worker["ready"] else "starting"
        where, slot = worker.get("where", "local"), worker["slot"]
        lines.append(
            f"{where:<16}  {'-' if slot is None else slot:>4}  {worker['pid'] or '-':>8}"
            f"  {worker['served']:>10}  {up:>12}"
        )
    return "\n".join(lines)


def _workers(status: dict) -> str:
    """C{2/2 alive} (local workers), then C{+ 3 remote} if any are connected."""
    remote = status.get("workers_remote", 0)
    local = status["workers_alive"] - remote
    text = f"{local}/{status['workers_configured']} alive"
    return f"{text} + {remote} remote" if remote else text


def status_command(args: argparse.Namespace) -> int:
    try:
        status = fetch_status(args.address, args.timeout)
    except (OSError, urllib.error.URLError, ValueError) as e:
        print(f"gaspar-tw status: cannot read http://{args.address}/status: {e}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def client_endpoint(target: str) -> str:
    """``tcp:HOST:PORT`` and other endpoint strings as they are; ``HOST:PORT`` becomes tcp."""
    if target.startswith(_ENDPOINT_TYPES):
        return target
    host, port = parse_address(target)
    return "tcp:{}:{}".format(host.replace(":", "\\:"), port)


def format_result(summary: dict, endpoint: str, size: int, concurrency: int) -> str:
    latency = "  ".join(f"{name} {value:.2f}" for name, value in summary["latency_ms"].items())
    lines = [
        f"{summary['sent']} requests to {endpoint} ({size} bytes, {concurrency} concurrent):"
        f" {summary['ok']} ok, {summary['empty']} empty replies, {summary['errors']} errors"
        f" in {summary['elapsed']:.2f} s",
        f"throughput: {summary['throughput']:,.0f} requests/s",
        f"latency (ms): {latency}",
    ]
    if summary["first_error"]:
        lines.append(f"first error: {summary['first_error']}")
    return "\n".join(lines)


def bench_command(args: argparse.Namespace) -> int:
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred

    from gaspar_tw.client import GasparClient
    from gaspar_tw.ops.loadgen import LoadRun

    endpoint = client_endpoint(args.endpoint)
    try:
        client = GasparClient(
            reactor,
            endpoint,
            timeout=args.timeout,
            framed=args.framed,
            connections=args.connections,
        )
    except (ValueError, TypeError, KeyError) as e:
        print(f"gaspar-tw bench: bad endpoint {args.endpoint!r}: {e}", file=sys.stderr)
        return 2
    load = LoadRun(
        reactor,
        client.request,
        os.urandom(args.size),
        args.requests,
        args.concurrency,
        max_seconds=args.max_seconds,
        empty_is_failure=not args.framed,
    )
    results: list = []

    async def run(reactor) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=args.requests,
            unit="req",
            disable=None if args.progress is None else not args.progress,
            file=sys.stderr,
        )
        ticker = task.LoopingCall(lambda: bar.update(load.finished - bar.n))
        ticker.start(0.1)
        try:
            results.append(await load.start())
        finally:
            ticker.stop()
            bar.update(load.finished - bar.n)
            bar.close()
            await client.close()

    try:
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    summary = results[0].summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_result(summary, endpoint, args.size, args.concurrency))
    return 0 if summary["ok"] == summary["requests"] else 1


def keygen_command(args: argparse.Namespace) -> int:
    from gaspar_tw.zeromq.curve import keygen

    for path in keygen(args.directory):
        print(path)
    print(
        "give the producer --curve-keys with this directory; copy it without"
        " producer.key_secret to each worker host (--curve-keys there too)"
    )
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gaspar-tw", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    status = commands.add_parser(
        "status", help="show a running daemon's workers and counters (its --metrics port)"
    )
    status.add_argument("address", metavar="HOST:PORT", help="the daemon's --metrics address")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds [10]")
    status.set_defaults(run=status_command)

    bench = commands.add_parser(
        "bench",
        help="load a running daemon: the gaspar format (one connection per request),"
        " or the framed protocol (--framed)",
    )
    bench.add_argument(
        "endpoint", metavar="ENDPOINT", help="tcp:HOST:PORT (any Twisted client endpoint)"
    )
    bench.add_argument("--concurrency", "-c", type=_positive, default=64, help="[64]")
    bench.add_argument("--requests", "-n", type=_positive, default=10000, help="[10000]")
    bench.add_argument("--size", "-s", type=int, default=100, help="request bytes [100]")
    bench.add_argument("--timeout", type=float, default=30.0, help="seconds per request [30]")
    bench.add_argument(
        "--max-seconds", type=float, default=600.0, help="start no request after this [600]"
    )
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr [when it is a terminal]",
    )
    bench.add_argument(
        "--framed",
        action="store_true",
        help="ENDPOINT is a --framed-endpoint: pipeline requests over persistent connections",
    )
    bench.add_argument(
        "--connections", type=_positive, default=8, help="persistent connections, --framed [8]"
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(run=bench_command)

    keys = commands.add_parser(
        "keygen", help="write CURVE key pairs for --bind/--connect (producer and worker)"
    )
    keys.add_argument("directory", metavar="DIR", help="created if missing")
    keys.set_defaults(run=keygen_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
