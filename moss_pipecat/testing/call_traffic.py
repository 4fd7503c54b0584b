"""Phone-call traffic through an engine: calls arrive over time (Poisson), each alternating
user turns (uploaded speech + transcript) and bot replies whose text streams in at an LLM's
token rate, some cut by a barge-in; what every caller would measure.

``run_calls`` drives the engine's core on a clock that only the device's calls and the waits
between events move (``testing.core_driver``; ``VirtualClock`` with a simulated device); a
call's timeline follows the audio as it would play: the user speaks after the bot's reply has
played out (or from the barge-in), and the LLM's first token comes ``llm_ttft_s`` after the
user stops.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import torch

from moss_pipecat.engine import MossEngine
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import AddUserTurn, Close, Interrupt, PushText, StartTurn
from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.testing.core_driver import CoreDriver, Stamped


@dataclass(frozen=True)
class CallShape:
    """What a call sounds like (each draw uniform in its range, from the run's seed)."""

    user_s: tuple[float, float] = (1.0, 4.0)  # user speech per turn
    user_tokens_per_s: float = 3.0  # transcript tokens per second of speech
    think_s: float = 0.5  # the user's pause after the bot's reply has played
    llm_ttft_s: float = 0.35  # user stops -> the LLM's first token
    token_rate: float = 40.0  # the LLM's tokens per second
    token_chunk: int = 1  # tokens per push (one push per chunk / rate)
    reply_tokens: tuple[int, int] = (10, 60)
    barge_in: float = 0.2  # share of replies the user cuts
    barge_after: tuple[int, int] = (5, 30)  # frames heard before the cut
    # A reply's frame cap per text token (None: the engine's): random weights rarely say EOS.
    frames_per_token: float | None = None


@dataclass(frozen=True)
class Arrival:
    """A call: when it arrives, and its group (results are kept per group)."""

    start: float
    group: str = "calls"


@dataclass
class GroupResult:
    admitted: int = 0
    refused: int = 0
    ttfa_s: list[float] = field(default_factory=list)  # (text ready -> first audio), per reply
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (when, gap) per frame pair
    replies: int = 0
    barge_ins: int = 0


@dataclass
class CallsResult:
    groups: dict[str, GroupResult] = field(default_factory=dict)
    peak_calls: int = 0
    virtual_s: float = 0.0
    # Clock seconds of each tick that did work, and the seconds of them the host spent
    # waiting on the device (a real runner's ``device_wait_s``; None on a simulated one):
    # tick - wait is the engine's own host time.
    tick_s: list[float] = field(default_factory=list)
    device_wait_s: float | None = None

    def group(self, name: str) -> GroupResult:
        return self.groups.setdefault(name, GroupResult())


def poisson_arrivals(n: int, over_s: float, rng: random.Random, start: float = 0.0) -> list[float]:
    """``n`` arrival times of a Poisson process whose rate brings ``n`` calls in ``over_s``
    on average (exponential gaps; the last may fall a little after)."""
    t, out = start, []
    for _ in range(n):
        t += rng.expovariate(n / over_s)
        out.append(t)
    return out


def run_calls(
    engine: MossEngine,
    clock: VirtualClock,
    arrivals: list[Arrival],
    shape: CallShape,
    hang_up_s: float,
    measure_from_s: float = 0.0,
    seed: int = 0,
    cut_at_hang_up: bool = False,
) -> CallsResult:
    """Serves the calls until each has hung up (no new reply starts after ``hang_up_s``).
    TTFA and gaps are kept for replies whose text is ready at or after ``measure_from_s``.
    ``cut_at_hang_up``: every call hangs up at ``hang_up_s`` itself, a reply in flight kept as
    far as it got (a run in real time then lasts ``hang_up_s``, not up to a reply longer)."""
    driver = CoreDriver(engine, clock)
    core, layout, at, text_id = driver.core, driver.layout, driver.at, driver.text_id
    rng = random.Random(seed)
    out = CallsResult()
    live: set[str] = set()
    # sid -> (group, the reply in flight's state, its audio stamps): what a cut hang-up keeps
    inflight: dict[str, tuple[GroupResult, dict, list[float]]] = {}

    def keep(g: GroupResult, state: dict, stamps: list[float]) -> None:
        if state["ready"] is not None and state["ready"] >= measure_from_s and stamps:
            g.ttfa_s.append(stamps[0] - state["ready"])
            g.gaps += [(b, b - a) for a, b in itertools.pairwise(stamps)]

    def hang_up_all() -> None:
        for sid in sorted(live):
            g, state, stamps = inflight.pop(sid, (None, None, None))
            if state is not None and not state["done"]:
                state["done"] = True
                keep(g, state, stamps)
            core.execute(sid, Close())
        live.clear()
        driver.drop_events()

    def user_turn(sid: str, g: GroupResult) -> None:
        """The user speaks from now; the LLM's reply follows."""
        speech = rng.uniform(*shape.user_s)
        n = max(1, round(speech * shape.user_tokens_per_s))
        frames = torch.zeros(round(speech / FRAME_SECONDS), layout.rvq, dtype=torch.int64)

        def stopped() -> None:
            if sid in live:
                core.execute(sid, AddUserTurn((text_id,) * n, frames))
                at(clock.now() + shape.llm_ttft_s, lambda: reply(sid, g))

        at(clock.now() + speech, stopped)

    def reply(sid: str, g: GroupResult) -> None:
        if sid not in live:
            return
        if clock.now() >= hang_up_s:
            core.execute(sid, Close())
            live.discard(sid)
            return
        n = rng.randint(*shape.reply_tokens)
        cut = rng.randint(*shape.barge_after) if rng.random() < shape.barge_in else None
        stamps: list[float] = []
        state = {"ready": None, "done": False, "barged": False}

        def barge() -> None:
            if state["barged"] or sid not in live:
                return
            state["barged"] = True
            g.barge_ins += 1
            core.execute(sid, Interrupt(cut))
            user_turn(sid, g)

        def on_item(item: object) -> None:
            if isinstance(item, AudioChunk):
                stamps.append(clock.now())
                if len(stamps) == 1 and cut is not None:
                    at(stamps[0] + cut * FRAME_SECONDS, barge)
                return
            if not isinstance(item, TurnSummary) or state["done"]:
                return
            state["done"] = True
            g.replies += 1
            keep(g, state, stamps)
            if state["barged"]:
                return  # the barge-in started the user's turn
            if cut is not None and item.audio_frames > cut and stamps:
                return  # the barge-in comes while this audio plays
            state["barged"] = True  # nothing (more) to cut
            played = (stamps[0] if stamps else clock.now()) + item.audio_frames * FRAME_SECONDS
            at(max(clock.now(), played) + shape.think_s, lambda: user_turn(sid, g))

        cap = None if shape.frames_per_token is None else round(8 + shape.frames_per_token * n)
        turn = core.execute(sid, StartTurn(Stamped(on_item), max_frames=cap))
        inflight[sid] = (g, state, stamps)
        t0, pushed = clock.now(), 0
        delay = layout.delay
        for k in range(0, n, shape.token_chunk):
            ids = (text_id,) * min(shape.token_chunk, n - k)
            last = k + len(ids) >= n
            t = t0 + k / shape.token_rate
            if state["ready"] is None and (pushed + len(ids) >= delay or last):
                state["ready"] = t  # the engine can start this turn from here
            pushed += len(ids)
            at(t, lambda ids=ids, last=last: _push(sid, turn, ids, last))

    def _push(sid: str, turn: int, ids: tuple[int, ...], last: bool) -> None:
        if sid in live:
            core.execute(sid, PushText(turn, ids, done=last))

    def arrive(i: int, a: Arrival) -> None:
        sid, g = f"call-{i}", out.group(a.group)
        if not driver.admit(sid, seed=i):
            g.refused += 1
            return
        g.admitted += 1
        live.add(sid)
        out.peak_calls = max(out.peak_calls, len(live))
        at(clock.now() + shape.llm_ttft_s, lambda: reply(sid, g))  # the bot greets first

    for i, a in enumerate(arrivals):
        at(a.start, lambda i=i, a=a: arrive(i, a))
    if cut_at_hang_up:
        at(hang_up_s, hang_up_all)
    runner = core.runner
    waited = getattr(runner, "device_wait_s", None)
    out.virtual_s = driver.run()
    out.tick_s = driver.tick_s
    if waited is not None:
        out.device_wait_s = runner.device_wait_s - waited
    return out
