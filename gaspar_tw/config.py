"""Every setting once: its name, default, check and help text, in one frozen L{Config}.

A L{Config} is what L{gaspar_tw.ProcessPool}, L{gaspar_tw.Producer} and the worker host are
built from; the twistd options (L{gaspar_tw.options}) are made from its fields, so a flag's
default, check and C{--help} text are the ones written here. A field's metadata holds its
C{doc}, its C{flag} (the command-line name, if it has one), the twistd C{commands} that take
it, and C{parse} (text to value). Checks raise C{ValueError} with one line that names the
setting. Nothing here imports Twisted (L{gaspar_tw.addresses} checks an endpoint string with
Twisted's parser, loaded when one is checked).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

from gaspar_tw.addresses import check_endpoint, check_zmq_address
from gaspar_tw.cpus import usable_cpus

#: The gaspar port, as in gaspar.
DEFAULT_PORT = 10123
#: Listen backlog for C{--port} and integer endpoints: one connection per request means as
#: many connects in flight as concurrent clients, and Twisted's default of 50 overflows with
#: more than 50 (each dropped SYN is retransmitted 1 s, then 3 s, later).
DEFAULT_BACKLOG = 1024
#: The most worker processes one pool or worker host starts: more is surely a typo.
MAX_WORKERS = 1024
#: Starting more local workers than this many per usable CPU logs a warning.
WORKERS_PER_CPU = 4

#: The twistd commands, for a setting's C{commands} (the ones whose options show it).
PRODUCER = "gaspar"
HOST = "gaspar-worker"
BOTH = (PRODUCER, HOST)

#: Who reads a setting, for its C{scope}: L{gaspar_tw.ProcessPool} (and so a producer),
#: L{gaspar_tw.Producer} alone, the worker host, or only the twistd commands.
POOL = "ProcessPool"
FRONT_ENDS = "Producer"
WORKER_HOST = "WorkerHost"
TWISTD = "twistd"


def default_worker_count() -> int:
    """The CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota."""
    return usable_cpus()


def default_max_pending(workers: int) -> int:
    """Room for about a thousand concurrent clients, and for two full windows per worker."""
    return max(1024, 64 * workers)


def crowding_warning(workers: int) -> str | None:
    """A warning if C{workers} local processes are more than L{WORKERS_PER_CPU} a usable CPU."""
    cpus = default_worker_count()
    if workers <= WORKERS_PER_CPU * cpus:
        return None
    return (
        f"starting {workers} workers on {cpus} usable CPU{'s' if cpus > 1 else ''} (more than"
        f" {WORKERS_PER_CPU} a CPU):"
        " fine for handlers that mostly wait, but busy ones only take turns (--workers)"
    )


# -- checks: each takes a value and returns it (converted), or raises ValueError ----------


def whole(least: int, most: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {value!r}")
        if value < least:
            raise ValueError(f"must be at least {least}, not {value}")
        if most is not None and value > most:
            raise ValueError(f"must be at most {most:,}, not {value:,}")
        return value

    return check


def seconds(allow_zero: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number of seconds, not {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number of seconds, not {value}")
        if value < 0 or (value == 0 and not allow_zero):
            least = "0 or more (0 turns it off)" if allow_zero else "more than 0"
            raise ValueError(f"must be {least} seconds, not {value:g}")
        return float(value)

    return check


def no_limit_or_seconds(value: Any) -> float | None:
    """Seconds, where C{None} (or 0) means no limit."""
    return None if value is None else seconds(allow_zero=True)(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be True or False, not {value!r}")
    return value


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return check


def text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value or None


def paths(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"must be a list of directories, not {value!r}")
    if not all(isinstance(path, str) for path in value):
        raise ValueError(f"must be a list of directory names (str), not {value!r}")
    for path in value:
        if os.path.isfile(path):
            where = os.path.dirname(os.path.abspath(path))
            raise ValueError(f"must name directories, not the file {path!r}: give {where!r}")
        if not os.path.isdir(path):
            raise ValueError(f"must name directories that exist: no directory {path!r}")
    return tuple(os.path.abspath(path) for path in value)


def anything(value: Any) -> Any:
    return value


def server_endpoint(example: str) -> Callable[[Any], str | None]:
    """A Twisted server endpoint string (C{None} or C{""}: none); C{example} is a right one."""
    return lambda value: None if value in (None, "") else check_endpoint(value, example)


def listen_endpoint(value: Any) -> Any:
    """The producer's C{endpoint}: a port, an endpoint string, an endpoint object or C{None}."""
    expected = "must be a port number, a Twisted server endpoint string such as tcp:10123"
    if value is None or isinstance(value, str):
        return value if value is None else check_endpoint(value, "tcp:10123")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 65535:
            raise ValueError(f"must be a port number from 0 to 65535, not {value}")
        return value
    if callable(getattr(value, "listen", None)):  # an IStreamServerEndpoint
        return value
    raise ValueError(f"{expected}, or an IStreamServerEndpoint, not {value!r}")


