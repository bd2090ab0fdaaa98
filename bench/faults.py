"""Fault injection against real daemons: ``python bench/faults.py [--only N[,N]] [--json]``.

Runs the fault scenarios of the reliability issue (items 1-10) against ``twistd gaspar`` daemons
of the checkout this file sits in (its root goes first on every child's PYTHONPATH) and prints
one table: the scenario, with its scale, and what was measured. Each scenario starts its own
daemons on ports the OS picks on 127.0.0.1, with handlers from bench/fault_handlers.py, injects
its fault (clients that never read, a SIGKILLed worker with a forked child, a worker death while
out of file descriptors, a killed worker host, clients that hang up, a pipelined burst, a
restarted Producer, idle connections at a soft fd limit of 1,024, a long line without a newline)
and measures from outside: the producer's RSS and CPU time from /proc, delays and counts from
its clients. It passes only options that every version since commit 619c73b has, so one file
measures the code before and after the fixes: copy it with fault_handlers.py into an older
checkout's bench/ and run it there.

Every process is started in a session of its own; when its scenario ends, fails or is
interrupted (Ctrl-C, SIGTERM), every process left in that session (workers and anything they
forked) is killed and waited for. Daemon logs go to a temporary directory, removed unless a
scenario failed. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LOCAL = "127.0.0.1"
ENDPOINT = f"tcp:0:interface={LOCAL}:backlog=1024"
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]
KIB = 1024
MIB = 1024 * KIB
REFUSED = 3  # the framed protocol's status byte for "refused: too many requests in flight"

LISTENING = rb"listening on tcp [\d.]+:(\d+)$"
FRAMED = rb"listening on tcp [\d.]+:(\d+) \(framed protocol\)"
READY = rb"worker (\d+) ready \(pid (\d+)\)"
REMOTE_READY = rb"remote worker ready \(pid (\d+) on"


class ScenarioError(Exception):
    """A scenario could not be run to its end (its figure is then the error)."""


# -- processes --------------------------------------------------------------------------------


def session_members(session: int) -> list[int]:
    """Live (not zombie) processes of a session, from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state, _ppid, _group, sid = f.read().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(sid) == session and state != "Z":
            members.append(int(name))
    return members


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Processes:
    """The processes a run starts, each leading a session of its own, and their logs."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen] = []
        self.names = Counter()

    def start(self, argv: list[str], name: str, nofile: tuple[int, int] | None = None):
        """Start C{argv} with stdout and stderr to NAME.log; return (process, log path)."""
        self.names[name] += 1
        log_path = os.path.join(self.directory, f"{name}-{self.names[name]}.log")
        limit = (
            None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))
        )
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=child_env(),
                start_new_session=True,
                preexec_fn=limit,
            )
        self.started.append(process)
        return process, log_path

    def stop(self, process: subprocess.Popen) -> None:
        """SIGKILL every process of C{process}'s session and wait until none is left."""
        for _ in range(200):  # bounded: 10 s
            members = session_members(process.pid)
            if not members:
                break
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                process.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        process.wait(5)
        left = session_members(process.pid)
        if left:
            print(f"left running (session {process.pid}): {left}", file=sys.stderr)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started.pop())


