"""The user's handler, named so that worker processes can import it."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Sequence

from twisted.logger import Logger

from gaspar_tw.errors import HandlerError
from gaspar_tw.handler import Handler, check_import, handler_spec, import_root, load_handler

log = Logger()

#: Where the standard library and installed packages are: on every worker's path already.
_STANDARD_PATHS = frozenset(
    os.path.abspath(path) for path in sysconfig.get_paths().values() if path
) | frozenset(os.path.abspath(path) for path in site.getsitepackages())


class Consumer:
    """Wrap a handler, C{bytes -> bytes} (a C{str} result is sent UTF-8 encoded).

    C{handler} is a module-level function or its ``"module:function"`` name. The name is
    resolved here, so a typo fails now with a clear L{gaspar_tw.errors.HandlerError} rather
    than in every worker.
    """

    def __init__(self, handler: str | Handler) -> None:
        if isinstance(handler, str):
            self.spec = handler
            self.handler = load_handler(handler)
        else:
            self.spec = handler_spec(handler)
            self.handler = handler

    @property
    def pythonpath(self) -> list[str]:
        """What a worker process needs on its path to import the handler as this process did
        (the directory of the module, say, of a script run from elsewhere)."""
        root = import_root(self.spec)
        return [] if root is None or root in _STANDARD_PATHS else [root]

    def __repr__(self) -> str:
        return f"Consumer({self.spec!r})"


def worker_path(configured: Sequence[str], consumer: Consumer) -> list[str]:
    """The whole path a pool's workers import from, each directory once: C{configured}
    (C{pythonpath}), then this process's own C{sys.path} as it is now, in its order (so that
    a worker imports a call's function, and its arguments' classes, where the caller would,
    as C{multiprocessing} does; not from the worker's working directory), then the handler's
    import root if the caller's path lacks it."""
    paths: list[str] = []
    for directory in (*configured, *sys.path, *consumer.pythonpath):
        directory = os.path.abspath(directory or os.curdir)
        if directory not in paths:
            paths.append(directory)
    return paths


def loadConsumer(options, command: str) -> tuple[Consumer, list[str]]:
    """The consumer of a twistd command's C{--handler}, with the current directory and
    C{--pythonpath} importable; returns it and that path. A handler that cannot be imported,
    or not within C{--import-timeout} seconds (tried in a child process first), exits with
    one line."""
    pythonpath = [os.getcwd(), *options.config.pythonpath]
    for directory in reversed(pythonpath):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    spec, timeout = options["handler"], options.config.import_timeout
    # twistd shows this once its log starts (after makeService), with the time it was said.
    log.info("importing handler {spec} (--import-timeout {timeout:g}s)", spec=spec, timeout=timeout)
    try:
        if timeout:
            check_import(spec, pythonpath, timeout)
        return Consumer(spec), pythonpath
    except HandlerError as e:
        raise SystemExit(f"{command}: {e}") from None
