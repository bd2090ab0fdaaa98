"""Function calls as frames: pickle protocol 5, large buffers out of band (both ends use it).

A call travels as C{[pickle of (fn, args, kwargs), buffer_1, ..., buffer_b]}, its outcome as
C{[pickle of the result, buffers...]} (status L{CALL_RESULT}) or C{[error JSON, pickle of the
exception or b""]} (status L{CALL_RAISED}). See L{gaspar_tw.calls} for the whole path. No
Twisted, no pyzmq: the worker process uses this module too.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
import io
import pickle
import re
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable
from typing import Any

from gaspar_tw.errors import RemoteError
from gaspar_tw.wire.failures import decode_error, encode_error

#: The reply status of a call that returned: its frames are the pickled result and buffers.
CALL_RESULT = 3
#: The reply status of a call that raised: C{[error JSON, pickled exception or b""]}.
CALL_RAISED = 4

#: A C{bytes} argument, keyword argument or result this large or larger travels as a frame of
#: its own, not copied into the pickle (smaller ones cost less in the pickle).
OUT_OF_BAND_BYTES = 64 * 1024

PROTOCOL = 5


class CallFrames:
    """A call, or a call's outcome, as frames: a pickle, then its out-of-band buffers.

    C{len()} is the bytes it carries, as a request payload's is (message cutting, counters).
    """

    __slots__ = ("frames", "nbytes")

    def __init__(self, frames: list, nbytes: int = -1) -> None:
        self.frames = frames
        # Each is bytes or a view of bytes (format "B").
        self.nbytes = sum(map(len, frames)) if nbytes < 0 else nbytes

    def __len__(self) -> int:
        return self.nbytes


class _OutOfBand:
    """A large C{bytes} object, pickled as a reference to a buffer sent beside the pickle.

    It unpickles as C{bytes(buffer)}: the very C{bytes} object a frame was received as (no
    copy), or a copy if the buffer is some other kind.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol):
        return bytes, (pickle.PickleBuffer(self.data),)


class _OutOfBandArray(_OutOfBand):
    """A large C{bytearray}, pickled as a reference to a buffer sent beside the pickle (the
    receiver's is a copy of the frame: a bytearray must be its own, writable memory)."""

    __slots__ = ()

    def __reduce_ex__(self, protocol):
        return bytearray, (pickle.PickleBuffer(self.data),)


_LARGE_KINDS = (bytes, bytearray)


def _outOfBand(value: Any) -> Any:
    """Wrap a large C{bytes} or C{bytearray} (an argument or a result: pickle's own code for
    these types puts them in the pickle, copied) to travel as a frame of its own."""
    kind = type(value)
    if kind is bytes and len(value) >= OUT_OF_BAND_BYTES:
        return _OutOfBand(value)
    if kind is bytearray and len(value) >= OUT_OF_BAND_BYTES:
        return _OutOfBandArray(value)
    return value


def view(buffer: Any, format: str, shape: tuple) -> memoryview:
    """A C{memoryview} of a received buffer, in the format and shape it was sent with."""
    return memoryview(buffer).cast("B").cast(format, shape)


def _reduceView(value: memoryview) -> tuple:
    """A memoryview (which pickle refuses) travels as an out-of-band buffer, read in place."""
    if not value.contiguous:
        value = memoryview(value.tobytes()).cast(value.format, value.shape)
    return view, (pickle.PickleBuffer(value), value.format, value.shape)


def _dispatch_table() -> dict:
    """copyreg's reducers but one, and ours for memoryviews. C{twisted.persisted.styles}
    (loaded by parts of Twisted) registers a reducer for bound methods that pickles a
    classmethod as a method of C{type}; a bound method's own C{__reduce__} (C{getattr(its
    self, its name)}) is right."""
    table = {
        kind: reducer
        for kind, reducer in copyreg.dispatch_table.items()
        if kind is not types.MethodType
    }
    table[memoryview] = _reduceView
    return table


