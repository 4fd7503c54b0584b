"""What every MOSS pipecat TTS service does, whatever runs the model (local engine or server).

Token streaming: every piece of LLM text goes straight into the session's open MOSS turn, and
each 80 ms frame is pushed as soon as the engine makes it. One bot reply is one pipecat audio
context and one engine turn. The session keeps the whole conversation acoustically: the bot's
turns as heard and the user's turns (captured input audio + transcript), so the voice stays
consistent; on an interruption the engine rolls back to what the user actually heard.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.errors import MossError
from moss_pipecat.service import pipecat_compat as compat
from moss_pipecat.service.context_gate import ContextGate
from moss_pipecat.service.interruption import (
    InterruptionPlan,
    Rollbacks,
    keep_heard_at_loss,
    plan_interruption,
    wait_for_turn,
)
from moss_pipecat.service.phases import ReplyPhase
from moss_pipecat.service.refusal import open_or_refuse
from moss_pipecat.service.reply import (
    MAX_TRACKED_REPLIES,
    HeardClock,
    Reply,
    SpokenWordsEnd,
    output_transport_downstream,
)
from moss_pipecat.service.resampling import engine_frames, resampled
from moss_pipecat.service.settings import MossTTSSettings, SessionSettings, default_settings
from moss_pipecat.service.tracing import ReplyTracer
from moss_pipecat.service.tts_options import streams_tokens, tts_service_kwargs
from moss_pipecat.service.unspoken import UnspokenReplies
from moss_pipecat.service.user_audio import UserUtterance
from moss_pipecat.service.user_turns import UserTurns
from moss_pipecat.service.word_order import SEQUENCED
from moss_pipecat.service.written import WRITTEN, WrittenText
from moss_pipecat.speech import fields as F


class MossTTSServiceBase(TTSService):
    """Streaming MOSS-TTS-Realtime with acoustic turn history and interruption rollback.

    Subclasses say where the conversation lives: ``_open_session`` returns an object with the
    ``moss_pipecat.engine.session.Session`` API (start_turn, interrupt, set_sampling,
    set_limits, reset, close), ``_add_user_audio_turn`` and ``_set_voice`` send the user's
    speech and a reference voice to it, and ``_pcm_rate`` is the rate of the PCM it returns.

    Args:
        context: the pipeline's ``LLMContext``; the user's transcript for the acoustic user
            turn is read from it (a ``TranscriptionFrame`` reaching this service works too).
        capture_user_audio: keep the user's speech (input audio between user started/stopped
            speaking) in the model's context, with its transcript.
        user_audio_max_s: longest user turn kept (the most recent audio).
        output_latency_s: playback delay (a device buffer) after the transport reports the
            bot speaking: the heard clock starts that much later.
        voice_dir: where voice files named in runtime settings updates (from a client, e.g.
            RTVI: never any host file) are read from; None: none. ``settings`` are trusted.
        settings: ``MossTTSSettings``.
        **kwargs: for ``TTSService`` (sample_rate, text_transforms, ...).

    What was heard has one clock (``HeardClock``, ``service/reply.py``): a word frame comes out
    once its frame has played; MOSS's history keeps the units pipecat's assistant aggregator
    took, and no later one gets in (``service/context_gate.py``). Tracing: ``service/tracing.py``.
    Event handler ``on_reply_interrupted(service, context_id, summary)``: a reply was cut to
    what the user heard (``summary.spoken_text``: what the history kept).
    """

    Settings = MossTTSSettings

    def __init__(
        self,
        *,
        model: str | None = None,
        context: Any | None = None,
        capture_user_audio: bool = True,
        user_audio_max_s: float = 30.0,
        output_latency_s: float = 0.0,
        voice_dir: str | os.PathLike | None = None,
        settings: MossTTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        defaults = default_settings(model, settings)
        options = tts_service_kwargs(kwargs)
        super().__init__(settings=defaults, **options)
        self._sentences = not streams_tokens(options)  # pipecat hands over whole sentences
        self._user_turns = UserTurns(context, capture_user_audio, user_audio_max_s)
        self._session: Any | None = None
        self._replies: dict[str, Reply] = {}
        self._order: list[Reply] = []  # oldest first; the newest is the last to speak
        self._session_settings = SessionSettings(defaults, voice_dir)  # what the session lacks
        self._clock = HeardClock(  # what was heard, when
            round(F.real("output_latency_s", output_latency_s, 0.0, 60.0) * 1e9),
            now=lambda: self.get_clock().get_time(),
            release_words=self.add_word_timestamps,
            close_reply=self._close_reply,
        )
        self._rollbacks = Rollbacks()  # the engine cuts of interruptions, beside the frames
        self._interrupting = InterruptionPlan.none()  # the one passing the service, if any
        self._context_gate = ContextGate()  # what of each reply the LLM context took
        self._tracer = ReplyTracer(self, attributes=self._trace_attributes)
        self._written = WrittenText(keep=self._sentences)  # whole characters, sentences' seams
        self._unspoken = UnspokenReplies(self._written.skipped_seam)
        # (service, context_id, TurnSummary): a reply was cut to what the user heard.
        compat.register_event(self, "on_reply_interrupted")

    # ================================================================== lifecycle
    def can_generate_metrics(self) -> bool:
        return True

    @property
    def supports_processing_metrics(self) -> bool:
        """False: ``run_tts`` hands text to the engine and returns (TTFB/TTFA time the audio)."""
        return False

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._tracer.configure(setup.enable_tracing, setup.tracing_context)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self._clock.playback_reported = output_transport_downstream(self)
        self._context_gate.attach(self)
        if self._session is None:  # else a StopFrame kept it running: the conversation goes on
            self._session = await open_or_refuse(self, self._open_session)

    # ---- what subclasses provide ------------------------------------------------------------
    async def _open_session(self) -> Any:
        raise NotImplementedError

    async def _reach_engine(self) -> None:
        """Before a reply uses the session: reaches the engine (remote: connects) or raises."""

    async def _reply_failed(self, error: MossError, category: ErrorCategory | None = None) -> None:
        await self.push_error(f"MOSS TTS reply failed: {error}", exception=error, category=category)

    async def _after_close(self) -> None:
        """Called once the session is closed (e.g. to stop an engine the service owns)."""

    @property
    def _pcm_rate(self) -> int:
        raise NotImplementedError

    async def _add_user_audio_turn(self, transcript: str, utterance: UserUtterance) -> None:
        raise NotImplementedError

    async def _set_voice(self, voice: str | None) -> None:
        raise NotImplementedError

    def _trace_attributes(self) -> dict[str, Any]:
        return {}  # what a subclass adds to each reply's span (as its engine turn opens)

    async def stop(self, frame: EndFrame) -> None:
        # pipecat waits for the audio contexts to end before it ends the LLM reply in progress.
        for reply in [r for r in self._order if not r.flushed]:
            await self.flush_audio(reply.context_id)
        await compat.stop_through_interruptions(self, partial(super().stop, frame))
        await self._shutdown(graceful=True)

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._shutdown(graceful=False)

    async def _shutdown(self, *, graceful: bool) -> None:
        if graceful:
            await self._rollbacks.wait()  # the history is cut before the session closes
        self._tracer.close(graceful=graceful)
        self._context_gate.detach()
        for task in [r.task for r in self._order if r.task] + self._rollbacks.tasks:
            await self.cancel_task(task)
        self._replies.clear()
        self._order.clear()
        if self._session is not None:
            try:
                await self._session.close()
            except MossError as e:
                logger.debug(f"{self}: closing session: {e}")
            self._session = None
        await self._after_close()

    async def history_settled(self) -> None:
        """Returns once every interruption so far has cut the history back to what was heard."""
        await self._rollbacks.wait()

    async def reset_conversation(self) -> None:
        """Forgets the conversation's turns (keeps the voice), after the cuts under way."""
        await self._rollbacks.wait()
        if self._session is not None:
            await self._session.reset()

    # ================================================================== settings
    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        for refuse in (SessionSettings.refuse_model_change, SessionSettings.refuse_bad_values):
            if (error := refuse(delta, self.settings)) is not None:
                await self.push_error(error_msg=f"MOSS TTS: {error}", exception=error)
        changed = await super()._update_settings(delta)
        self._session_settings.updated(changed)
        return changed

    async def _apply_settings(self) -> None:
        """Brings the session up to the settings (see ``SessionSettings.apply``)."""
        await self._session_settings.apply(
            self._session, self.settings, self._set_voice, self.push_error
        )

    # ================================================================== frames
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            return await self._roll_back_to_heard(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            await self._clock.bot_started_speaking(self._order)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._clock.bot_speaking = False
            self._tracer.playback_stopped()
        elif isinstance(frame, WRITTEN):  # the LLM's text, before pipecat aggregates it
            self._written.passing(frame)
        else:
            self._user_turns.on_frame(frame)
        await super().process_frame(frame, direction)

    async def push_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        if direction == FrameDirection.DOWNSTREAM:
            self._unspoken.passing(frame)  # a skipped reply's sentences: spaced as written
            if isinstance(frame, InterruptionFrame):  # what was heard, as it passes
                self._interrupting.decide(self.get_clock().get_time())
        if isinstance(frame, SpokenWordsEnd):
            if (reply := self._replies.get(frame.context_id)) is not None:
                reply.move(ReplyPhase.DONE)
            return  # ours alone
        if isinstance(frame, SEQUENCED):
            cid = frame.context_id or ""  # (a reply being stopped is no longer in _replies)
            reply = self._replies.get(cid) or self._rollbacks.dropped_reply(cid)
            if reply is not None:
                for f in reply.text_frames_due(frame):
                    self._tracer.frame_pushed(f)
                    await super().push_frame(f, direction)
                return
        if isinstance(frame, TTSAudioRawFrame) and frame.context_id in self._replies:
            await self._clock.audio_pushed(self._replies[frame.context_id], engine_frames(frame))
        self._clock.stamp_boundary(frame)  # a reply's start waits behind the last one's words
        self._tracer.frame_pushed(frame)
        await super().push_frame(frame, direction)

    async def append_to_audio_context(self, context_id: str | None, frame: Any) -> None:
        if (reply := self._replies.get(context_id or "")) is not None:
            reply.match_order.queued(frame)  # pipecat's sequencer queues its text frames here
        await super().append_to_audio_context(context_id, frame)

    # ================================================================== synthesis
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Hands a piece of the reply's text to its engine turn (audio arrives separately).
        Never waits: a reply whose engine turn is not open yet keeps the text until it is."""
        reply = self._replies.get(context_id)
        if reply is None:
            if self._session is None:
                yield ErrorFrame(error="MOSS TTS: the TTS session is not running")
                return
            reply = self._new_reply(context_id)
        if reply.takes_text:  # else its text ended (the model ended it, or its text failed)
            await self.start_tts_usage_metrics(text)  # pipecat counts streamed tokens itself
            self._tracer.text_added(reply, text)
            text = reply.next_text(text, self._written.seam if self._sentences else None)
            if reply.turn is None:
                reply.pending.append(text)
            else:
                await self._feed(reply, text)
            if context_id != compat.turn_context_id(self):
                # Text of no LLM reply or speak frame (a bare AggregatedTextFrame): nothing will
                # end it, so it is one whole utterance, its sentence ended as pipecat ends one.
                await compat.end_pending_sentence(self, context_id)
                await self.flush_audio(context_id)
        yield None

    async def _feed(self, reply: Reply, text: str) -> bool:
        """Pushes text into the reply's open turn; bad text gives an ErrorFrame and the reply
        speaks what it has."""
        if reply.turn.summary is not None:
            return False  # the model already ended it: what it did not say is dropped
        try:
            reply.turn.push_text(text)
            return True
        except MossError as e:
            await self.push_error(error_msg=f"MOSS TTS: {e}", exception=e)
            await self._end_text(reply)
            return False

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The reply's text is complete: the engine turn speaks the rest and ends."""
        reply = self._replies.get(context_id or self.get_active_audio_context_id() or "")
        if reply is not None:
            reply.flushed = True
            await self._end_text(reply)
            await self._close_reply(reply)
        elif context_id and self.audio_context_available(context_id):
            # Opened by pipecat, spoken by no reply (written off, no session): ends now, not idle.
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def _end_text(self, reply: Reply) -> None:
        """No more text goes into the reply's open turn (before it opens, ``flushed`` says so
        and ``_speak`` ends it once the held text is fed)."""
        if reply.phase is not ReplyPhase.FEEDING:
            return
        reply.move(ReplyPhase.TEXT_ENDED)
        turn = reply.turn
        if turn.summary is None:
            try:
                turn.end_text()
            except MossError as e:
                await self.push_error(error_msg=f"MOSS TTS: {e}", exception=e)

    def _new_reply(self, context_id: str) -> Reply:
        # pipecat's record says if an interruption may drop it (TTSSpeakFrame may not).
        previous = self._order[-1] if self._order else None
        interruptible = compat.context_interruptible(self, context_id)
        reply = Reply(context_id, previous=previous, interruptible=interruptible)
        self._replies[context_id] = reply
        self._order.append(reply)
        while len(self._order) > MAX_TRACKED_REPLIES and self._order[0].closed:
            self._replies.pop(self._order.pop(0).context_id, None)
        self._tracer.reply_started(reply)
        reply.task = self.create_task(self._speak(reply), f"moss-reply-{context_id}")
        return reply

    async def _speak(self, reply: Reply) -> None:
        """Opens the reply's engine turn once the conversation is free, feeds it, reads it."""
        try:
            await wait_for_turn(reply, self._rollbacks.settled)
            # No await since the wait: a rollback sees it opening or blocks it.
            reply.move(ReplyPhase.OPENING)
            # A reply that cannot reach the engine fails first: the next one sends what it kept.
            await self._reach_engine()
            await self._apply_settings()
            await self._user_turns.add_to_history(self._add_user_audio_turn, self.push_error)
            # Shielded: cancelled midway it would open unowned; the interruption closes it.
            reply.opening = asyncio.ensure_future(self._session.start_turn())
            reply.turn = await asyncio.shield(reply.opening)
            reply.move(ReplyPhase.FEEDING)
            self._tracer.turn_opened(reply)
            pending, reply.pending = reply.pending, []
            for piece in pending:
                if not await self._feed(reply, piece):
                    break
            if reply.flushed:  # pipecat ended the text while the turn was opening
                await self._end_text(reply)
            await self._read_reply(reply)
        except MossError as e:  # e.g. the engine server went away mid-reply
            await self._reply_failed(e)
            self._tracer.failed(reply, e)
            if reply.turn is not None and reply.turn.summary is None:  # none left unowned
                await keep_heard_at_loss(reply, self._session)
            reply.move(ReplyPhase.FAILED)
            if reply.frames == 0:  # else its words go out as its audio plays
                reply.held_words.clear()
            await self._close_reply(reply)
        finally:
            reply.finished.set()

    async def _read_reply(self, reply: Reply) -> None:
        """Moves the engine turn's frames and word times into the reply's audio context."""
        context_id, turn, out_rate = reply.context_id, reply.turn, self.sample_rate
        async for chunk, audio in resampled(turn, self._pcm_rate, out_rate, context_id):
            if audio is not None:
                await self.append_to_audio_context(context_id, audio)
            if chunk is not None:  # None: the resampler's tail
                reply.frames += 1
                await self._clock.add_words(reply, chunk.words)
        summary = turn.summary
        await self._end_text(reply)  # text after the model ended a reply is dropped
        if summary.stop == "error":
            await self.push_error(
                error_msg=f"MOSS TTS turn failed: {summary.error}", exception=summary.error
            )
            self._tracer.failed(reply, summary.error)
        await self._clock.add_words(reply, summary.words)
        reply.move(ReplyPhase.READ)
        if reply.frames == 0:
            reply.held_words.clear()  # no audio, so no playback to wait for
        await self._close_reply(reply)

    async def _close_reply(self, reply: Reply) -> None:
        """Ends the reply's audio context once every word time it has is queued."""
        if not reply.ready_to_close:
            return
        if reply.frames > 0 and reply.start_ns is None:
            return  # words wait for playback to start; closing follows them
        reply.move(ReplyPhase.CLOSED)
        context_id = reply.context_id
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, SpokenWordsEnd(context_id))
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    # ================================================================== interruption
    async def _roll_back_to_heard(self, frame: InterruptionFrame, direction: FrameDirection):
        """Stops every interruptible reply, lets pipecat drop their contexts and pass the
        interruption on, then has the engine history cut back to what was heard when it passed
        (``InterruptionPlan.decide``), beside the frames (``Rollbacks``); uninterruptible
        replies speak on, in order."""
        plan = self._interrupting = plan_interruption(self._order, self._context_gate.attached)
        self._order, self._replies = plan.kept, {r.context_id: r for r in plan.kept}
        # pipecat restarts its word clock unless an uninterruptible context plays; so do we.
        restart_clock = compat.interruption_restarts_word_clock(self)
        self._rollbacks.begin(plan)
        try:
            for reply in plan.dropped:
                reply.move(ReplyPhase.STOPPED)
                if reply.task is not None:
                    await self.cancel_task(reply.task)
            await super().process_frame(frame, direction)  # decides as it passes (push_frame)
            heard = plan.decide(self.get_clock().get_time())  # history, LLM context, span
            self._tracer.interrupted(plan.dropped, {k: h.frames for k, h in heard.items()})
        except BaseException:
            self._rollbacks.end(plan)
            raise
        finally:
            self._interrupting = InterruptionPlan.none()
        on_cut = partial(compat.call_event, self, "on_reply_interrupted")  # (context_id, summary)
        self._rollbacks.cut(plan, self._session, on_cut, self.push_error, self.create_task)
        if restart_clock and plan.dropped:
            self._clock.restart()
