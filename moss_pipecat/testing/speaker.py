"""A headless speaker for pipecat pipelines: plays audio against a real-time clock, keeps it.

``RealtimeOutputTransport`` stands in for a sound card in offline demos and tests: it takes
audio at real-time pace (one chunk "in the device" at a time, so interruptions cut playback as
they would on a real output) and records what was played, one ``PlayedSegment`` per bot speaking
period, in a ``BotState`` that scripts can wait on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams


@dataclass
class PlayedSegment:
    """Bot audio played between a BotStartedSpeaking and a BotStoppedSpeaking."""

    start: float
    end: float | None = None
    pcm: bytearray = field(default_factory=bytearray)


class BotState:
    """Bot speaking state as seen by the output transport (scripts and inputs wait on it)."""

    def __init__(self) -> None:
        self.speaking = False
        self.segments: list[PlayedSegment] = []
        self.changed = asyncio.Event()

    def started(self) -> None:
        self.speaking = True
        self.segments.append(PlayedSegment(start=time.monotonic()))
        self._notify()

    def stopped(self) -> None:
        self.speaking = False
        if self.segments and self.segments[-1].end is None:
            self.segments[-1].end = time.monotonic()
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
            return True
        except TimeoutError:
            return False


class RealtimeOutputTransport(BaseOutputTransport):
    """Plays audio against a real-time clock and keeps what was played per speaking period."""

    def __init__(self, params: TransportParams, bot: BotState, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self._bot = bot
        self._play_until = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        # The output transport announces speaking periods itself; mirror them for the cues.
        if isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._bot.started()
        elif isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._bot.stopped()
        await super().push_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if self._bot.segments and self._bot.speaking:
            self._bot.segments[-1].pcm.extend(frame.audio)
        seconds = len(frame.audio) / 2 / frame.sample_rate / frame.num_channels
        now = time.monotonic()
        self._play_until = max(self._play_until, now) + seconds
        # Keep at most one chunk queued "in the device", like a sound card's buffer.
        await asyncio.sleep(max(0.0, self._play_until - seconds - now))
        return True