class Daemon:
    """A C{twistd -n gaspar} on free 127.0.0.1 ports, started and waited for."""

    def __init__(
        self,
        run: Processes,
        handler: str,
        *options: str,
        workers: int = 2,
        framed: bool = False,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        argv = [*TWISTD, "-n", "--pidfile=", "gaspar", "--endpoint", ENDPOINT]
        argv += ["--workers", str(workers), "--pythonpath", BENCH]
        argv += ["--handler", f"fault_handlers:{handler}", *options]
        if framed:
            argv += ["--framed-endpoint", ENDPOINT]
        self.process, self.log_path = run.start(argv, "gaspar", nofile)
        self.pid = self.process.pid
        self.port = int(self.wait_for(LISTENING)[0])
        self.framed_port = int(self.wait_for(FRAMED)[0]) if framed else 0
        self.worker_pids = {int(s): int(p) for s, p in self.wait_for(READY, workers)}

    def log(self) -> bytes:
        with open(self.log_path, "rb") as f:
            return f.read()

    def count(self, pattern: bytes) -> int:
        return len(re.findall(pattern, self.log(), re.M))

    def wait_for(self, pattern: bytes, count: int = 1, timeout: float = 30.0) -> list:
        """The first C{count} matches of C{pattern} in the log, once there are that many."""
        found: list = []

        def seen() -> bool:
            found[:] = re.findall(pattern, self.log(), re.M)
            return len(found) >= count or self.process.poll() is not None

        wait_until(seen, timeout, 0.05)
        if len(found) < count:
            tail = self.log()[-2000:].decode(errors="replace")
            raise ScenarioError(f"{pattern!r} seen {len(found)}/{count} times; log ends:\n{tail}")
        return found[:count]


# -- clients and meters -----------------------------------------------------------------------


def pack(message: bytes) -> bytes:
    return struct.pack("!I", len(message)) + message


def connect(port: int, timeout: float = 5.0, receive_buffer: int = 0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port; with C{receive_buffer}, a small window that
    fills at once when the client does not read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    try:
        sock.connect((LOCAL, port))
    except OSError:
        sock.close()
        raise
    return sock


def ask(port: int, message: bytes, timeout: float) -> bytes | None:
    """One gaspar-format request within a deadline: the reply, or None (closed or late)."""
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        with connect(port, timeout) as sock:
            sock.sendall(pack(message))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(256 * KIB)
                if not chunk:
                    return b"".join(chunks) or None
                chunks.append(chunk)
    except OSError:
        pass
    return None


def read_framed(reader) -> tuple[int, bytes]:
    """One framed reply from a buffered reader: (status, body)."""
    header = reader.read(5)
    if len(header) < 5:
        raise ScenarioError("framed connection closed before a reply")
    length, status = struct.unpack("!IB", header)
    return status, reader.read(length - 1)


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // KIB


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (its own threads, no child)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int, busy: Callable[[], bool], limit: float, settle: float = 2.0) -> int:
    """The highest RSS (MiB) seen while C{busy()}, then until it has not grown for C{settle}
    seconds, at most C{limit} seconds in all."""
    peak, grew_at = rss_mib(pid), time.monotonic()
    deadline = grew_at + limit
    while (now := time.monotonic()) < deadline:
        value = rss_mib(pid)
        if value > peak:
            peak, grew_at = value, now
        if not busy() and now - grew_at >= settle:
            break
        time.sleep(0.05)
    return peak


def established(port: int) -> int:
    """Established TCP connections whose local port is C{port} (the server's side)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, _remote, state = line.split()[1:4]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def send_until_stalled(sock: socket.socket, frame: bytes, count: int) -> None:
    """Send C{frame} C{count} times; stop when the peer stops reading (timeout) or on error."""
    try:
        for _ in range(count):
            sock.sendall(frame)
    except OSError:
        pass


# -- scenarios --------------------------------------------------------------------------------


def unread_framed(run: Processes) -> dict:
    """Item 1, framed: one client pipelines 16 KiB echo requests and never reads a reply."""
    count = 40_000
    daemon = Daemon(run, "echo", framed=True)
    start = rss_mib(daemon.pid)
    client = connect(daemon.framed_port, timeout=2.0, receive_buffer=4 * KIB)
    sender = threading.Thread(
        target=send_until_stalled, args=(client, pack(b"r" * 16 * KIB), count), daemon=True
    )
    sender.start()
    try:
        peak = peak_rss(daemon.pid, sender.is_alive, limit=40.0)
    finally:
        client.shutdown(socket.SHUT_RDWR)
        sender.join(5)
        client.close()
    time.sleep(3)
    after = rss_mib(daemon.pid)
    return {
        "rss_start_mib": start,
        "rss_peak_mib": peak,
        "rss_after_close_mib": after,
        "figure": f"producer RSS {start} -> peak {peak} MiB; {after} MiB 3 s after the close",
    }


def unread_gaspar(run: Processes) -> dict:
    """Item 1, gaspar format: clients ask for 8 MiB replies and never read them."""
    clients = 40
    daemon = Daemon(run, "sized", "--idle-timeout", "1")
    start = rss_mib(daemon.pid)
    sockets = []
    try:
        for _ in range(clients):
            sockets.append(connect(daemon.port, receive_buffer=4 * KIB))
            sockets[-1].sendall(pack(b"%d" % (8 * MIB)))
        sent = time.monotonic()
        peak = peak_rss(daemon.pid, lambda: time.monotonic() - sent < 5, limit=5.0, settle=0)
        time.sleep(max(0.0, sent + 10 - time.monotonic()))
        later, still_open = rss_mib(daemon.pid), established(daemon.port)
    finally:
        for sock in sockets:
            sock.close()
    dropped = clients - still_open
    return {
        "rss_start_mib": start,
        "rss_peak_mib": peak,
        "rss_10s_mib": later,
        "dropped": dropped,
        "figure": f"producer RSS {start} -> peak {peak} MiB (first 5 s), {later} MiB 5 s later;"
        f" {dropped} of {clients} connections dropped",
    }


def forked_child(run: Processes) -> dict:
    """Item 2: a handler forks a child sleeping 30 s, then its worker is SIGKILLed."""
    daemon = Daemon(run, "forks", workers=1)
    reply = ask(daemon.port, b"30", 10)
    if not reply:
        raise ScenarioError("the forking handler did not answer")
    worker = int(reply.split(b":")[0])
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    answered = ask(daemon.port, b"30", 60) is not None
    delay = time.monotonic() - killed
    daemon.process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    try:
        daemon.process.wait(60)
        shutdown = f"{time.monotonic() - stopping:.1f} s"
    except subprocess.TimeoutExpired:
        shutdown = "over 60 s"
    return {
        "next_request_s": round(delay, 2),
        "next_request_answered": answered,
        "sigterm_shutdown": shutdown,
        "figure": f"next request answered after {delay:.1f} s"
        f"{'' if answered else ' (failed)'}; SIGTERM shutdown {shutdown}",
    }


def worker_death_out_of_fds(run: Processes) -> dict:
    """Item 3: --workers 1, the producer out of fds (limit = its fds + 16, 40 idle clients),
    its worker SIGKILLed; 3 s later the idle clients leave."""
    daemon = Daemon(run, "echo", "--idle-timeout", "0", workers=1)
    limit = len(os.listdir(f"/proc/{daemon.pid}/fd")) + 16
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (limit, limit))
    idle = []
    try:
        for _ in range(40):
            idle.append(connect(daemon.port))
        daemon.wait_for(rb"EMFILE encountered|cannot accept connections")
        os.kill(daemon.worker_pids[0], signal.SIGKILL)
        time.sleep(3)
    finally:
        for sock in idle:
            sock.close()
    freed = time.monotonic()
    back = wait_until(lambda: daemon.count(READY) >= 2, 20.0, 0.05)
    took = time.monotonic() - freed
    answered = ask(daemon.port, b"after", 5) == b"after"
    replaced = f"replaced {took:.1f} s after the fds were freed" if back else "not replaced in 20 s"
    return {
        "replaced": back,
        "replaced_after_s": round(took, 2) if back else None,
        "request_ok": answered,
        "figure": f"worker {replaced}; next request {'answered' if answered else 'failed'}",
    }


def lost_host(run: Processes) -> dict:
    """Item 4: two remote worker hosts of one worker each, 8 clients of 10 ms requests for 8 s,
    one host SIGKILLed (with its worker) at 0.7 s; --timeout 5."""
    load, clients = 8.0, 8
    daemon = Daemon(run, "sleeps", "--bind", f"tcp://{LOCAL}:*", "--timeout", "5", workers=0)
    address = daemon.wait_for(rb"remote workers connect to (tcp://[\d.]+:\d+)")[0].decode()
    hosts = []
    for n in range(2):
        argv = [*TWISTD, "-n", "--pidfile=", "gaspar-worker", "--connect", address]
        argv += ["--handler", "fault_handlers:sleeps", "--workers", "1", "--pythonpath", BENCH]
        hosts.append(run.start(argv, "host")[0])
        daemon.wait_for(REMOTE_READY, n + 1)
    results: list[tuple[float, bool]] = []
    stop = time.monotonic() + load

    def client() -> None:
        while (started := time.monotonic()) < stop:
            ok = ask(daemon.port, b"sleep:0.01", 30) is not None
            results.append((time.monotonic() - started, ok))

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        time.sleep(0.7)
        run.stop(hosts[0])
        for future in futures:
            future.result()
    failed = sum(1 for _, ok in results if not ok)
    slowest = max(seconds for seconds, _ in results)
    return {
        "requests": len(results),
        "failed": failed,
        "slowest_s": round(slowest, 2),
        "figure": f"{failed} of {len(results):,} failed; slowest {slowest:.1f} s",
    }


def hung_up_clients(run: Processes) -> dict:
    """Item 5: --workers 1; ten clients send a 1 s request and hang up 0.1 s later."""
    clients = 10
    daemon = Daemon(run, "marks", workers=1)
    marks = [os.path.join(run.directory, f"ran-{i}") for i in range(clients)]

    def vanish(path: str) -> None:
        with connect(daemon.port) as sock:
            sock.sendall(pack(path.encode() + b" 1"))
            time.sleep(0.1)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(vanish, marks))
    asked = time.monotonic()
    answered = ask(daemon.port, b"fresh", 30) == b"fresh"
    waited = time.monotonic() - asked
    time.sleep(0.2)
    ran = sum(map(os.path.exists, marks))
    return {
        "new_request_s": round(waited, 2),
        "new_request_ok": answered,
        "cancelled_that_ran": ran,
        "figure": f"new request {'answered' if answered else 'failed'} after {waited:.1f} s;"
        f" {ran} of {clients} abandoned requests ran",
    }


def paused_hang_up(run: Processes) -> dict:
    """Item 6: --workers 1, framed: 2,000 pipelined 1 s requests, then the client closes;
    a new client asks every 0.1 s while it is refused."""
    count, limit = 2000, 70.0
    daemon = Daemon(run, "sleeps", workers=1, framed=True)
    with connect(daemon.framed_port) as sock:
        sock.sendall(pack(b"sleep:1") * count)
        daemon.wait_for(rb"sleeping 1")
        time.sleep(0.3)
    closed = time.monotonic()
    refusals, status = 0, None
    with connect(daemon.framed_port, timeout=limit) as sock, sock.makefile("rb") as reader:
        while time.monotonic() - closed < limit:
            sock.sendall(pack(b"after"))
            status, _ = read_framed(reader)
            if status != REFUSED:
                break
            refusals += 1
            time.sleep(0.1)
    answered = time.monotonic() - closed
    return {
        "refusals": refusals,
        "answered_after_s": round(answered, 2),
        "status": status,
        "figure": f"new client refused {refusals} times, answered (status {status}) after"
        f" {answered:.1f} s",
    }


def burst(run: Processes) -> dict:
    """Item 7: one framed client pipelines 20,000 tiny requests in one burst."""
    count = 20_000
    daemon = Daemon(run, "echo", framed=True)
    statuses: Counter = Counter()
    with connect(daemon.framed_port, timeout=60) as sock, sock.makefile("rb") as reader:
        payload = b"".join(pack(b"%d" % i) for i in range(count))
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        for _ in range(count):
            statuses[read_framed(reader)[0]] += 1
        sender.join(5)
    return {
        "ok": statuses[0],
        "refused": statuses[REFUSED],
        "figure": f"{statuses[0]:,} answered, {statuses[REFUSED]:,} refused (status 3)",
    }


def producer_restart(run: Processes) -> dict:
    """Item 8: a library Producer (no TCP, 1 worker) stopped, then started again."""
    process, log_path = run.start(
        [sys.executable, os.path.abspath(__file__), "--restart-probe"], "restart"
    )
    try:
        process.wait(40)
    except subprocess.TimeoutExpired:
        pass
    with open(log_path, "rb") as f:
        lines = [line for line in f.read().splitlines() if line.startswith(b"{")]
    if not lines:
        raise ScenarioError(f"the restart probe printed no result (see {log_path})")
    result = json.loads(lines[-1])
    restart = result["restart_ready_s"]
    figure = (
        f"whenReady() fired {restart:.2f} s after startService(); submit() -> {result['reply']}"
        if restart is not None
        else "whenReady() did not fire in 10 s"
    )
    return {**result, "figure": figure}


def restart_probe() -> None:
    """Run in a child process by L{producer_restart}: print its figures as one JSON line."""
    from twisted.internet import defer, task

    from gaspar_tw import Producer

    async def main(reactor) -> None:
        producer = Producer("fault_handlers:echo", None, 1, pythonpath=[BENCH])
        producer.privilegedStartService()
        producer.startService()
        await producer.whenReady().addTimeout(20, reactor)
        await producer.stopService()
        producer.startService()
        started = time.monotonic()
        result = {"restart_ready_s": None, "reply": None}
        try:
            await producer.whenReady().addTimeout(10, reactor)
            result["restart_ready_s"] = round(time.monotonic() - started, 3)
            reply = await producer.submit(b"again").addTimeout(5, reactor)
            result["reply"] = reply.decode()
        except defer.TimeoutError:
            pass
        print(json.dumps(result), flush=True)
        await defer.Deferred.fromCoroutine(stop_within(producer, reactor))

    async def stop_within(producer, reactor) -> None:
        try:
            await defer.maybeDeferred(producer.stopService).addTimeout(10, reactor)
        except defer.TimeoutError:
            pass

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))


def idle_crowd(run: Processes) -> dict:
    """Item 9: the producer started at soft/hard RLIMIT_NOFILE 1024/4096; 1,500 idle
    connections, then 50 requests, 5 at a time, 2 s each."""
    idle_count, good = 1500, 50
    daemon = Daemon(run, "echo", "--idle-timeout", "60", nofile=(1024, 4096))
    idle = []
    try:
        for _ in range(idle_count):
            idle.append(connect(daemon.port))
        time.sleep(0.5)
        with ThreadPoolExecutor(5) as pool:
            replies = list(pool.map(lambda i: ask(daemon.port, b"good %d" % i, 2), range(good)))
    finally:
        for sock in idle:
            sock.close()
    ok = sum(reply == b"good %d" % i for i, reply in enumerate(replies))
    return {"succeeded": ok, "figure": f"{ok} of {good} requests answered"}


def long_line(run: Processes) -> dict:
    """Item 10: a worker writes one 8 MiB line with no newline to its stdout."""
    size = 8 * MIB
    daemon = Daemon(run, "prints", workers=1)
    before = cpu_seconds(daemon.pid)
    answered = ask(daemon.port, b"%d" % size, 120) == b"done"
    time.sleep(0.5)
    spent = cpu_seconds(daemon.pid) - before
    return {
        "producer_cpu_s": round(spent, 2),
        "answered": answered,
        "figure": f"producer CPU {spent:.2f} s{'' if answered else ' (request failed)'}",
    }


SCENARIOS = [
    (1, "framed client pipelines 40,000 x 16 KiB, never reads", unread_framed),
    (1, "40 gaspar clients ask 8 MiB replies, never read (--idle-timeout 1)", unread_gaspar),
    (2, "worker with a forked child (sleeps 30 s) SIGKILLed, --workers 1", forked_child),
    (3, "worker SIGKILLed while the producer is out of fds, --workers 1", worker_death_out_of_fds),
    (4, "2 remote hosts x 1 worker, 8 clients x 8 s, one host killed", lost_host),
    (5, "--workers 1: 10 clients send a 1 s request and hang up", hung_up_clients),
    (6, "framed: 2,000 pipelined 1 s requests, then close (--workers 1)", paused_hang_up),
    (7, "framed: one burst of 20,000 pipelined tiny requests", burst),
    (8, "Producer stopService() then startService()", producer_restart),
    (9, "soft/hard fd limit 1024/4096: 1,500 idle connections, 50 requests", idle_crowd),
    (10, "worker prints one 8 MiB line without a newline", long_line),
]


# -- the run ----------------------------------------------------------------------------------


def checkout_name() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{ROOT} ({commit or 'not a git checkout'})"


def child_env() -> dict:
    """The environment for every child: this checkout first on the path, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def imported_from() -> str:
    """Where a child imports gaspar_tw from; it must be this checkout."""
    where = subprocess.run(
        [sys.executable, "-c", "import gaspar_tw; print(gaspar_tw.__file__)"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    ).stdout.strip()
    if not where.startswith(ROOT + os.sep):
        raise SystemExit(f"children import gaspar_tw from {where or '?'}, not from {ROOT}")
    return os.path.dirname(where)


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Checkout: {meta['checkout']}",
        f"Machine: {meta['machine']}; {meta['wall_seconds']} s",
        "",
        "| item | scenario | measured | run s |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['item']} | {row['scenario']} | {row['figure']} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def parse_only(text: str | None) -> set[int]:
    return {int(n) for n in text.split(",")} if text else set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", help="comma-separated item numbers to run, e.g. 2,5")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--restart-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.restart_probe:
        restart_probe()
        return 0
    only = parse_only(args.only)
    package = imported_from()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # item 9 holds 1,500 sockets
    signal.signal(signal.SIGTERM, raise_interrupt)
    directory = tempfile.mkdtemp(prefix="gaspar-faults-")
    rows, failed, started = [], False, time.monotonic()
    try:
        for item, title, scenario in SCENARIOS:
            if only and item not in only:
                continue
            print(f"item {item}: {title} ...", file=sys.stderr, flush=True)
            run = Processes(directory)
            began = time.monotonic()
            try:
                values = scenario(run)
            except (ScenarioError, OSError) as e:
                failed = True
                values = {"figure": f"error: {e}".splitlines()[0]}
                print(f"item {item} failed: {e}", file=sys.stderr)
            finally:
                run.stop_all()
            seconds = time.monotonic() - began
            rows.append({"item": item, "scenario": title, "seconds": round(seconds, 1), **values})
            print(f"  {values['figure']} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"interrupted; logs in {directory}", file=sys.stderr)
        return 130
    meta = {
        "command": "python bench/faults.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "checkout": checkout_name(),
        "gaspar_tw": package,
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(
        json.dumps({"meta": meta, "scenarios": rows}, indent=1) if args.json else render(rows, meta)
    )
    if failed:
        print(f"some scenarios failed; logs in {directory}", file=sys.stderr)
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
