"""The handler a pool without one gives its workers: they run calls, and refuse bytes requests.

A worker process needs a handler to load; a pool made only for calls (C{ProcessPool(workers=2)})
names this one. Its own C{submit} fails before sending anything, so a bytes request reaches it
only by another way in, and gets an error that says what is missing.
"""

from __future__ import annotations


def no_handler(request: bytes) -> bytes:
    """Refuse C{request}: this pool was given no handler (it runs calls only)."""
    raise ValueError(
        "this pool has no handler, so it cannot answer a bytes request: give ProcessPool a"
        " handler (a 'module:function' name or a function), or send calls (pool.call)"
    )
