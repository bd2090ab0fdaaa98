"""The user's handler, named so that worker processes can import it."""

from __future__ import annotations

from gaspar_tw.handler import Handler, handler_spec, load_handler


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

    def __repr__(self) -> str:
        return f"Consumer({self.spec!r})"
