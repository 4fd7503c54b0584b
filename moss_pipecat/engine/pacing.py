"""How much prefill a tick may run, who gets it, and whether one more conversation fits.

A tick runs every decoding call's next frame plus the prefill rows of turns that are
starting. Unbounded, one tick can prefill every new turn at once while every running call
waits for its frame. Here:

* ``plan_prefill``: a per-tick row budget shared by all sessions; each gets at most one chunk,
  turns whose first audio is due go before re-prefills (a trimmed, moved or restored history
  fed again), oldest trigger first, and a re-prefill waits behind newer turns for at most
  ``REFEED_YIELD_S`` (so nothing starves).
* ``tick_budget``: with ``EngineConfig.frame_deadline_s``, the rows whose projected cost fits
  beside this tick's decode step, first frames and codec call within the deadline (costs
  learned online, ``engine.costs``).
* ``admits``: a new conversation is refused when a tick with every conversation speaking
  would no longer fit the deadline, or when the ticks measured at that many conversations
  (``TICK``: whole ticks, host work and the traffic's turn starts included) mostly would not.

Pure functions over plain values; the scheduler feeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from moss_pipecat.engine.costs import CostModel

# A re-prefill (seconds of history fed again) yields to turns that triggered at most this much
# after it: long enough for a burst of new turns to get their first audio, short enough that
# the re-prefill's own first audio is never pushed back indefinitely.
REFEED_YIELD_S = 1.0
# Rows a tick always may prefill, whatever the projection says: prefill keeps moving even when
# the decode step alone fills the deadline (admission keeps that from being the usual case).
# One row bucket of the graphed prefill.
PROGRESS_ROWS = 16
# The cost-model kind of a whole tick that stepped calls, by the conversations open then (the
# scheduler observes it); admission holds its mean + TICK_SPREAD standard deviations to the
# deadline: a frame gap is a tick, and the goal is on nearly every gap, not the average one.
# One deviation, not two: a size cell's spread also holds its sizes' trend (a cell spans a
# doubling); with two, admission refused calls that met the goal without it (simulated on the
# H200 costs: 178 calls met it instead of 206).
TICK = "tick"
TICK_SPREAD = 1.0
# Ticks are planned to this share of the deadline: the costs are averages and a tick's real
# cost scatters around them; planned to the whole deadline, every misprediction of a full
# tick is a late frame (simulated on the H200 costs: p99 gap 85 ms at 240 calls planned to
# 80 ms, 70 ms planned to 72).
PLANNED_SHARE = 0.9


@dataclass(frozen=True)
class PrefillWant:
    """One session's claim on this tick's prefill.

    Attributes:
        key: who (the scheduler's session).
        rows: rows it still has to feed before its first frame.
        since: when its turn triggered (clock seconds).
        refeed: True while it feeds history again (rows that were cached once).
    """

    key: Hashable
    rows: int
    since: float
    refeed: bool = False


def priority(wants: list[PrefillWant]) -> list[PrefillWant]:
    """Who prefills first: oldest trigger first, a re-prefill as if it triggered
    ``REFEED_YIELD_S`` later (``sorted`` is stable: ties keep the scheduler's rotation)."""
    return sorted(
        (w for w in wants if w.rows > 0),
        key=lambda w: w.since + (REFEED_YIELD_S if w.refeed else 0.0),
    )


def plan_prefill(wants: list[PrefillWant], budget: int | None, chunk: int) -> dict[Hashable, int]:
    """Rows each session prefills this tick: at most ``chunk`` each, ``budget`` in all (None:
    unbounded), in ``priority`` order. Sessions left out (or cut short) go on next tick."""
    if budget is None:
        return {w.key: min(w.rows, chunk) for w in wants if w.rows > 0}
    plan, left = {}, budget
    for w in priority(wants):
        if left <= 0:
            break
        n = min(w.rows, chunk, left)
        plan[w.key] = n
        left -= n
    return plan


def tick_budget(
    costs: CostModel,
    deadline_s: float | None,
    cap: int | None,
    decoding: int,
    wants: list[PrefillWant],
    chunk: int,
    codec: bool,
    overlap: bool = False,
    replay: Callable[[int], int] = int,
) -> int | None:
    """Prefill rows this tick may run (None: unbounded).

    With a deadline and calls decoding, sessions are taken in ``priority`` order while the
    projected tick still fits: the decode step (the running calls and every turn whose
    prefill ends here, which steps in the same tick), those turns' first frames, the codec
    calls (the first frames', then every frame's) and the prefill itself. Then as many rows
    of the next session as still fit.

    Args:
        costs: the learned call costs.
        deadline_s: the frame deadline of every decoding call (None: no adaptive budget).
        cap: the static per-tick cap (``EngineConfig.prefill_budget_rows``; None: none).
        decoding: calls that step this tick.
        wants: the sessions that have rows to prefill; chunk: rows per session per tick.
        codec: whether frames are decoded to PCM (a codec call per tick).
        overlap: the codec runs beside the next decode step (``EngineConfig.overlap_codec``).
        replay: the batch a call over n calls runs at (``ModelRunner.batch_of``: its graph
            bucket), where the device calls are priced; the costs are learned at it too.
    """
    if deadline_s is None or decoding == 0 or not costs.knows("prefill"):
        return cap  # no running call waits on this tick / the first prefill teaches its cost
    deadline_s *= PLANNED_SHARE
    limit = cap if cap is not None else 1 << 30

    def fixed(starting: int) -> float:
        frames = replay(decoding + starting)  # first frames: delivered (and decoded) apart
        if overlap:
            return overlapped(costs, decoding, starting, codec, replay)
        return _sum(
            costs.predict("decode", frames),
            costs.predict("first_frame", replay(starting)),
            costs.predict("codec", frames) if codec else 0.0,
            costs.predict("codec", replay(starting)) if codec else 0.0,
        )

    rows = starting = 0
    for w in priority(wants):
        n = min(w.rows, chunk)
        ends = n == w.rows  # its prefill ends this tick: a first frame and a step too
        total = rows + n
        if total > limit or _sum(costs.predict("prefill", total), fixed(starting + ends)) > (
            deadline_s
        ):
            break
        rows, starting = total, starting + ends
    spare = deadline_s - fixed(starting)
    rows = max(rows, costs.largest_within("prefill", spare, limit) or 0)  # part of the next
    return max(rows, min(PROGRESS_ROWS, limit))


def admits(
    costs: CostModel,
    deadline_s: float | None,
    conversations: int,
    codec: bool,
    overlap: bool = False,
    replay: Callable[[int], int] = int,
) -> bool:
    """Whether ``conversations`` (counting the new one) can all speak at once within the
    deadline in a tick that also starts a turn (the least prefill a tick always runs, and
    its first frame), and the ticks measured at that many conversations (``TICK``) stay
    within it. The first is a projection of device calls; the second sees what it misses:
    several turns starting in most ticks under traffic, host work, the codec stream slowing
    the decode step. Device calls are priced at the batch they run at (``replay``, see
    ``tick_budget``). True while the costs are unknown."""
    if deadline_s is None:
        return True
    deadline_s *= PLANNED_SHARE
    measured = costs.predict(TICK, conversations, TICK_SPREAD)
    if measured is not None and measured > deadline_s:
        return False
    if not costs.knows("decode"):
        return True
    if overlap:  # the new conversation's turn starts among them
        tick = overlapped(costs, conversations - 1, 1, codec, replay)
        return _sum(tick, costs.predict("prefill", PROGRESS_ROWS)) <= deadline_s
    every = replay(conversations)
    projected = _sum(
        costs.predict("decode", every),
        costs.predict("codec", every) if codec else 0.0,
        costs.predict("prefill", PROGRESS_ROWS),
        costs.predict("first_frame", replay(1)),
        costs.predict("codec", replay(1)) if codec else 0.0,
    )
    return projected <= deadline_s


def overlapped(
    costs: CostModel,
    decoding: int,
    starting: int,
    codec: bool,
    replay: Callable[[int], int] = int,
) -> float:
    """A tick's cost besides its prefill with the codec beside the decode step
    (``EngineConfig.overlap_codec``): the main stream runs the first frames and the decode
    step (every call and the ``starting`` turns); the codec stream runs the last tick's frames
    (about ``decoding``) from the tick's start, then, after the first frames' host wait, their
    own codec call; the tick ends when both have. Counting the prefill as if it hid none of
    the last tick's codec call makes this an upper bound. A learned decode step already holds
    any wait for the codec, so this holds for primed and learned costs alike. Calls priced
    at the batch they run at (``replay``)."""
    first = costs.predict("first_frame", replay(starting)) or 0.0
    step = costs.predict("decode", replay(decoding + starting)) or 0.0
    if not codec:
        return first + step
    last = costs.predict("codec", replay(decoding)) or 0.0
    own = costs.predict("codec", replay(starting)) or 0.0
    return max(first + step, max(last, first) + own)


def _sum(*costs: float | None) -> float:
    return sum(c for c in costs if c is not None)
