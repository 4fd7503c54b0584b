"""What an interruption keeps and drops among the replies, cutting the engine history back to
what the user heard, and when a reply may open its engine turn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from moss_pipecat.errors import MossError
from moss_pipecat.service.reply import Reply


@dataclass
class InterruptionPlan:
    """The replies an interruption keeps and drops.

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

    def heard(self, now_ns: int) -> dict[str, int]:
        """The frames each dropped reply keeps (by context id), the interruption having been
        passed on at ``now_ns``: ``heard_frames``, the one answer the engine history and the
        replies' trace spans both take."""
        return {r.context_id: heard_frames(r, now_ns) for r in self.dropped}


def plan_interruption(replies: list[Reply]) -> InterruptionPlan:
    """Splits ``replies`` (oldest first) and re-chains the kept ones to speak in order."""
    kept = [r for r in replies if not r.interruptible]
    for i, reply in enumerate(kept):
        reply.previous = kept[i - 1] if i else None
    sealed = max((i for i, r in enumerate(replies) if r in kept and r.started), default=-1)
    return InterruptionPlan(
        kept=kept,
        dropped=[r for r in replies if r.interruptible],
        newest=[r for r in replies[sealed + 1 :] if r.interruptible],
    )


async def cut_to_heard(
    replies: list[Reply],
    session: Any | None,
    heard: dict[str, int],
    on_cut: Callable[[Reply, Any], Awaitable[None]],
    push_error: Callable[..., Awaitable[None]],
) -> None:
    """Closes the engine turns of stopped replies (oldest first), keeping what was heard.

    Replies newer than the one playing were not heard at all; the playing one keeps the frames
    ``heard`` gives it; older ones were heard in full (the engine cuts only its newest turns). A
    reply whose engine turn was being opened is waited for and closed, so no turn is left
    without an owner.

    Args:
        replies: the replies whose turns may be cut (``InterruptionPlan.newest``), their
            tasks already cancelled.
        session: the conversation's session (None: closed, nothing to cut).
        heard: each reply's frames kept, by context id: ``heard_frames`` at the moment the
            interruption was passed on to the transport (the same answer the reply's trace
            span records).
        on_cut: called with each reply and the summary of what its turn kept.
        push_error: the service's ``push_error`` (the engine refused a cut).
    """
    playing = next((r for r in reversed(replies) if r.baseline_ns is not None), None)
    for reply in reversed(replies):
        turn = reply.turn
        if turn is None and reply.opening is not None:
            try:
                turn = await reply.opening
            except MossError:
                turn = None
        if turn is not None and session is not None:
            turn.cancel()
            try:
                summary = await session.interrupt(
                    heard[reply.context_id] if reply is playing else 0
                )
            except MossError as e:
                await push_error(error_msg=f"MOSS TTS: interrupt failed: {e}", exception=e)
                summary = None
            if summary is not None:
                await on_cut(reply, summary)
        if reply is playing:
            break  # the replies before it were heard in full


def heard_frames(reply: Reply, now_ns: int) -> int:
    """The frames of the reply playing at an interruption that MOSS keeps: those played by
    ``now_ns`` (``Reply.heard_frames``), but none from the frame of the first unit whose word
    frame pipecat has not pushed yet.

    Played frames alone match the word frames released by ``now_ns``, the moment the service
    passed the interruption on to the transport (each word frame is released once its frame
    has played, ``Reply.release_ns``; the transport drops the ones it still holds). The cap
    covers pipecat pushing a word late (its audio-context task behind the clock): that word
    never reaches the context (the interruption drops it), so MOSS keeps no frame from its own
    on. The engine keeps the units before the cut (``WordTimer.heard``): the same units as the
    word frames released, and never a frame that was not played. The reply's trace span takes
    this same count (``InterruptionPlan.heard``).

    What this cannot see (pipecat 1.14), and why it is not closed here: between ``now_ns`` and
    the moment pipecat's assistant aggregator handles the interruption, a word frame already
    passed on can still be lost or misfiled, and nothing of it comes back upstream:

    - dropped: an interruptible data frame waiting in a processor's queue when the
      InterruptionFrame (a SystemFrame, which overtakes it) arrives is discarded
      (``FrameProcessor`` resets its process queue: the output transport's and the
      aggregator's); the transport also empties its clock queue and cancels its clock task if
      it waits to push an interruptible frame, so a word whose PTS has passed but that a busy
      event loop has not pushed yet is dropped. MOSS keeps that word.
    - misfiled: a word frame the transport pushed just before the InterruptionFrame, still in
      the aggregator's input queue with it, is taken after it (SystemFrames first) and goes
      into the next assistant message. MOSS does not keep it in this turn.

    Holding word frames in the service does not help (they still cross those queues after the
    count is read), nor do uninterruptible word frames (none dropped, but every one still on
    its way is then misfiled). The aggregator does report what it wrote
    (``LLMContextAssistantTurnFrame``, upstream), but only after the cut must be made and only
    when the text is not empty (an empty one sends nothing, so it cannot be awaited), and the
    engine cannot re-cut a turn it has closed. Words reach the transport's clock queue long
    before their PTS (the engine runs ahead of playback), so these need the event loop held
    for longer than the gap between a word's PTS and ``now_ns``: rare, and off by that word.
    Closing it needs an engine command that trims the last assistant turn to a unit count
    (applied when that frame arrives before the next reply opens its turn), or pipecat
    reporting upstream which word frames its transport released.
    """
    heard = reply.heard_frames(now_ns)
    unpushed = reply.first_unpushed_frame()
    return heard if unpushed is None else min(heard, unpushed)


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
