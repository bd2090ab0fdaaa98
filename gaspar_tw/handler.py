"""Turn a ``"module:function"`` specification into a callable, and a callable into one.

``python -m gaspar_tw.handler SPEC [--pythonpath DIR]...`` imports a handler as a worker
would and says why it cannot (L{check_import} runs it, with a time limit).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from gaspar_tw.errors import HandlerError
from gaspar_tw.orphans import die_with_parent

Handler = Callable[[bytes], Any]

#: Exit status of C{python -m gaspar_tw.handler} for a handler that cannot be loaded.
EXIT_CANNOT_LOAD = 3


def load_handler(spec: str) -> Handler:
    """Import ``"package.module:function"`` (dots allowed after the colon) and return it.

    Raises L{HandlerError} with a one-line message that says what to fix.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        if "." in spec and not sep and spec.rpartition(".")[2].isidentifier():
            module, _, name = spec.rpartition(".")
            raise HandlerError(
                f"handler {spec!r} must look like 'module:function': did you mean"
                f" '{module}:{name}'?"
            )
        raise HandlerError(f"handler {spec!r} must look like 'module:function', e.g. 'mymod:echo'")
    if module_name.endswith(".py") or "/" in module_name:
        directory, _, file = module_name.rpartition("/")
        name = file.removesuffix(".py")
        where = f" (with --pythonpath {directory})" if directory not in ("", ".") else ""
        raise HandlerError(
            f"handler {spec!r} names a file: give its module's name, '{name}:{attr_path}'{where}"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if not _names_module(e.name, module_name):
            raise _import_failed(module_name, spec, e) from e
        raise HandlerError(
            f"cannot import module {module_name!r} for handler {spec!r}: {e}"
            " (is it on the Python path? run from its directory or pass --pythonpath DIR)"
        ) from e
    except Exception as e:
        raise _import_failed(module_name, spec, e) from e
    parts = attr_path.split(".")
    for index, part in enumerate(parts):
        try:
            target = getattr(target, part)
        except AttributeError:
            message = f"module {module_name!r} has no attribute {attr_path!r} (handler {spec!r})"
            close = difflib.get_close_matches(part, _public_callables(target), n=1)
            if close:
                guess = ".".join([*parts[:index], close[0], *parts[index + 1 :]])
                message += f"; did you mean {guess!r}?"
            raise HandlerError(message) from None
    if not callable(target):
        kind = type(target).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise HandlerError(
            f"handler {spec!r} is {article} {kind} ({target!r:.40}), not a function: name a"
            " function that takes the request's bytes"
        )
    return target


def _names_module(missing: str | None, module_name: str) -> bool:
    """Whether the module found missing is C{module_name} itself or a package it is in."""
    return missing is not None and (module_name + ".").startswith(missing + ".")


def _import_failed(module_name: str, spec: str, error: Exception) -> HandlerError:
    """The module was found, but importing it raised C{error}: say what and where."""
    what = " ".join((error.msg if isinstance(error, SyntaxError) else str(error)).splitlines())
    where = error_location(error)
    return HandlerError(
        f"importing module {module_name!r} for handler {spec!r} failed:"
        f" {type(error).__name__}: {what}" + (f" ({where})" if where else "")
    )


def error_location(error: BaseException) -> str | None:
    """Where C{error} was raised, as ``"file, line N"``: a C{SyntaxError}'s own place, else
    the innermost frame of its traceback. A file under the current directory is shown
    relative to it."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return f"{_shown(error.filename)}, line {error.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen ")
    ]
    if not frames:
        return None
    return f"{_shown(frames[-1].filename)}, line {frames[-1].lineno}"


def _shown(path: str) -> str:
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith(os.pardir + os.sep) else relative


def _public_callables(target: Any) -> list[str]:
    names = []
    for name in dir(target):
        if not name.startswith("_") and callable(getattr(target, name, None)):
            names.append(name)
    return names


def import_root(spec: str) -> str | None:
    """The directory this process imported the module of handler C{spec} from (the entry of
    C{sys.path} it was found in), or C{None} if it is not imported or has no file.

    A worker process starts with the producer's working directory on its path, not the
    directory of the producer's script: given this, it finds the handler where the producer did.
    """
    module_name = spec.partition(":")[0]
    top = sys.modules.get(module_name.partition(".")[0])
    if top is None:
        return None
    if getattr(top, "__file__", None):
        where = os.path.dirname(os.path.abspath(top.__file__))
        return os.path.dirname(where) if hasattr(top, "__path__") else where
    paths = list(getattr(top, "__path__", ()))  # a namespace package
    return os.path.dirname(os.path.abspath(paths[0])) if paths else None


def handler_spec(fn: Handler) -> str:
    """Return the ``"module:qualname"`` a worker process can import to find C{fn}.

    Raises L{HandlerError} (a C{ValueError}) for callables a spawned process cannot import:
    lambdas, nested functions, methods bound to an instance and anything defined in
    ``__main__``; its message says what to do instead.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname:
        raise HandlerError(
            f"handler {fn!r} has no importable name; define a function in a module"
            " and pass it (or its 'module:function' name)"
        )
    name = qualname.rpartition(".")[2]
    isLambda = name == "<lambda>"
    if module == "__main__":
        if isLambda:
            fix = (
                "define it with def in a module (e.g. def work(message) in myhandlers.py)"
                " and pass 'myhandlers:work' (a lambda cannot be imported by name)"
            )
        else:
            fix = (
                "move it to the top level of a module (e.g. myhandlers.py)"
                f" and pass 'myhandlers:{name}'"
            )
        raise HandlerError(
            f"handler {qualname!r} is defined in __main__, which worker processes cannot"
            f" import; {fix}"
        )
    cannot = f"handler '{module}:{qualname}' is {{}}, which worker processes cannot import; "
    if isLambda:
        fix = "name it with def at module level (a lambda cannot be imported by name)"
        bound = _bound_names(fn, module)
        if bound:
            fix += f", or pass the name it is bound to as a string: '{module}:{bound[0]}'"
        raise HandlerError(cannot.format("a lambda") + fix)
    if "<locals>" in qualname:
        raise HandlerError(cannot.format("a nested function") + "move it to module level")
    if inspect.ismethod(fn) and not inspect.isclass(fn.__self__):
        raise HandlerError(
            cannot.format("a method bound to an instance")
            + "make it a module-level function (or a staticmethod) and pass that"
        )
    return f"{module}:{qualname}"


def _bound_names(fn: Handler, module_name: str) -> list[str]:
    """The names C{fn} is bound to at the top level of its (imported) module."""
    module = sys.modules.get(module_name)
    return [name for name, value in vars(module).items() if value is fn] if module else []


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
        f"importing handler {spec!r} ended its process ({_ending(child.returncode)})"
        + (f": {last}" if last else "")
    )


def _ending(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gaspar_tw.handler", description="Check that a handler loads."
    )
    parser.add_argument("spec", help="the handler, as MODULE:FUNCTION")
    parser.add_argument("--pythonpath", action="append", default=[])
    args = parser.parse_args(argv)
    die_with_parent()  # a twistd stopped while it waits for this check takes it along
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
