"""A periodic sweep for a timeout shared by many items: one timer in all, none per item."""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

#: The longest time between two sweeps (seconds); a timeout gets at least 4 sweeps.
MAX_SWEEP_INTERVAL = 1.0
MIN_SWEEPS_PER_TIMEOUT = 4


class Sweep:
    """Call C{check()} C{steps} times per C{timeout} (every C{timeout/4} s, at most 1 s).

    The interval divides C{timeout} exactly. Items are stamped with C{count} (the sweeps so
    far) when they last showed activity; one stamped between sweeps k and k+1 has been quiet
    for at least C{timeout} once C{expired(stamp)} is true, and for less than one interval
    more when the sweeps run on time (C{count} counts sweeps run, so a reactor too busy to run
    them only delays expiry). With a C{timeout} of C{None} (or 0) nothing runs and nothing
    expires.
    """

    def __init__(
        self, timeout: float | None, check: Callable[[], None], clock: IReactorTime | None = None
    ) -> None:
        self.timeout = timeout or None
        self.count = 0
        self._check = check
        self._call: LoopingCall | None = None
        if self.timeout is not None:
            self.steps = max(MIN_SWEEPS_PER_TIMEOUT, math.ceil(self.timeout / MAX_SWEEP_INTERVAL))
            self.interval = self.timeout / self.steps
            self._call = LoopingCall(self._run)
            if clock is not None:
                self._call.clock = clock

    def start(self) -> None:
        if self._call is not None and not self._call.running:
            self._call.start(self.interval, now=False)

    def stop(self) -> None:
        if self._call is not None and self._call.running:
            self._call.stop()

    def expired(self, stamp: int) -> bool:
        return stamp < self.count - self.steps

    def _run(self) -> None:
        self.count += 1
        self._check()
