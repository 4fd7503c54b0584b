"""Calls driven through an engine in virtual time: arrivals, turns, pauses, and what each
listener would have measured (time to first audio, gaps between frames).

``run_traffic`` runs the engine's core single-threaded (``execute`` between ``tick``s, as the
engine thread would) on a ``VirtualClock`` that only the device's calls and the waits between
events move, so a simulated device (``testing.simulated_device``) serves hundreds of calls in
a few seconds of wall time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from moss_pipecat.engine import MossEngine
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import AddUserTurn, Close, CreateSession, EndText, StartTurn
from moss_pipecat.engine.events import AudioChunk, Channel, TurnSummary
from moss_pipecat.errors import CapacityError


@dataclass(frozen=True)
class CallPlan:
    """One call: when it starts, and its assistant turns.

    Attributes:
        start: seconds (virtual) at which the conversation is created and its first turn's
            text arrives.
        turns: text tokens of each assistant turn (all of a turn's text arrives at once).
        pause_s: seconds between a turn's end and the next turn's text (the user speaking).
        user_frames: codec frames of the user's speech added before each later turn (0: none).
        frames: if set, each turn has exactly this many frames (EOS masked until then, then
            the cap), as in the GPU capacity benchmark; else the device draws turn lengths.
    """

    start: float
    turns: tuple[int, ...] = (24,)
    pause_s: float = 2.0
    user_frames: int = 0
    frames: int | None = None


@dataclass
class TrafficResult:
    """What the callers saw (seconds of virtual time)."""

    admitted: int = 0
    refused: int = 0
    ttfa_s: list[float] = field(default_factory=list)  # one per turn with audio
    gaps_s: list[float] = field(default_factory=list)  # between a turn's consecutive frames
    frames: int = 0
    stops: dict[str, int] = field(default_factory=dict)
    tick_prefill_rows: list[int] = field(default_factory=list)  # rows prefilled, per tick
    tick_s: list[float] = field(default_factory=list)  # virtual seconds, per working tick
    starved: int = 0  # turns that never got a first frame
    virtual_s: float = 0.0


class _Stamped(Channel):
    """A turn's channel that stamps what the engine puts in it with the virtual time."""

    def __init__(self, on_item: Callable[[object], None]) -> None:
        super().__init__()
        self._on_item = on_item

    def put(self, item: object) -> None:
        self._on_item(item)


def run_traffic(engine: MossEngine, clock: VirtualClock, plans: list[CallPlan]) -> TrafficResult:
    """Serves ``plans`` on ``engine`` (not started: its core is driven here) until every call
    has ended; returns what the callers measured."""
    core, layout = engine.core, engine.layout
    out = TrafficResult()
    events: list[tuple[float, int, Callable[[], None]]] = []
    seq = itertools.count()
    text_id = min(layout.im_start, layout.text_pad) - 1  # any ordinary text id
    open_turns: set[str] = set()

    def at(t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(events, (t, next(seq), fn))

    def start_turn(sid: str, plan: CallPlan, k: int) -> None:
        if k > 0 and plan.user_frames:
            frames = torch.zeros(plan.user_frames, layout.rvq, dtype=torch.int64)
            core.execute(sid, AddUserTurn((text_id,) * 4, frames))
        t_text = clock.now()
        stamps: list[float] = []

        def on_item(item: object) -> None:
            if isinstance(item, AudioChunk):
                stamps.append(clock.now())
                return
            if not isinstance(item, TurnSummary):
                return
            open_turns.discard(sid)
            out.stops[item.stop] = out.stops.get(item.stop, 0) + 1
            if stamps:
                out.ttfa_s.append(stamps[0] - t_text)
                out.gaps_s += [b - a for a, b in itertools.pairwise(stamps)]
                out.frames += len(stamps)
            else:
                out.starved += 1
            if k + 1 < len(plan.turns):
                at(clock.now() + plan.pause_s, lambda: start_turn(sid, plan, k + 1))
            else:
                at(clock.now(), lambda: core.execute(sid, Close()))

        n = plan.frames
        turn_id = core.execute(sid, StartTurn(_Stamped(on_item), max_frames=n, min_frames=n))
        open_turns.add(sid)
        core.execute(sid, EndText(turn_id, (text_id,) * plan.turns[k]))

    def arrive(i: int, plan: CallPlan) -> None:
        sid = f"call-{i}"
        try:
            core.execute(sid, CreateSession(seed=i))
        except CapacityError:
            out.refused += 1
            return
        out.admitted += 1
        start_turn(sid, plan, 0)

    for i, plan in enumerate(plans):
        at(plan.start, lambda i=i, plan=plan: arrive(i, plan))
    t_begin = clock.now()
    while True:
        while events and events[0][0] <= clock.now():
            heapq.heappop(events)[2]()
        rows, t0 = core.stats["prefill_rows"], clock.now()
        wait = core.tick()
        if wait == 0:
            out.tick_prefill_rows.append(core.stats["prefill_rows"] - rows)
            out.tick_s.append(clock.now() - t0)
            continue
        if not events:
            if wait is None:
                break
            clock.advance(wait)
            continue
        nxt = events[0][0]
        clock.advance_to(nxt if wait is None else min(clock.now() + wait, nxt))
    out.starved += len(open_turns)
    out.virtual_s = clock.now() - t_begin
    return out


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank; nan for no data), as the GPU benchmarks compute it."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
