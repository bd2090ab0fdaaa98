"""Function calls in worker processes: C{pool.call(fn, *args, **kwargs)} as a Deferred.

A call rides the machinery of the handler's bytes requests: the same request table, queue,
scheduler, per-worker PUSH sockets, worker loop and shared PULL socket. Only its payload
differs, and the messages that carry one are told apart by a bit in their count, so bytes
requests take exactly the path they took before calls existed.

The data flow of a call::

    caller (reactor thread)                              |  worker process (plain pyzmq)
                                                         |
    pool.call(fn, *args, **kwargs)                       |
      check_callable(fn): lambda, nested, __main__,      |
        async ─────────────────────────────────────────▶ ValueError, at once (never sent)
      pack_call: [reference to fn (a plain function's    |
        pickled once, then kept), pickle 5 of (args,     |
        kwargs), out-of-band buffers] ─────────────────▶ PicklingError, at once (never sent)
        large bytes/bytearrays, memoryviews and          |
        PickleBuffers (numpy): views, not copies         |
      a class or function of __main__ in the args      |
        (looked for only if the pickle names __main__) ▶ ValueError, at once (never sent)
      over max_call_bytes ─────────────────────────────▶ ValueError, at once (never sent)
      Dispatcher.submitCall(CallFrames) ─▶ ReplyDeferred |
        │  request table (id, admission, timeout)        |
        ▼                                                |
      queue ─▶ scheduler: a batch for the least loaded   |
        worker; encode_mixed_work once the pool has      |
        seen a call (before: encode_work, no check)      |
        │                                                |
        ▼  [n|MIXED_BIT + ids + kinds + counts + sizes,  |
        │   small frames packed, large ones each alone]  |
        └── that worker's PUSH (ipc://, frames ─────────▶ PULL ─▶ Worker.answer
            sent with copy=False) ─────────────────────  |   is_mixed_work: one bit a message
                                                         |   KIND_BYTES ─▶ call_handler
                                                         |   KIND_CALL  ─▶ run_call:
                                                         |     fn from its reference: imported
                                                         |     on first use, then kept (a
                                                         |     module not found: one line
                                                         |     with the fix, pythonpath=[...]);
                                                         |     pickle.loads(buffers=frames): a
                                                         |     large bytes argument IS the
                                                         |     received frame (no copy)
                                                         |     fn(*args, **kwargs)
                                                         |     result ─▶ CALL_RESULT frames
                                                         |     raised ─▶ CALL_RAISED frames:
                                                         |       [JSON type/message/traceback,
                                                         |        pickle of the exception]
                                                         |     unpicklable result ─▶ RAISED
                                                         |       (PicklingError): this call
                                                         |       fails, the worker lives on
        ┌── shared PULL ◀── encode_mixed_replies ◀─────  |   [b"R" ... n|MIXED_BIT + ids +
        ▼                                                |    statuses + counts + sizes, ...]
      Dispatcher.repliesMessage ─ decode_replies         |
        ─▶ Delivery.deliver: status >= CALL_RESULT       |
           ─▶ unpack_outcome ─▶ d.callback(result)       |
                           or d.errback(the original exception type, its __cause__ a
                              RemoteTraceback of the worker's traceback text, also as
                              exc.remote_traceback; RemoteError(type, message, traceback)
                              when the exception does not unpickle here)

Crashes, --timeout, max_pending, retry_on_crash and stopping apply to calls as to bytes
requests (they are requests).

Security: a pickle runs code wherever it is read, so a call only travels where no stranger
can read or write it: the private ipc:// channel to local workers, and a --bind that is
loopback or CURVE-protected. When remote workers may join on an exposed bind (neither), the
pool keeps calls local from its first call (said once in the log): Dispatcher.submitCall
puts each call in a queue of its own that only local WorkerLinks are served from, and a call
requeued, or retried alone after a crash, stays local; bytes requests take their usual path
to every worker and pay nothing for the rule, on or off. With no local workers, a call
fails at once (ValueError). Two guards behind that: the pool drops unread a
remote worker's replies that may carry call outcomes (pickles) over an exposed bind, and a
worker host that reaches its producer over an exposed address answers any call it is sent
with an error, unread (--refuse-calls), still serving the bytes requests beside it.

Cancelling a call's Deferred drops the call if queued, has its worker skip it if sent and
not started, and kills its worker if running (it is replaced; what it held behind the call
is sent again): so addTimeout is a per-call timeout. max_call_bytes fails a larger call in
the caller, and a larger result in a local worker before it is sent (the parent checks
again: a remote worker is not told the limit).

C{pool.map} (L{gaspar_tw.calls.mapping}) is calls of L{gaspar_tw.wire.calls.run_chunk}, a
chunk of items each, a few per worker in flight within the room left under max_pending;
each chunk's results come back pickled by run_chunk, so that automatic chunks are sized by
their bytes too (a quarter of max_call_bytes) and a chunk over it is said by item.

A pool's workers import from its pythonpath, then the caller's own sys.path in its order
(L{gaspar_tw.consumer.worker_path}): they import a function where the caller would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail

from gaspar_tw.wire.calls import describe, pack_call, too_large

if TYPE_CHECKING:
    from gaspar_tw.dispatch import Dispatcher


def submit_call(dispatcher: Dispatcher, fn: Callable, args: tuple, kwargs: dict) -> Deferred:
    """Queue C{fn(*args, **kwargs)} on C{dispatcher}'s workers; fires with its result.

    Fails at once (nothing sent) with C{ValueError} for a function a worker cannot import by
    name or run (async), arguments holding a class or function of C{__main__}, or a call
    over the dispatcher's C{max_call_bytes}, and C{pickle.PicklingError} for arguments that
    cannot be pickled.
    """
    try:
        call = pack_call(fn, args, kwargs)
        if call.nbytes > dispatcher.max_call_bytes:
            raise too_large(f"the call of {describe(fn)}", call.nbytes, dispatcher.max_call_bytes)
    except Exception:
        return fail()
    return dispatcher.submitCall(call)


__all__ = ["submit_call"]
