"""A headless transport: WAV files as the user's microphone, a real-time clock as the speaker.

The input side plays a script of utterances into the pipeline at real-time pace (20 ms
``InputAudioRawFrame``s, silence in between, as a microphone would), each one started by a cue:
after the bot's previous reply finished playing, or ``barge_in_s`` seconds after the bot started
speaking (to interrupt it). The output side "plays" audio at real-time pace and keeps what was
played, one segment per bot speaking period.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from moss_pipecat.pcm import load_pcm16, pcm16_to_float
from moss_pipecat.testing.speaker import BotState, PlayedSegment, RealtimeOutputTransport

__all__ = [
    "BotState",
    "FeedLog",
    "HeadlessTransport",
    "PlayedSegment",
    "RealtimeOutputTransport",
    "Utterance",
    "WavInputTransport",
    "load_pcm16",
    "speech_end_s",
]

CHUNK_S = 0.02


@dataclass
class Utterance:
    """One user utterance: a WAV file and when to start it.

    Attributes:
        wav: path of the recording (any rate; resampled to the pipeline's input rate).
        text: what it says (for the report).
        barge_in_s: start this many seconds after the bot starts speaking (interrupting it);
            None: start once the bot's reply to the previous utterance has finished.
        gap_s: silence before it starts (after its cue).
    """

    wav: Path
    text: str = ""
    barge_in_s: float | None = None
    gap_s: float = 0.6


@dataclass
class FeedLog:
    """When each utterance started being fed and when its speech ended (monotonic seconds)."""

    started: list[float] = field(default_factory=list)
    speech_end: list[float] = field(default_factory=list)
    cue_timeouts: list[int] = field(default_factory=list)


def speech_end_s(pcm: bytes, sample_rate: int, threshold: float = 0.02) -> float:
    """Where the speech in a recording ends (its last sample above -34 dBFS), in seconds."""
    x = np.abs(pcm16_to_float(pcm))
    loud = np.flatnonzero(x > threshold)
    return (int(loud[-1]) + 1) / sample_rate if loud.size else 0.0


class WavInputTransport(BaseInputTransport):
    """Feeds the utterances of a script in real time, then silence until told to stop."""

    def __init__(
        self,
        params: TransportParams,
        script: list[Utterance],
        bot: BotState,
        *,
        cue_timeout_s: float = 45.0,
        tail_s: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(params, **kwargs)
        self._script = script
        self._bot = bot
        self._cue_timeout_s = cue_timeout_s
        self._tail_s = tail_s
        self._feeder: asyncio.Task | None = None
        self.log = FeedLog()
        self.finished = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._feeder is None:
            self._feeder = self.create_task(self._feed())

    async def stop(self, frame: EndFrame) -> None:
        await self._stop_feeder()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._stop_feeder()
        await super().cancel(frame)

    async def _stop_feeder(self) -> None:
        if self._feeder is not None:
            await self.cancel_task(self._feeder)
            self._feeder = None

    # ------------------------------------------------------------------ feeding
    async def _feed(self) -> None:
        sr = self.sample_rate
        step = int(sr * CHUNK_S) * 2  # bytes of one 20 ms chunk
        self._clock = time.monotonic()
        for i, utt in enumerate(self._script):
            pcm = load_pcm16(utt.wav, sr)
            if not await self._silence_until_cue(utt, i, step):
                self.log.cue_timeouts.append(i)
                logger.warning(f"headless: cue for utterance {i} timed out; playing it anyway")
            await self._play_silence(utt.gap_s, step)
            started = self._clock
            self.log.started.append(started)
            self.log.speech_end.append(started + speech_end_s(pcm, sr))
            logger.info(f"headless: user utterance {i}: {utt.text!r}")
            for off in range(0, len(pcm), step):
                await self._push(pcm[off : off + step].ljust(step, b"\0"))
        # The last reply, then a little silence so every turn closes.
        await self._silence_until(lambda: self._reply_done(len(self._script)), step)
        await self._play_silence(self._tail_s, step)
        self.finished.set()
        while True:  # a live microphone keeps sending silence
            await self._push(bytes(step))

    def _reply_done(self, index: int) -> bool:
        """The bot replied after utterance ``index - 1`` and is not speaking now."""
        if index == 0:
            return True
        since = self.log.speech_end[index - 1]
        return not self._bot.speaking and any(s.start > since for s in self._bot.segments)

    async def _silence_until_cue(self, utt: Utterance, index: int, step: int) -> bool:
        if utt.barge_in_s is None:
            return await self._silence_until(lambda: self._reply_done(index), step)
        since = self.log.speech_end[index - 1] if index else 0.0
        ok = await self._silence_until(
            lambda: any(s.start > since for s in self._bot.segments), step
        )
        started = next((s.start for s in self._bot.segments if s.start > since), time.monotonic())
        wait = started + utt.barge_in_s - time.monotonic() - utt.gap_s
        await self._play_silence(max(0.0, wait), step)
        return ok

    async def _silence_until(self, cue, step: int) -> bool:
        deadline = time.monotonic() + self._cue_timeout_s
        while not cue():
            if time.monotonic() > deadline:
                return False
            await self._push(bytes(step))
        return True

    async def _play_silence(self, seconds: float, step: int) -> None:
        for _ in range(round(seconds / CHUNK_S)):
            await self._push(bytes(step))

    async def _push(self, chunk: bytes) -> None:
        # Real-time pace against an absolute clock, so scheduling jitter does not accumulate.
        self._clock += CHUNK_S
        delay = self._clock - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.push_audio_frame(
            InputAudioRawFrame(audio=chunk, sample_rate=self.sample_rate, num_channels=1)
        )


class HeadlessTransport(BaseTransport):
    """WAV-script input, real-time output, both at the pipeline's sample rates."""

    def __init__(
        self,
        script: list[Utterance],
        *,
        in_sample_rate: int = 16000,
        out_sample_rate: int = 24000,
        cue_timeout_s: float = 45.0,
    ) -> None:
        super().__init__()
        self.bot = BotState()
        self._params = TransportParams(
            audio_in_enabled=True,
            audio_in_sample_rate=in_sample_rate,
            audio_out_enabled=True,
            audio_out_sample_rate=out_sample_rate,
        )
        self._input = WavInputTransport(
            self._params, script, self.bot, cue_timeout_s=cue_timeout_s, name="wav-input"
        )
        self._output = RealtimeOutputTransport(self._params, self.bot, name="realtime-output")

    def input(self) -> FrameProcessor:
        return self._input

    def output(self) -> FrameProcessor:
        return self._output

    @property
    def feed_log(self) -> FeedLog:
        return self._input.log

    @property
    def finished(self) -> asyncio.Event:
        return self._input.finished
