"""The ``gaspar-tw`` command: a daemon's ``status``, ``bench`` load against it, CURVE ``keygen``."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request

from gaspar_tw.config import DEFAULT_PORT
from gaspar_tw.ops.targets import client_endpoint, gaspar_endpoint, metrics_address

#: What a C{/status} document holds at least (what L{format_status} reads).
STATUS_FIELDS = frozenset(
    {"pid", "address", "handler", "uptime", "pending", "queued", "requests", "workers"}
    | {"workers_configured", "workers_alive", "worker_restarts"}
)


def _sentence(text: str) -> str:
    """C{text} as the tail of a one-line message: lower-case start, no trailing period."""
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _say(command: str, message: object) -> None:
    print(f"gaspar-tw {command}: {message}", file=sys.stderr)


# -- status ------------------------------------------------------------------------------------


def fetch_status(address: str, timeout: float = 10.0) -> dict:
    """GET C{http://HOST:PORT/status} from a daemon's metrics port.

    C{ValueError} says in one line why it could not be read (the cause chained).
    """
    host, port = metrics_address(address)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{address}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise ValueError(_unreadable(e, address, timeout)) from e
    try:
        status = json.loads(body)
    except ValueError as e:
        raise ValueError(f"{url} answered no JSON: is {address} a gaspar_tw --metrics port?") from e
    if not isinstance(status, dict) or not STATUS_FIELDS <= status.keys():
        raise ValueError(
            f"{url} answered JSON that is not a gaspar_tw status:"
            f" is {address} a gaspar_tw --metrics port?"
        )
    return status


def _unreadable(e: Exception, address: str, timeout: float) -> str:
    """Why C{GET /status} from C{address} failed with C{e}."""
    if isinstance(e, urllib.error.HTTPError):
        return (
            f"http://{address}/status answered {e.code} {e.reason}:"
            f" is {address} a gaspar_tw --metrics port?"
        )
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, ConnectionRefusedError):
        return (
            f"cannot connect to {address}: connection refused"
            " (is the daemon running, with --metrics on this address?)"
        )
    if isinstance(reason, socket.gaierror):
        return f"cannot connect to {address}: unknown host"
    if isinstance(reason, TimeoutError):
        return f"no answer from {address} within {timeout:g} s (--timeout)"
    if isinstance(reason, (http.client.HTTPException, ConnectionResetError)):
        return (
            f"{address} does not answer HTTP: give the daemon's --metrics address,"
            " not its gaspar port"
        )
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot connect to {address}: {_sentence(reason.strerror)}"
    return f"cannot read http://{address}/status: {_sentence(str(reason))}"


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
    version = f" {status['version']}" if status.get("version") else ""
    lines = [
        f"gaspar-tw{version} producer pid {status['pid']}"
        f" on {status['address'] or '(no listener)'}, handler {status['handler']}",
        f"up {_duration(status['uptime'])}; workers {_workers(status)},"
        f" {status['worker_restarts']} restarts;"
        f" {status['pending']} pending, {status['queued']} queued",
        f"requests: {requests}",
        *_recycling(status),
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


def _recycling(status: dict) -> list[str]:
    """C{recycles: reload 2, max_requests 5; reloads: ok 1} (what happened, if anything)."""
    recycles = {k: n for k, n in status.get("worker_recycles", {}).items() if n}
    reloads = {k: n for k, n in status.get("reloads", {}).items() if n}
    if not recycles and not reloads:
        return []
    parts = ", ".join(f"{k} {n}" for k, n in recycles.items()) or "none"
    done = ", ".join(f"{k} {n}" for k, n in reloads.items()) or "none"
    return [f"worker recycles: {parts}; reloads: {done}"]


def _workers(status: dict) -> str:
    """C{2/2 alive} (local workers), then C{+ 3 remote} if any are connected;
    C{3 remote (none local)} for a producer that starts no workers of its own."""
    remote = status.get("workers_remote", 0)
    if not status["workers_configured"]:
        return f"{remote} remote (none local)"
    text = f"{status['workers_alive'] - remote}/{status['workers_configured']} alive"
    return f"{text} + {remote} remote" if remote else text


def status_command(args: argparse.Namespace) -> int:
    try:
        metrics_address(args.address)
    except ValueError as e:
        _say("status", e)
        return 2
    try:
        status = fetch_status(args.address, args.timeout)
    except ValueError as e:
        _say("status", e)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


# -- bench -------------------------------------------------------------------------------------


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


def connect_failure(error: Exception) -> str:
    """Why a connection could not be made, for people."""
    from twisted.internet import error as errors

    if isinstance(error, errors.ConnectionRefusedError):
        return "connection refused (is the producer running?)"
    if isinstance(error, errors.DNSLookupError):
        return "unknown host"
    if isinstance(error, errors.TCPTimedOutError):
        return "connection timed out"
    code = getattr(error, "osError", None)
    if isinstance(code, int):
        return _sentence(os.strerror(code))
    return _sentence(str(error)) or type(error).__name__


def bench_command(args: argparse.Namespace) -> int:
    try:
        endpoint, shown = gaspar_endpoint(args.endpoint)
    except ValueError as e:
        _say("bench", e)
        return 2
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred

    try:
        client_endpoint(reactor, endpoint)
    except ValueError as e:
        _say("bench", e)
        return 2

    from gaspar_tw.client import GasparClient
    from gaspar_tw.ops.loadgen import LoadRun

    client = GasparClient(
        reactor, endpoint, timeout=args.timeout, framed=args.framed, connections=args.connections
    )
    load = LoadRun(
        reactor,
        client.request,
        os.urandom(args.size),
        args.requests,
        args.concurrency,
        max_seconds=args.max_seconds,
        empty_is_failure=not args.framed,
        stop_if_unreachable=True,
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
            bar.leave = load.result.unreachable is None
            bar.close()
            await client.close()

    try:
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    result = results[0]
    if result.unreachable is not None:
        _say("bench", f"cannot connect to {shown}: {connect_failure(result.unreachable)}")
        return 1
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_result(summary, endpoint, args.size, args.concurrency))
    return 0 if summary["ok"] == summary["requests"] else 1


# -- keygen ------------------------------------------------------------------------------------


def keygen_command(args: argparse.Namespace) -> int:
    from gaspar_tw.zeromq.curve import existing_keys, keygen

    directory = args.directory
    if os.path.exists(directory) and not os.path.isdir(directory):
        _say("keygen", f"{directory} is not a directory")
        return 1
    existing = existing_keys(directory)
    if existing and not args.force:
        _say(
            "keygen",
            f"{directory} already holds {', '.join(existing)}: --force replaces them"
            " (every worker host then needs the new keys)",
        )
        return 1
    try:
        written = keygen(directory, replace=args.force)
    except OSError as e:
        _say("keygen", f"cannot write keys in {directory}: {_sentence(e.strerror or str(e))}")
        return 1
    for path in written:
        print(path)
    print(
        "give the producer --curve-keys with this directory; copy it without"
        " producer.key_secret to each worker host (--curve-keys there too)"
    )
    return 0


# -- the command line --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, its usage errors in one line: C{gaspar-tw bench: what is wrong; see --help}."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


class _Version(argparse.Action):
    """``--version``: gaspar_tw's version and what it runs on (looked up only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from gaspar_tw.version import version_line

        print(version_line("gaspar-tw"))
        parser.exit()


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}")


