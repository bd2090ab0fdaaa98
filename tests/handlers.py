"""Handlers used by the tests; workers import them via --pythonpath tests/."""

import os
import signal
import time


def tagged(message: bytes) -> bytes:
    """Return the worker's pid and the request: b"<pid>:<request>"."""
    return b"%d:%s" % (os.getpid(), message)


def text(message: bytes) -> str:
    return message.decode() + " ok"


def returns_int(message: bytes) -> int:
    return 42


def fail(message: bytes) -> bytes:
    raise KeyError("no such thing: " + message.decode())


def slow(message: bytes) -> bytes:
    """Sleep for the number of seconds in the request, then answer."""
    time.sleep(float(message or b"0"))
    return message


def faulty(message: bytes) -> bytes:
    """Misbehave on command, else answer b"<pid>:<request>" like L{tagged}.

    ``raise:TEXT`` raises ValueError(TEXT); ``exit`` calls os._exit(3); ``kill`` sends this
    worker SIGKILL; ``segv`` dereferences NULL through ctypes; ``sleep:SECONDS`` sleeps first;
    ``once:PATH:COMMAND`` runs COMMAND only if PATH does not exist yet (and creates it).
    """
    command, _, argument = message.partition(b":")
    if command == b"once":
        path, _, then = argument.partition(b":")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return tagged(message)
        return faulty(then)
    if command == b"raise":
        raise ValueError(argument.decode())
    if command == b"exit":
        os._exit(3)
    if command == b"kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if command == b"segv":
        import ctypes
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test directory
        ctypes.string_at(0)
    if command == b"sleep":
        time.sleep(float(argument))
    return tagged(message)


def echo_or_fail(message: bytes) -> bytes:
    """Echo the request, except b"boom", which raises."""
    if message == b"boom":
        raise ValueError("boom requested")
    return message


def forks(message: bytes) -> bytes:
    """Fork a child that sleeps for the seconds in the request, holding this worker's stdout
    and stderr; answer b"<worker pid>:<child pid>"."""
    child = os.fork()
    if child == 0:
        try:
            time.sleep(float(message))
        finally:
            os._exit(0)
    return b"%d:%d" % (os.getpid(), child)


def prints(message: bytes) -> bytes:
    """Write as many bytes as the request says to stdout, with no newline; answer b"done"."""
    data = memoryview(b"x" * int(message))
    while data:
        data = data[os.write(1, data) :]
    return b"done"


def last_words(message: bytes) -> bytes:
    """Write the request to stderr, with no newline, and exit at once (status 5)."""
    os.write(2, message)
    os._exit(5)


class StrFails(Exception):
    """An exception whose message cannot be had: str() of it raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


def raises_str_fails(message: bytes) -> bytes:
    raise StrFails()
