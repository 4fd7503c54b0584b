"""What the user said since the bot's last reply: the transcript (from ``TranscriptionFrame``s
or the pipeline's ``LLMContext``) and, when captured, the speech audio."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

from moss_pipecat.errors import MossError
from moss_pipecat.service.user_audio import UserAudioRecorder, UserUtterance
from moss_pipecat.speech import fields as F
from moss_pipecat.speech.frames import FRAME_SECONDS


class UserTurns:
    """Collects the user's turns for the acoustic history.

    Args:
        context: the pipeline's ``LLMContext`` (the transcript is read from its new user
            messages when no ``TranscriptionFrame`` was seen).
        capture_audio: keep the user's speech (input audio between user started/stopped
            speaking) and transcription frames.
        max_seconds: longest user turn kept (the most recent audio).
    """

    def __init__(self, context: Any | None, capture_audio: bool, max_seconds: float) -> None:
        self._llm_context = context
        self._capture_audio = capture_audio
        seconds = F.real("user_audio_max_s", max_seconds, 0.0, math.inf, low_open=True)
        self._recorder = UserAudioRecorder(max_seconds=seconds)
        self._transcript: list[str] = []
        self._consumed_user_messages = 0

    def on_frame(self, frame: Frame) -> None:
        """Records the user's audio, speaking events and transcriptions (when capturing)."""
        if not self._capture_audio:
            return
        if isinstance(frame, InputAudioRawFrame):
            self._recorder.add_audio(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._recorder.user_started()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._recorder.user_stopped()
        elif isinstance(frame, TranscriptionFrame) and frame.text.strip():
            self._transcript.append(frame.text.strip())

    def take(self) -> tuple[str, UserUtterance | None]:
        """The transcript and the speech (None when not captured or none) since the last call."""
        transcript = self._user_transcript()
        utterance = self._recorder.take() if self._capture_audio else None
        return transcript, utterance

    async def add_to_history(
        self,
        add: Callable[[str, UserUtterance], Awaitable[None]],
        push_error: Callable[..., Awaitable[None]],
    ) -> None:
        """Adds what the user said since the last reply (audio + transcript) with ``add`` (the
        service's ``_add_user_audio_turn``); a refusal is reported with ``push_error``."""
        transcript, utterance = self.take()
        if utterance is None or utterance.seconds < FRAME_SECONDS:
            return
        try:
            await add(transcript, utterance)
        except MossError as e:
            await push_error(error_msg=f"MOSS TTS: user turn not kept: {e}", exception=e)

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
