"""C{pool.map(fn, iterable)}: a function mapped over an iterable in chunks, one call each."""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from gaspar_tw.wire.calls import (
    chunk_results,
    describe,
    function_reference,
    main_object,
    main_refusal,
    pack_call,
    raised_error,
    run_chunk,
    too_large,
)

if TYPE_CHECKING:
    from gaspar_tw.dispatch import Dispatcher

#: Each worker holds about this many of a map's chunks at once (one running, the next ones
#: at hand): the iterable is read only this far ahead of the results.
CHUNKS_PER_WORKER = 3
#: Automatic chunks are sized to take about this much worker time each.
CHUNK_SECONDS = 0.002
#: An automatic chunk holds at most this many items: its results are unpickled in one
#: reactor turn.
MAX_CHUNK_ITEMS = 16384
#: An automatic chunk is at most this many times the largest chunk timed so far, so a few
#: fast first items cannot make one long chunk of slow ones.
CHUNK_GROWTH = 1024
#: Automatic chunks are sized so that their items, and their results, take at most this
#: share of C{max_call_bytes} pickled (as measured so far, items varying in size).
CHUNK_BYTES_SHARE = 1 / 4
#: Iterables whose chunks are slices (a range's is three numbers) rather than lists of
#: items read one by one.
SLICED = (list, tuple, range)


