"""What an interruption keeps and drops among the replies, cutting the engine history back to
what the user heard (beside the frames, ``Rollbacks``), and when a reply may open its turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from moss_pipecat.errors import MossError
from moss_pipecat.service.reply import Reply


@dataclass(frozen=True)
class Heard:
    """What an interruption keeps of a reply: its first ``frames`` audio frames, and its first
    ``units`` units in the text (those the LLM context took; None: no context counts them, the
    units in the frames kept)."""

    frames: int
    units: int | None


@dataclass
class InterruptionPlan:
    """The replies an interruption keeps and drops, and (once ``decide`` is called) what each
    dropped reply keeps.

    Parameters:
        kept: the uninterruptible replies (pipecat keeps their audio contexts), oldest first,
            each chained to the kept one before it.
        dropped: the replies to stop.
        newest: the dropped replies whose engine turns can still be cut, oldest first: the
            engine cuts only its newest turns, so a dropped reply older than a kept one whose
            turn has started stays in the history whole.
    """

    kept: list[Reply]
    dropped: list[Reply]
    newest: list[Reply]
    context_counts: bool = False  # an assistant aggregator counts the units taken (the gate's)
    decided: dict[str, Heard] | None = None
    # The newest reply whose engine turn can be cut that the user was hearing, or had heard,
    # when the interruption passed (``decide``): it keeps what was heard, those after it
    # nothing, those before it everything.
    playing: Reply | None = None

    @classmethod
    def none(cls) -> InterruptionPlan:
        """No interruption: nothing to decide."""
        return cls(kept=[], dropped=[], newest=[])

    def dropped_reply(self, context_id: str) -> Reply | None:
        """The dropped reply speaking ``context_id`` (None: none)."""
        return next((r for r in self.dropped if r.context_id == context_id), None)

    @property
    def cut(self) -> list[Reply]:
        """The replies whose engine turns are cut: the one playing and those after it (all of
        them until ``decide``)."""
        playing = self.playing
        return self.newest[self.newest.index(playing) :] if playing else list(self.newest)

    def decide(self, now_ns: int) -> dict[str, Heard]:
        """What each dropped reply keeps (by context id), the interruption being passed on at
        ``now_ns``: the one answer the engine history, the LLM context and the replies' trace
        spans all take. Decided once (later calls return the first answer): from then on no
        word frame of a reply cut goes into the LLM context (``context_gate``).
        """
        if self.decided is None:
            # Pushed is not heard: a reply whose audio waits behind the one playing (queued in
            # the transport) starts later, and the one playing keeps only what was heard.
            started = [r for r in self.newest if r.start_ns is not None and r.start_ns <= now_ns]
            self.playing = started[-1] if started else None
            for reply in self.cut:
                reply.words_closed = True
            counts = self.context_counts
            self.decided = {r.context_id: heard(r, now_ns, counts) for r in self.dropped}
        return self.decided


class Rollbacks:
    """The interruptions whose engine cuts are under way, oldest first.

    A cut runs as a task of its own, never in the frame path: it may wait on the engine (a
    remote one reconnecting to a server that died), and meanwhile pipecat's system frames must
    pass the service (the next interruption, the bot's speaking frames, a cancel). Before, the
    next interruption waited behind the cut, and the replies queued ahead of it were spoken
    after it. Each cut starts once the one before ended (the engine cuts its newest turns);
    ``settled`` is set while none is under way: a reply opens its engine turn only then, so a
    cut cuts the turn it means to.
    """

    def __init__(self) -> None:
        self.settled = asyncio.Event()
        self.settled.set()
        self._plans: list[InterruptionPlan] = []
        self._tasks: list[asyncio.Task] = []

    def begin(self, plan: InterruptionPlan) -> None:
        """``plan`` is being passed on: replies wait until its cut (and any before) ended."""
        self._plans.append(plan)
        self.settled.clear()

    def dropped_reply(self, context_id: str) -> Reply | None:
        """The reply speaking ``context_id`` that an interruption under way dropped."""
        for plan in reversed(self._plans):
            if (reply := plan.dropped_reply(context_id)) is not None:
                return reply
        return None

    def cut(
        self,
        plan: InterruptionPlan,
        session: Any | None,
        on_cut: Callable[[str, Any], Awaitable[None]],
        push_error: Callable[..., Awaitable[None]],
        create_task: Callable[[Any], asyncio.Task],
    ) -> None:
        """Cuts the history for ``plan`` (``cut_to_heard``, whose arguments these are) once
        the cuts before it ended, as a task (``create_task``)."""
        before = self._tasks[-1] if self._tasks else None

        async def run() -> None:
            try:
                if before is not None:
                    await asyncio.wait([before])  # its failure is its own
                await cut_to_heard(plan, session, on_cut, push_error)
            finally:
                self.end(plan)

        task = create_task(run())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def end(self, plan: InterruptionPlan) -> None:
        """``plan`` needs no more cutting (cut, or abandoned before it could be)."""
        if plan in self._plans:
            self._plans.remove(plan)
        if not self._plans:
            self.settled.set()

    async def wait(self) -> None:
        """Until every cut under way has ended."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    @property
    def tasks(self) -> list[asyncio.Task]:
        return list(self._tasks)


def plan_interruption(replies: list[Reply], context_counts: bool = False) -> InterruptionPlan:
    """Splits ``replies`` (oldest first) and re-chains the kept ones to speak in order;
    ``context_counts``: an assistant aggregator downstream counts the units taken
    (``ContextGate.attached``)."""
    kept = [r for r in replies if not r.interruptible]
    for i, reply in enumerate(kept):
        reply.previous = kept[i - 1] if i else None
    sealed = max((i for i, r in enumerate(replies) if r in kept and r.started), default=-1)
    return InterruptionPlan(
        kept=kept,
        dropped=[r for r in replies if r.interruptible],
        newest=[r for r in replies[sealed + 1 :] if r.interruptible],
        context_counts=context_counts,
    )


async def cut_to_heard(
    plan: InterruptionPlan,
    session: Any | None,
    on_cut: Callable[[str, Any], Awaitable[None]],
    push_error: Callable[..., Awaitable[None]],
) -> None:
    """Closes the engine turns of the plan's stopped replies (newest first: the engine cuts its
    newest turn), keeping what was heard.

    Replies newer than the one playing were not heard at all; the playing one keeps what
    ``plan.decided`` gives it; older ones were heard in full (the engine cuts only its newest
    turns). A reply whose engine turn was being opened is waited for and closed, so no turn is
    left without an owner.

    Args:
        plan: the interruption, decided (``InterruptionPlan.decide``); its replies' tasks
            already cancelled.
        session: the conversation's session (None: closed, nothing to cut).
        on_cut: called with each reply's context id and the summary of what its turn kept.
        push_error: the service's ``push_error`` (the engine refused a cut).
    """
    playing, decided = plan.playing, plan.decided or {}
    for reply in reversed(plan.cut):
        turn = reply.turn
        if turn is None and reply.opening is not None:
            try:
                turn = await reply.opening
            except MossError:
                turn = None
        if turn is not None and session is not None:
            turn.cancel()
            kept = decided[reply.context_id] if reply is playing else Heard(0, None)
            try:
                # Named: a turn already gone (its connection's departure cut it away) is
                # never confused with the one before it.
                summary = await session.interrupt(kept.frames, kept.units, turn.turn_id)
            except MossError as e:
                await push_error(error_msg=f"MOSS TTS: interrupt failed: {e}", exception=e)
                summary = None
            if summary is not None:
                kept = f"{summary.heard_frames}/{summary.audio_frames} frames"
                logger.debug(
                    f"interrupted reply {reply.context_id}: kept {kept} ({summary.spoken_text!r})"
                )
                await on_cut(reply.context_id, summary)


def heard(reply: Reply, now_ns: int, context_counts: bool) -> Heard:
    """What an interruption passed on at ``now_ns`` keeps of ``reply``.

    Units: those the LLM context took (``Reply.taken``, counted by the context gate, and the
    units whose text the last of them carried: ``Reply.covered``), when an assistant
    aggregator downstream counts them; the gate lets no later one in, so the context holds
    exactly these. Frames: those played by ``now_ns`` (``Reply.heard_frames``), but none
    from the frame of the first unit the context did not take: that word is not in the context
    (on its way, pipecat's queues drop it or file it behind the interruption, where the gate
    keeps it out), so MOSS keeps none of its audio either. Units are released once their frame
    has played (``Reply.release_ns``), so those taken lie in frames played, give or take the
    one frame a late push can shift. The reply's trace span takes the same frame count.

    With no context counting units, the frames stop at the first unit whose word frame has not
    passed the service, and the engine keeps the units in the frames kept (``WordTimer.heard``).
    """
    frames = reply.heard_frames(now_ns)
    units = reply.covered(reply.taken if context_counts else reply.passed)
    first_out = reply.unit_frame(units)
    if first_out is not None:
        frames = min(frames, first_out)
    return Heard(frames, units if context_counts else None)


async def keep_heard_at_loss(reply: Reply, session: Any) -> None:
    """Ends the engine turn of a reply that failed (its server lost, most often) keeping what
    was heard of it: every frame the reply pushed, for nothing stops their playout (only an
    interruption would, and it decides again, with less); the units placed in them
    (``WordTimer.heard``), whose word frames go into the LLM context as those frames play.
    A session that lost its server keeps that much in the history it restores."""
    heard = Heard(reply.frames, None)
    turn_id = None if reply.turn is None else reply.turn.turn_id
    with contextlib.suppress(MossError):
        await session.interrupt(heard.frames, heard.units, turn_id)


async def wait_for_turn(reply: Reply, settled: asyncio.Event) -> None:
    """Returns once the reply may open its engine turn.

    One engine turn at a time per conversation; replies speak in order, each whole (a
    TTSSpeakFrame during a streaming reply waits for its end). An interruption re-chains the
    replies it keeps (``previous``) and clears ``settled`` until the engine is rolled back.
    """
    while True:
        previous = reply.previous
        if previous is not None and not previous.finished.is_set():
            await previous.finished.wait()
        elif not settled.is_set():
            await settled.wait()
        else:
            return
