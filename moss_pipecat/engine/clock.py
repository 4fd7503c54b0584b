"""The engine's clock: every time the engine reads (deadlines, lookahead, TTFA, call costs)
comes from one ``Clock`` object, so a simulated device can run the real scheduler in virtual
time (``VirtualClock``) while a real engine reads the monotonic clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on a clock that never goes back."""

    def now(self) -> float: ...


class MonotonicClock:
    """Wall time (``time.monotonic``): the engine's clock on a real device."""

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """Time that moves only when told: a simulated device advances it by what each call
    would cost, and a traffic driver jumps it to the next event."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock never goes back (advance by {seconds})")
        self._t += seconds

    def advance_to(self, t: float) -> None:
        """Moves to ``t`` if it lies ahead (the past is left alone)."""
        self._t = max(self._t, float(t))


class SleepingClock(MonotonicClock):
    """Wall time that a traffic driver "advances" by sleeping: the driver written for a
    ``VirtualClock`` (``testing.core_driver``) runs a real device in real time."""

    def advance(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def advance_to(self, t: float) -> None:
        self.advance(t - self.now())
