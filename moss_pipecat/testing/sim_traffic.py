"""Calls driven through an engine in virtual time: arrivals, turns, pauses, and what each
listener would have measured (time to first audio, gaps between frames).

``run_traffic`` drives the engine's core on a ``VirtualClock`` (``testing.core_driver``), so a
simulated device (``testing.simulated_device``) serves hundreds of calls in a few seconds of
wall time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from moss_pipecat.engine import MossEngine
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import AddUserTurn, Close, EndText, StartTurn
from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.testing.core_driver import CoreDriver, Stamped


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


def run_traffic(engine: MossEngine, clock: VirtualClock, plans: list[CallPlan]) -> TrafficResult:
    """Serves ``plans`` on ``engine`` (not started: its core is driven here) until every call
    has ended; returns what the callers measured."""
    driver = CoreDriver(engine, clock)
    core, layout, at, text_id = driver.core, driver.layout, driver.at, driver.text_id
    out = TrafficResult()
    open_turns: set[str] = set()

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
        turn_id = core.execute(sid, StartTurn(Stamped(on_item), max_frames=n, min_frames=n))
        open_turns.add(sid)
        core.execute(sid, EndText(turn_id, (text_id,) * plan.turns[k]))

    def arrive(i: int, plan: CallPlan) -> None:
        sid = f"call-{i}"
        if not driver.admit(sid, seed=i):
            out.refused += 1
            return
        out.admitted += 1
        start_turn(sid, plan, 0)

    for i, plan in enumerate(plans):
        at(plan.start, lambda i=i, plan=plan: arrive(i, plan))
    out.virtual_s = driver.run()
    out.tick_prefill_rows, out.tick_s = driver.tick_prefill_rows, driver.tick_s
    out.starved += len(open_turns)
    return out


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank; nan for no data), as the GPU benchmarks compute it."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