class _Dumper:
    """A protocol-5 pickler with L{_dispatch_table}, kept for reuse by one thread (making one
    for each call costs about as much as pickling a small call)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.buffers: list = []
        self.pickler: pickle.Pickler | None = None
        self.copyregSize = -1
        self.busy = False

    def dumps(self, value: Any) -> list:
        """C{[pickle, buffer...]} of C{value}: PickleBuffers out of band."""
        if self.busy:  # re-entered (a reducer that sends a call): a pickler of its own
            return _Dumper().dumps(value)
        if self.copyregSize != len(copyreg.dispatch_table):
            self.copyregSize = len(copyreg.dispatch_table)
            self.pickler = pickle.Pickler(
                self.out, protocol=PROTOCOL, buffer_callback=self.buffers.append
            )
            self.pickler.dispatch_table = _dispatch_table()
        out, buffers, pickler = self.out, self.buffers, self.pickler
        self.busy = True
        try:
            pickler.dump(value)
            pickled = out.getvalue()
            if not buffers:
                return [pickled]
            return [pickled, *(buffer.raw() for buffer in buffers)]
        finally:
            self.busy = False
            out.seek(0)
            out.truncate()
            pickler.clear_memo()
            buffers.clear()


_perThread = threading.local()


def _dumps(value: Any) -> list:
    """C{[pickle, buffer...]}: PickleBuffers (numpy arrays, large top-level bytes) out of band."""
    try:
        dumper = _perThread.dumper
    except AttributeError:
        dumper = _perThread.dumper = _Dumper()
    return dumper.dumps(value)


def _anyLarge(values: Any) -> bool:
    """Whether one of C{values} is a C{bytes} or C{bytearray} to send out of band."""
    for value in values:
        if type(value) in _LARGE_KINDS and len(value) >= OUT_OF_BAND_BYTES:
            return True
    return False


def describe(fn: Any) -> str:
    """A callable's dotted name (that of the function in a partial), for messages."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None)
    return f"{module}.{repr(fn) if name is None else name}"


#: Why a worker cannot use what the caller's C{__main__} defines.
_NOT_MAIN = "a worker does not run your __main__ script, so cannot import what it defines"
_TOP_LEVEL = "define it at the top level of an importable module (e.g. mypackage/tasks.py)"


def check_callable(fn: Any) -> None:
    """Raise C{ValueError} unless a worker can import C{fn} by name (pickle sends functions
    by reference: a lambda, a nested function or one of C{__main__} would not be found) and
    run it (not a coroutine function)."""
    if isinstance(fn, functools.partial):
        check_callable(fn.func)
        return
    if not callable(fn):
        raise ValueError(f"cannot call {fn!r} in a worker: it is not callable")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise ValueError(
            f"cannot call {describe(fn)} in a worker: it is an async function, and a worker "
            f"runs plain functions; await it in your own code (Deferred.fromCoroutine), or "
            f"pass a plain function"
        )
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if getattr(fn, "__name__", "") == "<lambda>":
        why = "a lambda has no name a worker can import"
    elif "<locals>" in qualname:
        why = "a function defined inside another has no name a worker can import"
    elif module == "__main__":
        why = _NOT_MAIN
    else:
        return
    raise ValueError(
        f"cannot call {describe(fn)} in a worker: {why}; {_TOP_LEVEL} and pass that function"
    )


class _MainFound(Exception):
    def __init__(self, found: Any) -> None:
        self.found = found


class _Sink:
    """A file that keeps nothing (what L{_MainFinder} writes)."""

    @staticmethod
    def write(data: Any) -> int:
        return len(data)