def zmq_address(*, bind: bool) -> Callable[[Any], str | None]:
    """A ZeroMQ address to C{bind} or to connect to (C{None} or C{""}: none)."""
    return lambda value: None if value in (None, "") else check_zmq_address(value, bind=bind)


def flag_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"must be a whole number, not {value!r}") from None


def flag_seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {value!r}") from None


def setting(
    default: Any,
    doc: str,
    check: Callable[[Any], Any] = anything,
    *,
    flag: str | None = None,
    short: str | None = None,
    parse: Callable[[str], Any] = str,
    commands: Sequence[str] = (PRODUCER,),
    scope: Sequence[str] = (POOL,),
    host_doc: str | None = None,
) -> Any:
    """A L{Config} field: its default, one-line C{doc} and C{check}, its command line, and
    the C{scope} of services that read it (another service refuses it: it would be ignored).
    C{host_doc} is its help text for C{twistd gaspar-worker}, if not C{doc}."""
    metadata = {
        "doc": doc,
        "host_doc": host_doc or doc,
        "scope": tuple(scope),
        "check": check,
        "flag": flag,
        "short": short,
        "parse": parse,
        "commands": tuple(commands),
    }
    if isinstance(default, list | dict | set):
        raise TypeError("a setting's default must be immutable")
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """The settings of a producer, a process pool or a worker host (each reads its own).

    Build one with keywords (C{Config(timeout=5)}) or change one with L{replace}; each value is
    checked as it is set. C{None} means "the default that depends on the machine" where a
    doc says so.
    """

    # -- where requests come from (the producer's front ends) ------------------------------
    endpoint: Any = setting(
        DEFAULT_PORT,
        "A port number, a Twisted server endpoint string (tcp:10123, unix:/run/gaspar.sock),"
        " an IStreamServerEndpoint, or None for no listener (in-process submit only).",
        listen_endpoint,
        scope=(FRONT_ENDS,),
    )
    framed_endpoint: str | None = setting(
        None,
        "Also serve the framed persistent protocol (pipelined requests, replies with a status"
        " byte) on this Twisted server endpoint, e.g. tcp:10124.",
        server_endpoint("tcp:10124"),
        flag="framed-endpoint",
        scope=(FRONT_ENDS,),
    )
    max_length: int = setting(
        16 * 1024 * 1024,
        "Largest request accepted, in bytes; longer ones are closed unread.",
        whole(1),
        flag="max-length",
        parse=flag_number,
        scope=(FRONT_ENDS,),
    )
    idle_timeout: float | None = setting(
        30.0,
        "Seconds a client may stall while sending its request, or leave its reply untaken,"
        " before it is dropped; 0 for no limit.",
        no_limit_or_seconds,
        flag="idle-timeout",
        parse=flag_seconds,
        scope=(FRONT_ENDS,),
    )
    drain_timeout: float = setting(
        10.0,
        "Seconds SIGTERM waits for accepted requests to be answered before stopping.",
        seconds(allow_zero=True),
        flag="drain-timeout",
        parse=flag_seconds,
    )
    metrics: str | None = setting(
        None,
        "Serve Prometheus /metrics and JSON /status on this endpoint, e.g."
        " tcp:9100:interface=127.0.0.1 [default: off].",
        server_endpoint("tcp:9100:interface=127.0.0.1"),
        flag="metrics",
        scope=(TWISTD,),
    )
    log_format: str = setting(
        "text",
        "Log as 'text' (one line an event) or 'json' (one JSON object a line).",
        one_of("text", "json"),
        flag="log-format",
        scope=(TWISTD,),
    )
    proctitle: bool = setting(
        False,
        "Set the process title (gaspar-tw producer :10123): for a process of our own.",
        boolean,
        scope=(FRONT_ENDS,),
    )

    # -- the workers (the process pool) ----------------------------------------------------
    workers: int | None = setting(
        None,
        "Number of worker processes [default: the usable CPUs: affinity, capped by the cgroup"
        " CPU quota]; 0 with --bind (remote workers only).",
        optional(whole(0, MAX_WORKERS)),
        flag="workers",
        short="w",
        parse=flag_number,
        commands=BOTH,
        scope=(POOL, WORKER_HOST),
        host_doc="Number of worker processes [default: the usable CPUs: affinity, capped by the"
        " cgroup CPU quota].",
    )
    max_pending: int | None = setting(
        None,
        "Most requests accepted and not yet answered; more are refused (closed at once)"
        " [default: 1024, or 64 per worker if more].",
        optional(whole(1)),
        flag="max-pending",
        parse=flag_number,
    )
    window: int = setting(32, "Most requests one worker holds at a time.", whole(1))
    timeout: float | None = setting(
        30.0,
        "Seconds a handler may run on one request (then its worker is killed and replaced)"
        " and a request may wait for a free worker; 0 for no limit.",
        no_limit_or_seconds,
        flag="timeout",
        parse=flag_seconds,
    )
    retry_on_crash: bool = setting(
        True,
        "Requests held by a worker that dies are retried once, each alone on another worker"
        " (--no-retry-on-crash: they fail instead).",
        boolean,
    )
    max_call_bytes: int = setting(
        1024 * 1024 * 1024,
        "Largest function call (pickled, arguments included) sent to a worker, and largest"
        " result it sends back, in bytes: a larger call or result fails that call.",
        whole(1),
        flag="max-call-bytes",
        parse=flag_number,
    )
    max_requests: int = setting(
        0,
        "Recycle a worker after this many requests (its replacement starts first); 0 for never.",
        whole(0),
        flag="max-requests",
        parse=flag_number,
    )
    max_requests_jitter: int = setting(
        0,
        "Add a random 0 to this many to each worker's --max-requests, so workers are not all"
        " recycled at once.",
        whole(0),
        flag="max-requests-jitter",
        parse=flag_number,
    )
    max_memory: int = setting(
        0,
        "Recycle a worker whose memory (RSS, in MB) is over this after a batch, gracefully"
        " (its replacement starts first); 0 for no limit.",
        whole(0),
        flag="max-memory",
        parse=flag_number,
    )
    max_memory_hard: int = setting(
        0,
        "Kill a local worker whose memory (RSS, in MB) is over this, checked every second"
        " (its requests are retried as after a crash); 0 for no limit.",
        whole(0),
        flag="max-memory-hard",
        parse=flag_number,
    )
    pythonpath: tuple[str, ...] = setting(
        (),
        "A directory to add to the Python path to find the handler (repeatable).",
        paths,
        commands=BOTH,
        scope=(POOL, WORKER_HOST),
    )
    import_timeout: float = setting(
        30.0,
        "Seconds the handler's module may take to import at start (tried first in a child"
        " process); 0 for no limit and no such check.",
        seconds(allow_zero=True),
        flag="import-timeout",
        parse=flag_seconds,
        commands=BOTH,
        scope=(TWISTD,),
    )

    # -- remote workers --------------------------------------------------------------------
    bind: str | None = setting(
        None,
        "Let remote worker hosts (twistd gaspar-worker --connect) join on this ZeroMQ address,"
        " e.g. tcp://10.0.0.1:5570 (port * picks a free one) [default: off].",
        zmq_address(bind=True),
        flag="bind",
    )
    connect: str | None = setting(
        None,
        "The producer's --bind address, e.g. tcp://10.0.0.1:5570.",
        zmq_address(bind=False),
        flag="connect",
        short="c",
        commands=(HOST,),
        scope=(WORKER_HOST,),
    )
    curve_keys: str | None = setting(
        None,
        "Directory of CURVE keys (gaspar-tw keygen DIR) protecting --bind.",
        text,
        flag="curve-keys",
        commands=BOTH,
        scope=(POOL, WORKER_HOST),
        host_doc="Directory of CURVE keys (gaspar-tw keygen DIR) for --connect.",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                value = f.metadata["check"](getattr(self, f.name))
            except ValueError as e:
                raise ValueError(f"{f.name} {e}") from None
            object.__setattr__(self, f.name, value)
        if self.workers == 0 and not self.bind:
            raise ValueError("workers must be at least 1 (0 only with bind: remote workers)")
        if self.max_memory and self.max_memory_hard and self.max_memory_hard <= self.max_memory:
            raise ValueError(
                f"max_memory_hard must be above max_memory ({self.max_memory} MB),"
                f" not {self.max_memory_hard}"
            )
        if self.curve_keys and not (self.bind or self.connect):
            raise ValueError("curve_keys protects bind (or connect); give bind too")

    @classmethod
    def of(cls, config: Config | None, scope: Sequence[str], **settings: Any) -> Config:
        """C{config} (or the defaults) with C{settings} changed, for a service that reads the
        settings of C{scope}. A name unknown, or of a setting it would ignore, is a
        C{TypeError} (suggesting the closest name it takes)."""
        takes = [f.name for f in fields(cls) if set(f.metadata["scope"]) & set(scope)]
        for name in settings:
            if name in takes:
                continue
            close = difflib.get_close_matches(name, takes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if name in _NAMES:
                raise TypeError(f"{scope[-1]} takes no setting {name!r}: it would be ignored")
            raise TypeError(f"unknown setting {name!r}{hint}")
        base = cls() if config is None else config
        return replace(base, **settings) if settings else base

    # -- values that depend on the machine -------------------------------------------------

    @property
    def worker_count(self) -> int:
        """C{workers}, or the usable CPUs."""
        return default_worker_count() if self.workers is None else self.workers

    @property
    def pending_limit(self) -> int:
        """C{max_pending}, or its default for this many workers."""
        if self.max_pending is not None:
            return self.max_pending
        return default_max_pending(self.worker_count)

    @property
    def timeout_or_none(self) -> float | None:
        """C{timeout}, C{None} for no limit."""
        return self.timeout or None

    @property
    def idle_timeout_or_none(self) -> float | None:
        """C{idle_timeout}, C{None} for no limit."""
        return self.idle_timeout or None


_NAMES = tuple(f.name for f in fields(Config))


def settings_for(command: str) -> list[Field]:
    """The fields with a flag of C{command} (C{"gaspar"} or C{"gaspar-worker"}), in order."""
    return [f for f in fields(Config) if command in f.metadata["commands"]]