class ChunkSizes:
    """How many items the next chunk takes: C{chunksize}, or sized from measured times
    (one item until the first chunk is timed)."""

    def __init__(self, chunksize: int | None, max_bytes: int = 0) -> None:
        self.fixed = chunksize
        #: The pickled bytes an automatic chunk's items, or its results, may take.
        self._byteBudget = max_bytes * CHUNK_BYTES_SHARE
        #: Bytes and items of the chunks measured, of their items and of their results
        #: (weighed as the times are).
        self._bytes = {"items": [0.0, 0.0], "results": [0.0, 0.0]}
        #: Worker seconds and items of the chunks timed, older chunks weighing less: their
        #: ratio is the time an item takes, the larger chunks' counting most.
        self._seconds = 0.0
        self._items = 0.0
        self.largest_timed = 0

    @property
    def known(self) -> bool:
        """Whether chunks are sized yet (they are at once with a fixed C{chunksize})."""
        return self.fixed is not None or self.largest_timed > 0

    def next(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if not self.largest_timed:
            return 1
        seconds = self._seconds / self._items  # an item's
        wanted = int(CHUNK_SECONDS / seconds) if seconds > 0 else MAX_CHUNK_ITEMS
        itemBytes = max((b / n for b, n in self._bytes.values() if n), default=0)
        if self._byteBudget and itemBytes:
            wanted = min(wanted, int(self._byteBudget / itemBytes))
        return max(1, min(wanted, MAX_CHUNK_ITEMS, self.largest_timed * CHUNK_GROWTH))

    def overBudget(self, count: int, nbytes: int) -> bool:
        """Whether an automatic chunk of C{count} items, C{nbytes} pickled, is too large to
        send whole (one item always goes); its items' size is measured either way."""
        if self.fixed is not None or count < 2 or not self._byteBudget:
            return False
        if nbytes <= self._byteBudget:
            return False
        self.measured("items", count, nbytes)
        return True

    def timed(self, count: int, seconds: float) -> None:
        """A chunk of C{count} items took C{seconds} in its worker."""
        if not count:
            return
        self.largest_timed = max(self.largest_timed, count)
        self._seconds = self._seconds / 2 + seconds
        self._items = self._items / 2 + count

    def measured(self, what: str, count: int, nbytes: int) -> None:
        """C{count} items, or their results (C{what}: "items" or "results"), took C{nbytes}
        pickled."""
        if count:
            sums = self._bytes[what]
            sums[0] = sums[0] / 2 + nbytes
            sums[1] = sums[1] / 2 + count


def check_chunksize(chunksize: Any) -> None:
    """Raise C{ValueError} (one line) unless C{chunksize} is C{None} or a positive int."""
    if chunksize is None or (
        isinstance(chunksize, int) and not isinstance(chunksize, bool) and chunksize > 0
    ):
        return
    raise ValueError(
        f"chunksize must be a positive whole number of items per call (e.g. 100), or None "
        f"to size chunks from measured times; got {chunksize!r}"
    )


class Mapping:
    """One C{map(fn, iterable)} in progress: its chunks in flight, its results so far.

    Reads the iterable a chunk at a time, keeps at most L{CHUNKS_PER_WORKER} chunks a
    worker in flight, and joins the results in input order as they come. C{deferred}
    fires with the list of results; it fails with the first item's error met (the rest is
    cancelled), and cancelling it cancels every chunk.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        fn: Callable,
        iterable: Iterable,
        chunksize: int | None,
        workers: int,
    ) -> None:
        self.dispatcher = dispatcher
        self.fn = fn
        #: C{fn} pickled by reference (raises here if a worker could not import it).
        self._reference = function_reference(fn)
        self.deferred: Deferred = Deferred(self._cancel)
        #: A list, tuple or range is sliced; any other iterable is read item by item.
        self._sequence: Sequence | None = iterable if type(iterable) in SLICED else None
        self._iterable = iterable
        self._iterator: Iterator | None = None
        self._exhausted = False
        self._carried: list = []  # an iterator's items taken and not sent yet (L{_putBack})
        self._tail: int | None = None  # the size of a sequence's last chunks, once known
        self._sizes = ChunkSizes(chunksize, dispatcher.max_call_bytes)
        self._workers = workers
        self._read = 0  # items taken from the iterable
        self._inFlight: dict[int, Deferred] = {}  # by the index of a chunk's first item
        self._arrived: dict[int, list] = {}  # results of chunks ahead of the joined ones
        self._results: list = []  # the results joined so far, in input order
        self._done = False

    def start(self) -> Deferred:
        if self._sequence is None:
            iterable, self._iterable = self._iterable, None
            try:
                self._iterator = iter(iterable)
            except Exception:
                if not _iterable(iterable):
                    self._fail(Failure(_notIterable(iterable)))
                else:
                    self._fail(Failure(), "raised by iter() of the iterable given to map()")
                return self.deferred
        self._fill()
        return self.deferred

    def _fill(self) -> None:
        """Submit chunks until enough are in flight or the items run out."""
        workers = max(1, self._workers, self.dispatcher.workerCount)
        # Until the first chunk is timed, one single item a worker.
        limit = CHUNKS_PER_WORKER * workers if self._sizes.known else workers
        # Within the room left in the request table (max_pending): the chunks that do not
        # fit wait for this map's chunks in flight to finish (with none, one is refused).
        room = self.dispatcher.room
        while not self._done and not self._exhausted and len(self._inFlight) < limit:
            if room <= 0 and self._inFlight:
                break
            room -= 1
            start = self._read
            try:
                items = self._take(self._sizes.next(), workers)
            except Exception:
                self._fail(Failure(), "raised by the iterable given to map()")
                return
            if not items:
                self._exhausted = True
                break
            limit_bytes = self.dispatcher.max_call_bytes
            while True:
                try:
                    call = pack_call(run_chunk, (self._reference, items, start, limit_bytes), {})
                except Exception as e:
                    self._fail(Failure(_unsendable(self.fn, items, start, e)))
                    return
                if not self._sizes.overBudget(len(items), call.nbytes):
                    break
                # Automatic chunks: items larger than measured so far; send half, keep the rest.
                half = len(items) // 2
                self._putBack(items[half:])
                items = items[:half]
            self._read += len(items)
            # The items' share of the call (less the function's and run_chunk's references).
            self._sizes.measured(
                "items", len(items), call.nbytes - len(call.frames[0]) - len(self._reference)
            )
            if call.nbytes > self.dispatcher.max_call_bytes:
                what = f"the chunk of items {start} to {start + len(items) - 1} of the map"
                self._fail(Failure(too_large(what, call.nbytes, self.dispatcher.max_call_bytes)))
                return
            d = self._inFlight[start] = self.dispatcher.submitCall(call)
            d.addCallbacks(
                self._chunkDone,
                self._chunkFailed,
                callbackArgs=(start, len(items)),
                errbackArgs=(start, len(items)),
            )
        if self._exhausted and not self._inFlight and not self._done:
            self._done = True
            results, self._results = self._results, []
            self.deferred.callback(results)

    def _take(self, count: int, workers: int) -> Sequence:
        """The next C{count} items, or fewer: automatic chunks share the last items of a
        sequence evenly among the workers."""
        sequence = self._sequence
        if sequence is None:
            carried = self._carried[:count]
            del self._carried[:count]
            return carried + list(islice(self._iterator, count - len(carried)))
        start = self._read
        if self._sizes.fixed is None:
            left = len(sequence) - start
            if self._tail is None and left < count * workers:
                self._tail = max(1, -(-left // workers))
            if self._tail is not None:
                count = self._tail
        return sequence[start : start + count]

    def _putBack(self, items: Sequence) -> None:
        """Items taken and not sent: the next chunk starts with them. (A sequence's are read
        again from it, from C{_read} on.)"""
        if self._sequence is None:
            self._carried[:0] = items

    def _chunkDone(self, outcome: tuple, start: int, count: int) -> None:
        if self._done:
            return
        del self._inFlight[start]
        frames, seconds, raised = outcome
        if raised is not None:
            index, info, pickled = raised
            if index < 0:  # the chunk's results together: the error says which
                self._fail(Failure(raised_error(info, pickled)))
            else:
                self._itemFailed(start + index, raised_error(info, pickled))
            return
        try:
            results = chunk_results(frames)
        except Exception:
            last = start + count - 1
            self._fail(Failure(), f"raised unpickling the results of items {start} to {last}")
            return
        self._sizes.timed(len(results), seconds)
        self._sizes.measured("results", len(results), sum(map(len, frames)))
        arrived = self._arrived
        arrived[start] = results
        joined = self._results
        while len(joined) in arrived:
            joined.extend(arrived.pop(len(joined)))
        self._fill()

    def _chunkFailed(self, failure: Failure, start: int, count: int) -> None:
        if self._done:
            return None  # cancelled by this map: nothing to report
        del self._inFlight[start]
        self._fail(failure, f"raised by a chunk of items {start} to {start + count - 1} of the map")
        return None

    def _itemFailed(self, index: int, error: BaseException) -> None:
        try:
            error.map_index = index
        except Exception:
            pass  # an exception type that takes no attributes: the note still says it
        self._fail(Failure(error), f"raised by item {index} of the map of {describe(self.fn)}")

    def _fail(self, failure: Failure, note: str = "") -> None:
        """End the map with C{failure}: cancel its chunks, drop its results."""
        add_note = getattr(failure.value, "add_note", None)  # Python 3.11 and later
        if note and add_note is not None:
            add_note(note)
        self._stop(killRunning=False)
        self.deferred.errback(failure)

    def _stop(self, killRunning: bool) -> None:
        """Cancel the chunks in flight. Those running are let finish (their results are
        dropped) when the map failed, and end with their workers when it was cancelled."""
        self._done = True
        self._sequence = self._iterator = None
        self._arrived.clear()
        self._results = []
        chunks = list(self._inFlight.values())
        self._inFlight.clear()
        for d in chunks:
            self.dispatcher.cancel(d.rid, killRunning)
            d.cancel()  # its request is gone already: it just fails with CancelledError

    def _cancel(self, deferred: Deferred) -> None:
        """The map's Deferred was cancelled (by the caller, or its addTimeout): cancel every
        chunk, even those running (their workers are killed and replaced, as for a call)."""
        if not self._done:
            self._stop(killRunning=True)


def _iterable(value: Any) -> bool:
    """Whether C{value}'s type says it can be iterated (C{iter} of it may still fail)."""
    kind = type(value)
    return getattr(kind, "__iter__", None) is not None or hasattr(kind, "__getitem__")


def _notIterable(value: Any) -> TypeError:
    return TypeError(
        f"map() needs an iterable of items (a list, a range, a generator...); got"
        f" {reprlib.repr(value)} (of type {type(value).__name__}), which is not iterable"
    )


def _unsendable(fn: Callable, items: Sequence, start: int, error: Exception) -> Exception:
    """Why the chunk of C{items} (from item C{start}) could not be sent (C{error}): which
    item holds a class or function of C{__main__} or cannot be pickled; or C{fn} itself."""
    for offset, item in enumerate(items):
        index = start + offset
        found = main_object(item)
        if found is not None:
            refused = main_refusal(found, f"as item {index} of the map of {describe(fn)}")
            refused.map_index = index
            return refused
        try:
            pickle.dumps(item, protocol=5)
        except Exception as e:
            unpicklable = pickle.PicklingError(
                f"cannot send item {index} of the map of {describe(fn)} to a worker: "
                f"{type(e).__name__}: {e}"
            )
            unpicklable.map_index = index
            return unpicklable
    if isinstance(error, ValueError):
        return error
    return pickle.PicklingError(
        f"cannot send {describe(fn)} to a worker for map(): {error.__cause__ or error}"
    )


def submit_map(
    dispatcher: Dispatcher, fn: Callable, iterable: Iterable, chunksize: int | None, workers: int
) -> Deferred:
    """Map C{fn} over C{iterable} on C{dispatcher}'s workers (about C{workers} of them, for
    how many chunks to keep in flight); fires with the list of results in input order.

    Fails at once with C{ValueError} for a bad C{chunksize} or a function a worker cannot
    import by name or run, with C{TypeError} for an C{iterable} that is not one, with what
    C{iter(iterable)} raised, and with C{pickle.PicklingError} at an item that cannot be
    pickled. It never raises.
    """
    try:
        check_chunksize(chunksize)
        mapping = Mapping(dispatcher, fn, iterable, chunksize, workers)
    except Exception:
        return fail()
    return mapping.start()


__all__ = ["submit_map"]