def _positive(value: str) -> int:
    number = _whole(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _size(value: str) -> int:
    number = _whole(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more bytes, not {number}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {value!r}")
    return number


DESCRIPTION = """\
Tools for a running gaspar_tw daemon (twistd gaspar): show its status, load it
with requests, make CURVE keys for its remote workers."""
EXAMPLES = f"""\
examples:
  gaspar-tw status 127.0.0.1:9100      the daemon's --metrics address (--metrics tcp:9100)
  gaspar-tw bench 127.0.0.1 -n 1000    1,000 requests to its gaspar port ({DEFAULT_PORT})
  gaspar-tw keygen keys/               key pairs for --bind/--connect --curve-keys keys/

Run gaspar-tw COMMAND --help for a command's options."""


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="gaspar-tw",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--version", action=_Version, help="print the versions of gaspar_tw and what it runs on"
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    status = commands.add_parser(
        "status",
        help="show a running daemon's workers and request counters",
        description="Show a running daemon's workers (where, pid, requests served, uptime),"
        " request counters and queue, read from /status on its metrics port (the daemon"
        " must run with --metrics). Exit status 1 if it cannot be read.",
    )
    status.add_argument(
        "address",
        metavar="HOST:PORT",
        help="the daemon's --metrics address, e.g. 127.0.0.1:9100 for --metrics tcp:9100"
        " (its URL http://HOST:PORT/ works too)",
    )
    status.add_argument("--json", action="store_true", help="print /status as JSON")
    status.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long [10]",
    )
    status.set_defaults(run=status_command)

    bench = commands.add_parser(
        "bench",
        help="load a running daemon with requests; report throughput and latency",
        description="Send requests to a running daemon, keeping --concurrency in flight"
        " until --requests are done, and report throughput and latency. Each request is"
        " --size random bytes on a connection of its own (the gaspar format), or pipelined"
        " over a few persistent connections with --framed; use a handler that answers any"
        " bytes (e.g. gaspar_tw.examples:echo). Exit status: 0 if every request got a"
        " reply (an empty one counts as failed, except with --framed), 1 if not or if"
        " nothing accepts the connection, 2 for a bad ENDPOINT or option.",
    )
    bench.add_argument(
        "endpoint",
        metavar="ENDPOINT",
        help=f"where the daemon listens: HOST:PORT, HOST (port {DEFAULT_PORT}), or a Twisted"
        " client endpoint such as tcp:HOST:PORT or unix:PATH",
    )
    bench.add_argument(
        "--concurrency",
        "-c",
        type=_positive,
        default=64,
        metavar="N",
        help="requests in flight at once [64]",
    )
    bench.add_argument(
        "--requests",
        "-n",
        type=_positive,
        default=10000,
        metavar="N",
        help="requests to send in all [10000]",
    )
    bench.add_argument(
        "--size", "-s", type=_size, default=100, metavar="BYTES", help="bytes in each request [100]"
    )
    bench.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a request with no reply by then is an error [30]",
    )
    bench.add_argument(
        "--max-seconds",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="start no new request after this long [600]",
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
        help="ENDPOINT is the daemon's --framed-endpoint: pipeline requests over"
        " persistent connections",
    )
    bench.add_argument(
        "--connections",
        type=_positive,
        default=8,
        metavar="N",
        help="persistent connections, with --framed [8]",
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(run=bench_command)

    keys = commands.add_parser(
        "keygen",
        help="write CURVE keys that protect remote workers (--curve-keys)",
        description="Write a producer and a worker key pair into DIR: producer.key,"
        " producer.key_secret, worker.key, worker.key_secret (secret keys readable by"
        " their owner only). Give DIR to the producer with --curve-keys; copy it without"
        " producer.key_secret to each worker host and give it --curve-keys there. Keys"
        " already in DIR are kept unless --force.",
    )
    keys.add_argument("directory", metavar="DIR", help="where to write them (created if missing)")
    keys.add_argument(
        "--force",
        action="store_true",
        help="replace the keys already in DIR (every worker host then needs the new ones)",
    )
    keys.set_defaults(run=keygen_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
