"""The event loop both traffic drivers run (``sim_traffic``, ``call_traffic``): the engine's
core served single-threaded (``execute`` between ``tick``s, as the engine thread would) on a
clock that only the device's calls and the waits between events move (``VirtualClock``; a
``SleepingClock`` runs the same loop on a real device in real time), with the callers' events
run at their times in between."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import torch

from moss_pipecat.engine import MossEngine
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import CreateSession
from moss_pipecat.engine.events import Channel
from moss_pipecat.errors import CapacityError


class Stamped(Channel):
    """A turn's channel that hands what the engine puts in it to ``on_item`` at once (the
    clock's time then is when the caller got it)."""

    def __init__(self, on_item: Callable[[object], None]) -> None:
        super().__init__()
        self._on_item = on_item

    def put(self, item: object) -> None:
        self._on_item(item)


class CoreDriver:
    """Events at clock times, and the engine's core ticked between them.

    Attributes:
        core: the engine's core (the engine itself is never started: it is driven here).
        text_id: an ordinary text id, for turns whose words do not matter.
        tick_prefill_rows: rows prefilled by each tick that did work.
        tick_s: seconds each tick that did work took on the clock.
    """

    def __init__(self, engine: MossEngine, clock: VirtualClock) -> None:
        self.core, self.layout, self.clock = engine.core, engine.layout, clock
        self.text_id = min(self.layout.im_start, self.layout.text_pad) - 1
        self.tick_prefill_rows: list[int] = []
        self.tick_s: list[float] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()  # ties keep the order they were added in

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Runs ``fn`` once the clock reaches ``t`` (at once if it has)."""
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def drop_events(self) -> None:
        """Forgets every event not yet run (all callers have hung up: nothing left to wait
        for, which on a sleeping clock is real time)."""
        self._events.clear()

    def admit(self, sid: str, seed: int) -> bool:
        """Creates conversation ``sid``; False if the engine is full (the call is refused)."""
        try:
            self.core.execute(sid, CreateSession(seed=seed))
        except CapacityError:
            return False
        return True

    def run(self) -> float:
        """Runs events and ticks until neither has anything left; returns the clock seconds
        it took. Inside ``torch.inference_mode``, as the engine's own thread runs: the graphs'
        static buffers are inference tensors, updated in place (outside it every turn failed,
        H200 2026-12-04)."""
        with torch.inference_mode():
            return self._run()

    def _run(self) -> float:
        core, clock, events = self.core, self.clock, self._events
        t_begin = clock.now()
        while True:
            while events and events[0][0] <= clock.now():
                heapq.heappop(events)[2]()
            rows, t0 = core.stats["prefill_rows"], clock.now()
            wait = core.tick()
            if wait == 0:  # it worked: tick again at once
                self.tick_prefill_rows.append(core.stats["prefill_rows"] - rows)
                self.tick_s.append(clock.now() - t0)
                continue
            if not events:
                if wait is None:
                    break
                clock.advance(wait)
                continue
            nxt = events[0][0]
            clock.advance_to(nxt if wait is None else min(clock.now() + wait, nxt))
        return clock.now() - t_begin
