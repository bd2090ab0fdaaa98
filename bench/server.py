"""One benchmark row in its own process: a reactor, the system under test, and its meters.

    python bench/server.py ROW HANDLER WORKERS

ROW is one of gaspar-tcp, framed, submit, ampoule, ppe, txzmq, bare, or a function-call row
of bench/call_rows.py (call, thread, map, ppe-map-*, mp-map). HANDLER is a bench_handlers
name; for the call rows (call, thread, ppe, ampoule) ``add`` means ``add(1, 2)``, a typed AMP
command for ampoule. The process prints ``{"ready": true, "port": N}`` once it can take load
(with ``"unavailable": why`` if the row cannot run here), then obeys lines on stdin:

- ``run SECONDS BYTES CONCURRENCY``: drive in-process load (submit, ampoule, ppe, txzmq, call,
  thread), or time whole maps (the map rows), and print the measurements as one JSON line
  (``{"failed": traceback}`` if the row failed);
- ``start`` / ``stop``: open / close a measurement window while an outside load generator
  drives the TCP port (gaspar-tcp, framed, bare); ``stop`` prints the measurements;
- ``nocopy BYTES`` (call, ppe): one call with a BYTES-long argument; prints how much this
  process grew while it went.

Measured here: the parent process's CPU time (C{time.process_time}: every thread of this
process, no child) and how late a 5 ms C{LoopingCall} fires (reactor lag; 1 ms for the map
rows; not measured for a row that blocks the reactor while it runs).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from itertools import count

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(1, os.path.dirname(BENCH))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()

import call_rows  # noqa: E402
from bench_handlers import caller  # noqa: E402
from twisted.internet import reactor, stdio, task  # noqa: E402
from twisted.internet.defer import (  # noqa: E402
    Deferred,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.endpoints import serverFromString  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver, LineReceiver  # noqa: E402

LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"
LAG_INTERVAL = 0.005


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Meters:
    """Parent CPU time and reactor lag over a window.

    Lag: a C{LoopingCall} every 5 ms; each call's lateness is measured against the grid time
    it was scheduled for (the first multiple of 5 ms after the previous call), so a call that
    is 44 ms late counts as 44 ms, not as 44 mod 5.
    """

    def __init__(self, interval: float = LAG_INTERVAL, probe: bool = True) -> None:
        self.interval, self.probe = interval, probe
        self.lags: list[float] = []
        self.loop = task.LoopingCall(self._tick)
        self.cpu0 = 0.0

    def start(self) -> None:
        self.lags = []
        self.cpu0 = time.process_time()
        if self.probe:
            self.loop.start(self.interval, now=False)
            self.target = self.loop.starttime + self.interval

    def _tick(self) -> None:
        now = reactor.seconds()
        self.lags.append(max(0.0, now - self.target))
        start = self.loop.starttime
        self.target = start + (int((now - start) / self.interval) + 1) * self.interval

    def stop(self) -> dict:
        cpu = time.process_time() - self.cpu0
        if self.loop.running:
            self.loop.stop()
        if not self.probe:
            return {"cpu_s": cpu, "lag_p99_ms": None, "lag_max_ms": None}
        return {
            "cpu_s": cpu,
            "lag_p99_ms": percentile(self.lags, 0.99) * 1e3,
            "lag_max_ms": max(self.lags, default=0.0) * 1e3,
        }


def drive(call, payload: bytes, concurrency: int, seconds: float) -> Deferred:
    """Keep C{concurrency} calls in flight for C{seconds} (gaspar_tw's own load engine)."""
    from gaspar_tw.ops.loadgen import LoadRun

    run = LoadRun(reactor, call, payload, 1 << 62, concurrency, max_seconds=seconds)

    def summarize(result) -> dict:
        return {
            "requests": result.ok,
            "completed": result.ok,
            "errors": result.errors + result.empty,
            "first_error": result.first_error,
            "seconds": result.elapsed,
            "p50_ms": result.percentile(50) * 1e3,
            "p99_ms": result.percentile(99) * 1e3,
        }

    return run.start().addCallback(summarize)


# -- the rows ------------------------------------------------------------------------------


@inlineCallbacks
def start_producer(handler: str, workers: int, endpoint=None, framed=None):
    from gaspar_tw.consumer import Consumer
    from gaspar_tw.producer import Producer

    kwargs = {"framed_endpoint": framed} if framed else {}
    producer = Producer(
        Consumer("bench_handlers:" + handler),
        endpoint,
        workers,
        pythonpath=[BENCH],
        max_pending=100_000,
        **kwargs,
    )
    producer.privilegedStartService()
    producer.startService()
    yield producer.whenReady()
    port = None
    if framed:
        port = producer.framedPort.getHost().port
    elif endpoint:
        port = producer.port.getHost().port
    return {"call": producer.submit, "port": port, "stop": producer.stopService}


@inlineCallbacks
def start_ampoule(handler: str, workers: int):
    try:
        import amp_child
        from ampoule import main, pool
    except ImportError as e:
        return {"unavailable": f"ampoule cannot be imported ({e}): pip install '.[bench]'"}

    # The directory ampoule is installed in, for a child to import it from wherever it is
    # (ampoule itself adds the package's own directory, which is not enough).
    installed = os.path.dirname(os.path.dirname(os.path.abspath(main.__file__)))
    starter = main.ProcessStarter(
        packages=("twisted", "ampoule"),
        env={"PYTHONPATH": os.pathsep.join([BENCH, os.path.dirname(BENCH), installed])},
        childReactor="epoll",
    )
    processes = pool.ProcessPool(
        amp_child.BenchChild, min=workers, max=workers, recycleAfter=0, starter=starter
    )
    yield processes.start()
    if handler == "add":

        def call(payload: bytes) -> Deferred:
            return processes.doWork(amp_child.Add, a=1, b=2).addCallback(lambda r: r["total"])

    else:
        command = amp_child.Echo if handler == "echo" else amp_child.Cpu

        def call(payload: bytes) -> Deferred:
            return processes.doWork(command, data=payload).addCallback(lambda r: r["data"])

    return {"call": call, "port": None, "stop": processes.stop}


@inlineCallbacks
def start_ppe(handler: str, workers: int):
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(max_workers=workers)

    def submit(function, *args) -> Deferred:
        d: Deferred = Deferred()

        def relay(future) -> None:
            error = future.exception()
            if error is None:
                reactor.callFromThread(d.callback, future.result())
            else:
                reactor.callFromThread(d.errback, error)

        executor.submit(function, *args).add_done_callback(relay)
        return d

    call = caller(submit, handler)
    # Start every process before measuring.
    for _ in range(workers * 4):
        yield call(b"warm")

    def stop():
        executor.shutdown(wait=True)

    return {
        "call": call,
        "nocopy": lambda size: call_rows.nocopy(lambda data: submit(len, data), size),
        "port": None,
        "stop": stop,
    }


@inlineCallbacks
def start_txzmq(handler: str, workers: int):
    from txzmq import ZmqEndpoint, ZmqEndpointType, ZmqFactory, ZmqPullConnection, ZmqPushConnection

    directory = tempfile.mkdtemp(prefix="gaspar-bench-")
    work_address = f"ipc://{directory}/work"
    reply_address = f"ipc://{directory}/reply"
    factory = ZmqFactory()
    push = ZmqPushConnection(factory, ZmqEndpoint(ZmqEndpointType.bind, work_address))
    pull = ZmqPullConnection(factory, ZmqEndpoint(ZmqEndpointType.bind, reply_address))
    waiting: dict[bytes, Deferred] = {}
    hellos: list[Deferred] = [Deferred() for _ in range(workers)]

    def onPull(message: list) -> None:
        rid, payload = message
        d = waiting.pop(rid, None)
        if d is not None:
            d.callback(payload)
        elif rid == b"hello":
            next(h for h in hellos if not h.called).callback(None)

    pull.onPull = onPull
    children = []
    from twisted.internet.protocol import ProcessProtocol

    for _ in range(workers):
        protocol = ProcessProtocol()
        ended: Deferred = Deferred()
        protocol.processEnded = ended.callback
        reactor.spawnProcess(
            protocol,
            sys.executable,
            [
                sys.executable,
                os.path.join(BENCH, "zmq_worker.py"),
                work_address,
                reply_address,
                handler,
            ],
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        children.append((protocol, ended))
    yield gatherResults(hellos)
    ids = count()

    def call(payload: bytes) -> Deferred:
        rid = b"%d" % next(ids)
        d: Deferred = Deferred()
        waiting[rid] = d
        push.push([rid, payload])
        return d

    @inlineCallbacks
    def stop():
        for protocol, _ in children:
            protocol.transport.closeStdin()
        for _, ended in children:
            yield ended
        factory.shutdown()

    return {"call": call, "port": None, "stop": stop}


class Bare(Int32StringReceiver):
    """The TCP ceiling: write the request back and close, no workers."""

    MAX_LENGTH = 1 << 30

    def stringReceived(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.loseConnection()


@inlineCallbacks
def start_bare(handler: str, workers: int):
    port = yield serverFromString(reactor, LISTEN).listen(Factory.forProtocol(Bare))
    return {"call": None, "port": port.getHost().port, "stop": port.stopListening}


def starter(row: str):
    if row == "gaspar-tcp":
        return lambda h, w: start_producer(h, w, endpoint=LISTEN)
    if row == "framed":
        return lambda h, w: start_producer(h, w, framed=LISTEN)
    if row == "submit":
        return lambda h, w: start_producer(h, w)
    return {
        "ampoule": start_ampoule,
        "ppe": start_ppe,
        "txzmq": start_txzmq,
        "bare": start_bare,
        **call_rows.STARTERS,
    }[row]


class Control(LineReceiver):
    """Commands from the benchmark runner on stdin, answers on stdout."""

    delimiter = b"\n"

    def __init__(self, row: str, handler: str, workers: int) -> None:
        self.row, self.handler, self.workers = row, handler, workers
        self.system = None
        self.meters = Meters()

    def connectionMade(self) -> None:
        d = starter(self.row)(self.handler, self.workers)
        d.addCallbacks(self._started, self._failed)

    def _started(self, system: dict) -> None:
        self.system = system
        self.meters = Meters(
            system.get("lag_interval", LAG_INTERVAL), probe=not system.get("blocking")
        )
        # As twistd gaspar does (tap.py): the startup heap leaves the collector's sight, so a
        # full collection no longer pauses the reactor for ~20 ms. Same for every row.
        gc.freeze()
        ready = {"ready": True, "port": system.get("port"), "pid": os.getpid()}
        if "unavailable" in system:
            ready["unavailable"] = system["unavailable"]
        self.say(ready)

    def _failed(self, failure) -> None:
        self.say({"ready": False, "error": failure.getTraceback()})
        reactor.stop()

    def say(self, message: dict) -> None:
        self.transport.write(json.dumps(message).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if not words:
            return
        if words[0] == "start":
            self.meters.start()
        elif words[0] == "stop":
            self.say(self.meters.stop())
        elif words[0] == "run":
            seconds, size, concurrency = float(words[1]), int(words[2]), int(words[3])
            payload = bytes(size)
            self.meters.start()
            if "measure" in self.system:
                d = maybeDeferred(self.system["measure"], seconds)
            else:
                d = drive(self.system["call"], payload, concurrency, seconds)
            d.addCallback(lambda result: {**self.meters.stop(), **result})
            d.addErrback(self._measurementFailed)
            d.addCallback(self.say)
        elif words[0] == "nocopy":
            d = maybeDeferred(self.system["nocopy"], int(words[1]))
            d.addErrback(self._measurementFailed)
            d.addCallback(self.say)

    def _measurementFailed(self, failure) -> dict:
        self.meters.stop()
        return {"failed": failure.getTraceback()}

    def connectionLost(self, reason) -> None:
        d = Deferred()
        if self.system is not None:
            d.addCallback(lambda _: self.system.get("stop", lambda: None)())
        d.addBoth(lambda _: reactor.stop())
        d.callback(None)


def main() -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    row, handler, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stdio.StandardIO(Control(row, handler, workers))
    reactor.run()


if __name__ == "__main__":
    main()
