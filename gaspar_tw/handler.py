"""Turn a ``"module:function"`` specification into a callable, and a callable into one.

``python -m gaspar_tw.handler SPEC [--pythonpath DIR]...`` imports a handler as a worker
would and says why it cannot (L{check_import} runs it, with a time limit).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from gaspar_tw.errors import HandlerError

Handler = Callable[[bytes], Any]

#: Exit status of C{python -m gaspar_tw.handler} for a handler that cannot be loaded.
EXIT_CANNOT_LOAD = 3


def load_handler(spec: str) -> Handler:
    """Import ``"package.module:function"`` (dots allowed after the colon) and return it.

    Raises L{HandlerError} with a one-line message that says what to fix.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerError(f"handler {spec!r} must look like 'module:function', e.g. 'mymod:echo'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise HandlerError(
            f"cannot import module {module_name!r} for handler {spec!r}: {e}"
            " (is it on the Python path? run from its directory or pass --pythonpath DIR)"
        ) from e
    except Exception as e:
        raise HandlerError(
            f"importing module {module_name!r} for handler {spec!r} failed: {type(e).__name__}: {e}"
        ) from e
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(
                f"module {module_name!r} has no attribute {attr_path!r} (handler {spec!r})"
            ) from None
    if not callable(target):
        raise HandlerError(f"handler {spec!r} is a {type(target).__name__}, not a callable")
    return target


def handler_spec(fn: Handler) -> str:
    """Return the ``"module:qualname"`` a worker process can import to find C{fn}.

    Raises L{HandlerError} (a C{ValueError}) for callables a spawned process cannot import:
    lambdas, nested functions and anything defined in ``__main__``.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname:
        raise HandlerError(
            f"handler {fn!r} has no importable name; define a function in a module"
            " and pass it (or its 'module:function' name)"
        )
    if module == "__main__":
        raise HandlerError(
            f"handler {qualname!r} is defined in __main__, which worker processes cannot import;"
            " move it into a module (e.g. myhandlers.py) and pass 'myhandlers:" + qualname + "'"
        )
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise HandlerError(
            f"handler {module}:{qualname} is a lambda or nested function, which worker processes"
            " cannot import; define it at module level"
        )
    return f"{module}:{qualname}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_import(spec: str, pythonpath: Sequence[str], timeout: float) -> None:
    """Load C{spec} in a child process, as a worker will, allowing it C{timeout} seconds.

    Raises L{HandlerError} with one line saying why if it cannot be loaded, ends its
    process while importing, or takes longer (the child and what it started are killed).
    """
    argv = [sys.executable, "-m", "gaspar_tw.handler", spec]
    for directory in pythonpath:
        argv += ["--pythonpath", directory]
    # stderr goes to a file, not a pipe: a process the module starts at import inherits it,
    # and waiting for a pipe to close would wait for that process too.
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, killed whole
        )
        timedOut = True
        try:
            child.wait(timeout)
            timedOut = False
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_group(child.pid)  # the child if out of time, and whatever it started
            child.wait()
        stderr.seek(0)
        errors = None if timedOut else stderr.read()
    if errors is None:  # killed: out of time
        raise HandlerError(
            f"importing handler {spec!r} took over {timeout:g}s (does the module loop at"
            " import? --import-timeout sets the limit)"
        )
    if child.returncode == 0:
        return
    last = errors.decode("utf-8", "replace").strip().rpartition("\n")[2]
    if child.returncode == EXIT_CANNOT_LOAD and last:
        raise HandlerError(last)
    raise HandlerError(
        f"importing handler {spec!r} ended its process (exit status {child.returncode})"
        + (f": {last}" if last else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gaspar_tw.handler", description="Check that a handler loads."
    )
    parser.add_argument("spec", help="the handler, as MODULE:FUNCTION")
    parser.add_argument("--pythonpath", action="append", default=[])
    args = parser.parse_args(argv)
    for directory in reversed(args.pythonpath):
        sys.path.insert(0, directory)
    try:
        load_handler(args.spec)
    except HandlerError as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_CANNOT_LOAD
    return 0


if __name__ == "__main__":
    sys.exit(main())
