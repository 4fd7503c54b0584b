"""What every MOSS pipecat TTS service does, whatever runs the model (local engine or server).

Token streaming: every piece of LLM text goes straight into the session's open MOSS turn, and
each 80 ms frame is pushed as soon as the engine makes it. One bot reply is one pipecat audio
context and one engine turn. The session keeps the whole conversation acoustically: the bot's
turns as heard and the user's turns (captured input audio + transcript), so the voice stays
consistent; on an interruption the engine rolls back to what the user actually heard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.errors import InvalidInputError, MossError
from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.service.user_audio import UserAudioRecorder, UserUtterance
from moss_pipecat.service.word_times import DEFAULT_CHARS_PER_SECOND, WordTimer

MAX_TRACKED_REPLIES = 4


@dataclass
class MossTTSSettings(TTSSettings):
    """Runtime-updatable settings of ``MossTTSService`` (pipecat's settings pattern).

    Parameters:
        voice: path of a reference WAV to clone (None: the model's own voice).
        temperature, top_k, top_p, repetition_penalty: sampling (upstream defaults 0.8, 30,
            0.6, 1.1); greedy: argmax decoding (deterministic).
        seed: reseeds the session's sampler.
        context_budget: KV positions the conversation may use before its oldest turns are
            dropped (None: the engine's).
        lookahead_s: how far generation may run ahead of playback (None: the engine's).
    """

    temperature: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    top_k: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    top_p: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    repetition_penalty: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    greedy: bool | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    seed: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    context_budget: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    lookahead_s: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass
class _Reply:
    """One bot reply: a pipecat audio context and the engine turn speaking it."""

    turn: Any  # TurnStream (local) or its remote twin
    timer: WordTimer
    reader: asyncio.Task | None = None
    text_ended: bool = False
    frames: int = 0  # frames generated
    pushed: int = 0  # frames pushed downstream
    first_pushed_at: float | None = None


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
        output_latency_s: playback delay after the transport reports the bot speaking, taken
            off the heard-audio estimate on interruption.
        settings: ``MossTTSSettings``.
        **kwargs: for ``TTSService`` (sample_rate, text_transforms, ...).
    """

    Settings = MossTTSSettings
    _settings: MossTTSSettings

    def __init__(
        self,
        *,
        model: str | None = None,
        context: Any | None = None,
        capture_user_audio: bool = True,
        user_audio_max_s: float = 30.0,
        output_latency_s: float = 0.0,
        settings: MossTTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        defaults = MossTTSSettings(
            model=model or "OpenMOSS-Team/MOSS-TTS-Realtime",
            voice=None,
            language=None,
            temperature=0.8,
            top_k=30,
            top_p=0.6,
            repetition_penalty=1.1,
            greedy=False,
            seed=None,
            context_budget=None,
            lookahead_s=None,
        )
        if settings is not None:
            defaults.apply_update(settings)
        kwargs.setdefault("text_aggregation_mode", TextAggregationMode.TOKEN)
        super().__init__(
            push_text_frames=False,  # word frames follow playback: the context keeps what was heard
            push_start_frame=True,
            pause_frame_processing=False,
            settings=defaults,
            **kwargs,
        )
        self._llm_context = context
        self._capture_user_audio = capture_user_audio
        self._recorder = UserAudioRecorder(max_seconds=user_audio_max_s)
        self._output_latency_s = output_latency_s
        self._session: Any | None = None
        self._replies: dict[str, _Reply] = {}
        self._order: list[str] = []  # reply contexts, oldest first
        self._settings_dirty = True
        self._voice_dirty = is_given(defaults.voice) and defaults.voice is not None
        self._transcript: list[str] = []
        self._consumed_user_messages = 0
        self._bot_speaking_since: float | None = None
        self._last_played: str | None = None
        self._chars_per_second = DEFAULT_CHARS_PER_SECOND

    # ================================================================== lifecycle
    def can_generate_metrics(self) -> bool:
        return True

    @property
    def session(self) -> Any | None:
        """The session holding this pipeline's conversation (None before start)."""
        return self._session

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self._session = await self._open_session()

    # ---- what subclasses provide ------------------------------------------------------------
    async def _open_session(self) -> Any:
        raise NotImplementedError

    async def _after_close(self) -> None:
        """Called once the session is closed (e.g. to stop an engine the service owns)."""

    @property
    def _pcm_rate(self) -> int:
        raise NotImplementedError

    async def _add_user_audio_turn(self, transcript: str, utterance: UserUtterance) -> None:
        raise NotImplementedError

    async def _set_voice(self, voice: str | None) -> None:
        raise NotImplementedError

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._shutdown()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._shutdown()

    async def _shutdown(self) -> None:
        for reply in self._replies.values():
            if reply.reader is not None:
                await self.cancel_task(reply.reader)
        self._replies.clear()
        self._order.clear()
        if self._session is not None:
            try:
                await self._session.close()
            except MossError as e:
                logger.debug(f"{self}: closing session: {e}")
            self._session = None
        await self._after_close()

    async def reset_conversation(self) -> None:
        """Forgets the conversation's turns (keeps the voice)."""
        if self._session is not None:
            await self._session.reset()

    # ================================================================== settings
    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if changed:
            # Applied when the next reply starts, so a reply never changes voice midway.
            self._settings_dirty = True
            self._voice_dirty |= "voice" in changed
        return changed

    def _sampling(self) -> SamplingParams:
        s = self._settings
        return SamplingParams(
            temperature=s.temperature if s.temperature is not None else 0.8,
            top_k=s.top_k if s.top_k is not None else 30,
            top_p=s.top_p if s.top_p is not None else 0.6,
            repetition_penalty=s.repetition_penalty if s.repetition_penalty is not None else 1.1,
            greedy=bool(s.greedy),
        )

    async def _apply_settings(self) -> None:
        if not self._settings_dirty:
            return
        s = self._settings
        session = self._session
        await session.set_sampling(self._sampling(), s.seed if is_given(s.seed) else None)
        await session.set_limits(s.context_budget, s.lookahead_s)
        if self._voice_dirty:
            await self._set_voice(s.voice)
            self._voice_dirty = False
        self._settings_dirty = False

    @staticmethod
    def _voice_file(voice: str) -> Path:
        path = Path(voice).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"voice reference {voice!r} is not a file")
        return path

    # ================================================================== frames
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            await self._roll_back_to_heard()
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking_since = time.monotonic()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking_since = None
        elif self._capture_user_audio:
            if isinstance(frame, InputAudioRawFrame):
                self._recorder.add_audio(frame.audio, frame.sample_rate, frame.num_channels)
            elif isinstance(frame, UserStartedSpeakingFrame):
                self._recorder.user_started()
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._recorder.user_stopped()
            elif isinstance(frame, TranscriptionFrame) and frame.text.strip():
                self._transcript.append(frame.text.strip())
        await super().process_frame(frame, direction)

    async def push_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        if isinstance(frame, TTSAudioRawFrame) and frame.context_id in self._replies:
            reply = self._replies[frame.context_id]
            if reply.first_pushed_at is None:
                reply.first_pushed_at = time.monotonic()
            reply.pushed += 1
            self._last_played = frame.context_id
        await super().push_frame(frame, direction)

    # ================================================================== synthesis
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Feeds a piece of the reply's text to its engine turn (audio arrives separately)."""
        try:
            reply = await self._reply_for(context_id)
            if reply.turn.summary is not None:
                # The model already ended this reply (EOS): what it did not say is dropped, so
                # the context keeps only spoken words and the reply stays one turn.
                yield None
                return
            reply.timer.add_text(text)
            reply.turn.push_text(text)
        except MossError as e:
            logger.warning(f"{self}: {e}")
            yield ErrorFrame(error=f"MOSS TTS: {e}")
            reply = self._replies.get(context_id)
            if reply is not None and not reply.text_ended:
                reply.text_ended = True
                try:
                    reply.turn.end_text()  # speak what it has
                except MossError:
                    pass
            return
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The reply's text is complete: the engine turn speaks the rest and ends."""
        reply = self._replies.get(context_id or self.get_active_audio_context_id() or "")
        if reply is not None and not reply.text_ended and reply.turn.summary is None:
            reply.text_ended = True
            try:
                reply.turn.end_text()
            except MossError as e:
                await self.push_error(error_msg=f"MOSS TTS: {e}", exception=e)

    async def _reply_for(self, context_id: str) -> _Reply:
        reply = self._replies.get(context_id)
        if reply is not None:
            return reply  # one engine turn per reply, even if the model ended it early
        if self._session is None:
            raise MossError("the TTS session is not running")
        # One engine turn at a time per conversation: an earlier reply still open finishes
        # with the text it has (its audio plays first anyway).
        for cid in list(self._order):
            other = self._replies.get(cid)
            if other is not None and cid != context_id and other.reader is not None:
                if not other.text_ended:
                    other.text_ended = True
                    other.turn.end_text()
                await asyncio.wait({other.reader})  # its outcome is its own reader's business
        await self._apply_settings()
        await self._add_user_turn()
        turn = await self._session.start_turn()
        reply = _Reply(turn=turn, timer=WordTimer(chars_per_second=self._chars_per_second))
        self._replies[context_id] = reply
        if context_id in self._order:
            self._order.remove(context_id)
        self._order.append(context_id)
        # Older replies finished playing long ago; a few are kept for the heard estimate.
        for old in self._order[:-MAX_TRACKED_REPLIES]:
            self._order.remove(old)
            self._replies.pop(old, None)
        reply.reader = self.create_task(self._read_reply(context_id, reply))
        return reply

    async def _read_reply(self, context_id: str, reply: _Reply) -> None:
        """Moves the engine turn's frames into the audio context, with word times."""
        out_rate = self.sample_rate
        in_rate = self._pcm_rate
        # One resampler per reply: its filter state must not leak across an interruption.
        resampler = create_stream_resampler() if out_rate != in_rate else None
        try:
            async for chunk in reply.turn:
                audio = chunk.pcm
                if resampler is not None:
                    audio = await resampler.resample(audio, in_rate, out_rate)
                reply.frames += 1
                if audio:
                    await self.append_to_audio_context(
                        context_id, TTSAudioRawFrame(audio, out_rate, 1, context_id=context_id)
                    )
                words = reply.timer.on_audio(reply.frames)
                if words:
                    await self.add_word_timestamps(words, context_id)
        except MossError as e:  # e.g. the engine server went away mid-reply
            await self.push_error(error_msg=f"MOSS TTS reply failed: {e}", exception=e)
            await self._close_context(context_id)
            return
        if resampler is not None:
            tail = await resampler.flush()
            if tail:
                await self.append_to_audio_context(
                    context_id, TTSAudioRawFrame(tail, out_rate, 1, context_id=context_id)
                )
        summary = reply.turn.summary
        if summary.stop == "error":
            await self.push_error(
                error_msg=f"MOSS TTS turn failed: {summary.error}", exception=summary.error
            )
        elif summary.stop in ("eos", "max_frames"):  # the reply was spoken to its end
            words = reply.timer.finish(reply.frames)
            if words:
                await self.add_word_timestamps(words, context_id)
        if summary.stop == "eos" and summary.audio_frames >= 12 and summary.text.strip():
            rate = len(summary.text.strip()) / (summary.audio_frames * FRAME_SECONDS)
            self._chars_per_second = 0.7 * self._chars_per_second + 0.3 * rate
        await self._close_context(context_id)

    async def _close_context(self, context_id: str) -> None:
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    # ================================================================== user turns
    def _user_transcript(self) -> str:
        if self._transcript:
            text = " ".join(self._transcript)
            self._transcript.clear()
            return text
        if self._llm_context is None:
            return ""
        messages = self._llm_context.get_messages()
        new = messages[self._consumed_user_messages :]
        self._consumed_user_messages = len(messages)
        parts = [_message_text(m) for m in new if _message_role(m) == "user"]
        return " ".join(p for p in parts if p)

    async def _add_user_turn(self) -> None:
        """Adds what the user said since the last reply (audio + transcript) to the history."""
        transcript = self._user_transcript()
        utterance = self._recorder.take() if self._capture_user_audio else None
        if utterance is None or utterance.seconds < FRAME_SECONDS:
            return
        try:
            await self._add_user_audio_turn(transcript, utterance)
        except MossError as e:
            await self.push_error(error_msg=f"MOSS TTS: user turn not kept: {e}", exception=e)

    # ================================================================== interruption
    def _heard_frames(self, reply: _Reply) -> int:
        if reply.first_pushed_at is None:
            return 0
        start = reply.first_pushed_at
        if self._bot_speaking_since is not None:
            start = max(start, self._bot_speaking_since)
        heard = (time.monotonic() - start - self._output_latency_s) / FRAME_SECONDS
        return max(0, min(reply.pushed, int(heard)))

    async def _roll_back_to_heard(self) -> None:
        """Cuts the engine history back to the audio the user heard.

        Replies newer than the one playing were not heard at all; the playing one was heard
        up to now. Older replies were heard in full.
        """
        if self._session is None or not self._order:
            return
        playing = self._last_played
        for cid in reversed(list(self._order)):
            reply = self._replies[cid]
            reply.turn.cancel()
            heard = self._heard_frames(reply) if cid == playing else 0
            if reply.reader is not None:
                await self.cancel_task(reply.reader)
            try:
                summary = await self._session.interrupt(heard)
            except MossError as e:
                await self.push_error(error_msg=f"MOSS TTS: interrupt failed: {e}", exception=e)
                summary = None
            if summary is not None:
                logger.debug(
                    f"{self}: interrupted reply {cid}: kept {summary.heard_frames}/"
                    f"{summary.audio_frames} frames ({summary.spoken_text!r})"
                )
            if cid == playing:
                break
        # Replies before the playing one were heard in full; nothing is tracked any more.
        self._replies.clear()
        self._order.clear()
        self._last_played = None

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        reply = self._replies.get(context_id)
        if reply is not None and reply.reader is not None:
            await self.cancel_task(reply.reader)
        await super().on_audio_context_interrupted(context_id)


def _message_role(message: Any) -> str | None:
    if isinstance(message, dict):
        return message.get("role")
    return getattr(message, "role", None)


def _message_text(message: Any) -> str:
    content = (
        message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
    )
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        texts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        return " ".join(t.strip() for t in texts if t)
    return ""
