"""Turn a ``"module:function"`` specification into a callable, and a callable into one."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gaspar_tw.errors import HandlerError

Handler = Callable[[bytes], Any]


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