class _MainFinder(pickle.Pickler):
    """Pickles to nothing, stopping at the first class or function of C{__main__} it meets
    (C{reducer_override} sees every class and function a pickle names)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and obj.__module__ == "__main__":
            raise _MainFound(obj)
        return NotImplemented


def main_object(value: Any) -> Any:
    """The first class or function of C{__main__} that pickling C{value} names (an instance
    of such a class names it), or C{None}."""
    finder = _MainFinder(_Sink(), protocol=PROTOCOL, buffer_callback=lambda buffer: None)
    finder.dispatch_table = _dispatch_table()
    try:
        finder.dump(value)
    except _MainFound as e:
        return e.found
    except Exception:
        return None
    return None


def main_refusal(found: Any, where: str) -> ValueError:
    """The error of a class or function of C{__main__} (C{found}) sent C{where} (e.g. "in
    the call of tasks.f")."""
    return ValueError(
        f"cannot send {describe(found)} (or an instance of it) to a worker {where}: "
        f"{_NOT_MAIN}; {_TOP_LEVEL} and use that"
    )


def _checkNotMain(pickled: bytes, value: Any, where: str) -> None:
    """Raise L{main_refusal} if C{value}, pickled as C{pickled}, names a class or function of
    C{__main__} (looked for only when the pickle holds the name C{__main__})."""
    if b"__main__" in pickled:
        found = main_object(value)
        if found is not None:
            raise main_refusal(found, where)


def too_large(what: str, nbytes: int, limit: int) -> ValueError:
    """The error of a call, or a call's outcome, of C{nbytes} (pickled) over C{limit}."""
    return ValueError(
        f"{what} is {nbytes:,} bytes pickled, more than max_call_bytes ({limit:,}); pass large"
        f" data another way (a file, shared memory) or raise max_call_bytes"
    )


#: At most this many function references are kept at each end (then they are all dropped).
MAX_FUNCTIONS = 1024

_references: dict[Callable, bytes] = {}
_functions: dict[bytes, Callable] = {}


def _isPlainFunction(fn: Any) -> bool:
    """Whether C{fn} pickles as its name alone (a Python function, or a builtin function of a
    module), so that its pickle can be kept: not a bound method, whose pickle holds its
    object's state as it is now."""
    kind = type(fn)
    return kind is types.FunctionType or (
        kind is types.BuiltinFunctionType and type(fn.__self__) is types.ModuleType
    )


def _reference(fn: Callable) -> bytes:
    """C{fn} pickled (by reference), checked; kept for the next call if it is a plain
    function (pickled, and imported by a worker, once)."""
    plain = _isPlainFunction(fn)
    reference = _references.get(fn) if plain else None
    if reference is None:
        check_callable(fn)
        try:
            reference = _dumps(fn)[0]
        except Exception as e:
            raise _unpicklable(fn, e) from e
        if not plain:  # a partial's arguments, a method's object
            _checkNotMain(reference, fn, f"in the call of {describe(fn)}")
        else:
            if len(_references) >= MAX_FUNCTIONS:
                _references.clear()
            _references[fn] = reference
    return reference


def function_reference(fn: Callable) -> bytes:
    """C{fn} pickled by reference (a map sends it to L{run_chunk} so); raises as
    L{pack_call} does for a function a worker cannot import or run."""
    return _reference(fn)


def import_failed(error: Exception, what: str) -> Exception | None:
    """In a worker: C{error}, raised unpickling C{what} (e.g. "tasks.double"), said in one
    line with the fix if it means a module, or a name in one, is not found here (a new
    exception of the same type), else C{None}."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        problem = f"no module named {error.name!r}"
        module = error.name
    elif isinstance(error, AttributeError) and str(error).startswith("Can't get attribute"):
        problem = str(error)
        found = re.search(r"on <module '([^']+)'", problem)
        module = f"{found.group(1) if found else 'its module'}, as the caller has it,"
    else:
        return None
    message = (
        f"cannot import {what} in a worker: {problem}; is {module} importable by the workers?"
        f" pass pythonpath=[its directory] to the pool (--pythonpath), or install it"
    )
    if isinstance(error, ImportError):
        return type(error)(message, name=error.name, path=error.path)
    return AttributeError(message)


def load_arguments(fn: Callable, frames: list) -> tuple[tuple, dict]:
    """In a worker: the C{(args, kwargs)} of a call of C{fn} from its frames (L{pack_call});
    a module they need that is not found here is said with the fix (L{import_failed})."""
    try:
        return pickle.loads(frames[1], buffers=frames[2:])
    except Exception as e:
        error = import_failed(e, f"an argument of {describe(fn)}")
        if error is None:
            raise
        raise error from None


def _named(reference: bytes, error: Exception) -> str:
    """The dotted name in a function reference that C{error} (raised loading it) is about:
    the global whose module could not be imported, or whose name is missing."""
    import pickletools  # only when a reference fails to load

    names: list[str] = []
    found: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(reference):
            if isinstance(arg, str):
                names.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(names) >= 2:
                found.append(f"{names[-2]}.{names[-1]}")
    except Exception:
        pass
    missing = getattr(error, "name", None)
    for name in found:
        module, _, attribute = name.rpartition(".")
        if missing and (module == missing or module.startswith(missing + ".")):
            return name
        if f"attribute {attribute!r}" in str(error):
            return name
    return found[0] if found else "the function called"


def _function(reference: bytes) -> Callable:
    """In a worker: the callable a reference names, imported on first use, then kept if it
    is a plain function. A module that cannot be imported here is said with the fix
    (L{import_failed})."""
    fn = _functions.get(reference)
    if fn is None:
        try:
            fn = pickle.loads(reference)
        except Exception as e:
            error = import_failed(e, _named(bytes(reference), e))
            if error is None:
                raise
            raise error from None
        if _isPlainFunction(fn):  # not a method, whose object a call may change
            if len(_functions) >= MAX_FUNCTIONS:
                _functions.clear()
            _functions[bytes(reference)] = fn
    return fn


def pack_call(fn: Callable, args: tuple, kwargs: dict) -> CallFrames:
    """The frames of the call C{fn(*args, **kwargs)}, pickled now (in the caller):
    C{[reference to fn, pickle of (args, kwargs), out-of-band buffers...]}.

    Raises C{ValueError} for a function a worker cannot import, and C{pickle.PicklingError}
    (from pickle's own error) for what cannot be pickled.
    """
    if _anyLarge(args):
        args = tuple(map(_outOfBand, args))
    if kwargs and _anyLarge(kwargs.values()):
        kwargs = {key: _outOfBand(item) for key, item in kwargs.items()}
    reference = _reference(fn)
    try:
        frames = _dumps((args, kwargs))
    except Exception as e:
        raise _unpicklable(fn, e) from e
    pickled = frames[0]
    if b"__main__" in pickled:  # rare: then look at what the pickle names (L{main_object})
        _checkNotMain(pickled, (args, kwargs), f"in the call of {describe(fn)}")
    if len(frames) == 1:  # no out-of-band buffer: most calls
        return CallFrames([reference, pickled], len(reference) + len(pickled))
    return CallFrames([reference, *frames])


def _unpicklable(fn: Callable, error: Exception) -> pickle.PicklingError:
    return pickle.PicklingError(
        f"cannot send the call of {describe(fn)} to a worker: {type(error).__name__}: {error}"
    )


def _raised(exc: BaseException, traceback_text: str) -> tuple[int, CallFrames]:
    info = encode_error(exc, traceback_text)
    try:
        pickled = pickle.dumps(exc, protocol=PROTOCOL)
    except Exception:
        pickled = b""  # the caller gets a RemoteError from the JSON
    return CALL_RAISED, CallFrames([info, pickled])


def run_call(call: CallFrames, max_bytes: int = 0) -> tuple[int, CallFrames]:
    """In a worker: unpickle a call (importing its function's module on first use), run it,
    and return C{(status, frames)} of its result or of the exception it raised. A result
    that cannot be pickled, or is larger than C{max_bytes} pickled (0: no limit), fails this
    call only (and is not sent)."""
    try:
        frames = call.frames
        fn = _function(frames[0])
        args, kwargs = load_arguments(fn, frames)
        result = fn(*args, **kwargs)
    except BaseException as e:  # SystemExit too: the caller gets it, the worker lives on
        return _raised(e, traceback.format_exc())
    try:
        outcome = CallFrames(_dumps(_outOfBand(result)))
    except Exception as e:
        error = pickle.PicklingError(
            f"cannot send the result of {describe(fn)} back: {type(e).__name__}: {e}"
        )
        return _raised(error, traceback.format_exc())
    if max_bytes and outcome.nbytes > max_bytes:
        error = too_large(f"the result of {describe(fn)}", outcome.nbytes, max_bytes)
        return _raised(error, "".join(traceback.format_exception_only(error)))
    return CALL_RESULT, outcome


#: A chunk's results, pickled, leave this much of C{max_call_bytes} for the reply around them.
CHUNK_ENVELOPE_BYTES = 256


def run_chunk(
    reference: bytes, items: Iterable, start: int = 0, max_bytes: int = 0
) -> tuple[list, float, tuple | None]:
    """In a worker: one chunk of a map, items C{start} on, the function C{reference} names
    (L{function_reference}) applied to each item in turn.

    Returns C{(frames, seconds, None)}: the results pickled (C{[pickle, buffers...]}: the
    caller sizes chunks by their length), C{seconds} the time the items took. At the first
    item that raises, or whose result cannot be pickled, it returns C{([], seconds, (its
    index in C{items}, error JSON, pickled exception))}, the index -1 when the results are
    over C{max_bytes} (0: no limit) together: returned rather than raised, so the caller
    knows the item even when the exception does not unpickle there (see L{raised_error}).
    """
    fn = _function(reference)
    results: list = []
    started = time.perf_counter()
    try:
        results.extend(map(fn, items))  # at an error, holds the results before it
    except BaseException as e:  # SystemExit too: the caller gets it, the worker lives on
        frames = _raised(e, traceback.format_exc())[1].frames
        return [], time.perf_counter() - started, (len(results), *frames)
    seconds = time.perf_counter() - started
    try:
        pickled = _dumps(results)
    except Exception as e:
        index = _firstUnpicklable(results)
        error = pickle.PicklingError(
            f"cannot send the result of item {start + index} of the map of {describe(fn)}"
            f" back: {type(e).__name__}: {e}"
        )
        return [], seconds, (index, *_raised(error, traceback.format_exc())[1].frames)
    nbytes = len(pickled[0]) if len(pickled) == 1 else sum(map(len, pickled))
    if max_bytes and nbytes > max_bytes - CHUNK_ENVELOPE_BYTES:
        index = 0 if len(results) == 1 else -1
        if index == 0:
            what = f"the result of item {start} of the map of {describe(fn)}"
            error = too_large(what, nbytes, max_bytes)
        else:
            last = start + len(results) - 1
            what = f"the result of items {start} to {last} of the map of {describe(fn)}"
            error = ValueError(f"{too_large(what, nbytes, max_bytes)}, or lower chunksize")
        text = "".join(traceback.format_exception_only(error))
        return [], seconds, (index, *_raised(error, text)[1].frames)
    return [_outOfBand(frame) for frame in pickled], seconds, None


def _firstUnpicklable(results: list) -> int:
    """The index of the first of C{results} that cannot be pickled (0 if each can)."""
    for index, result in enumerate(results):
        try:
            _dumps(result)
        except Exception:
            return index
    return 0


def chunk_results(frames: list) -> list:
    """In the caller: the results of a chunk L{run_chunk} sent as C{frames}."""
    if len(frames) == 1:
        return pickle.loads(frames[0])
    return pickle.loads(frames[0], buffers=frames[1:])


class RemoteTraceback(Exception):
    """The C{__cause__} of an exception raised in a worker: its traceback there, as text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def unpack_outcome(status: int, outcome: CallFrames) -> Any:
    """In the caller: a call's result, or raise the exception it raised.

    The exception is of its original type when it unpickles here, with the worker's traceback
    as its C{__cause__} (a L{RemoteTraceback}) and as C{remote_traceback}; otherwise it is a
    L{RemoteError} naming the type.
    """
    frames = outcome.frames
    if status == CALL_RESULT:
        if len(frames) == 1:
            return pickle.loads(frames[0])
        return pickle.loads(frames[0], buffers=frames[1:])
    raise raised_error(frames[0], frames[1])


def raised_error(info_json: bytes, pickled: bytes) -> BaseException:
    """The exception a worker reported as C{[error JSON, pickled exception or b""]}: of its
    original type with the traceback text as C{__cause__} and C{remote_traceback}, or a
    L{RemoteError} (see L{unpack_outcome})."""
    info = decode_error(info_json)
    text = info["traceback"]
    try:
        exc = pickle.loads(pickled) if pickled else None
    except Exception:
        exc = None
    if not isinstance(exc, BaseException):
        return RemoteError(info["type"], info["message"], text)
    try:
        exc.remote_traceback = text
    except Exception:
        pass  # an exception type that takes no attributes: its __cause__ still has the text
    exc.__cause__ = RemoteTraceback(text)
    return exc
