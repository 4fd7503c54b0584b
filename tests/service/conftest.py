"""A tiny-model engine with codec and (offline) tokenizer, shared by the service tests."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    DataFrame,
    Frame,
    InputAudioRawFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

from moss_pipecat.engine.config import FRAME_SECONDS, EngineConfig
from moss_pipecat.engine.factory import load_tiny_engine

from ..engine_rules import SPEAKS
from .tracing_helpers import span_exporter, traced_pipelines  # noqa: F401 (fixtures)

# The service tests' engine limits: room for a few replies, a reply's length bounded by its
# text (the random model may not end a turn soon after its text).
SERVICE_LIMITS = dict(
    max_sessions=4,
    max_context=2048,
    context_budget=1800,
    turn_reserve=200,
    lookahead_s=None,
    frames_per_text_token=1.5,
    min_turn_frames=8,
    max_text_chars=2000,
)


def assistant_aggregator(context: LLMContext) -> LLMAssistantAggregator:
    """pipecat's assistant aggregator for ``context``, made by the pair as a bot makes it. Its
    user half is in none of the tests' pipelines: it gets turn strategies that load nothing,
    where pipecat's default loads the smart-turn model (~0.25 s of CPU, in every pipeline)."""
    user = LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies())
    return LLMContextAggregatorPair(context, user_params=user).assistant()


def service_engine(fixtures_dir, **overrides):
    """A started tiny engine with the service tests' limits (``overrides`` change them)."""
    config = EngineConfig(**{**SERVICE_LIMITS, **overrides})
    return load_tiny_engine(fixtures_dir, config=config)


@pytest.fixture(scope="module")
def tiny_engine(fixtures_dir):
    engine = service_engine(fixtures_dir)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def talkative_engine(fixtures_dir):
    """Replies that speak (``SPEAKS``), whatever the random weights."""
    engine = service_engine(fixtures_dir, **SPEAKS)
    yield engine
    engine.shutdown()


class Probe(DataFrame):
    """Travels behind the TTS's audio; the probe processor snapshots the session on it."""


class UrgentProbe(SystemFrame):
    """Passes the TTS at once (system frames are not queued behind audio)."""


class SnapshotProbe(FrameProcessor):
    def __init__(self, tts) -> None:
        super().__init__()
        self.tts = tts
        self.snapshots: list[dict] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, (Probe, UrgentProbe)):
            self.snapshots.append(await self.tts.session.snapshot())
        else:
            await self.push_frame(frame, direction)


def frames_lasted(audio: list[TTSAudioRawFrame]) -> int:
    """The engine frames ``audio`` lasts. Not its count of audio frames: where the codec's
    rate is not the pipeline's, a resampler's chunks carry the frames and its tail is one
    more; the chunks sum to the frames' time, to the resampler's rounding (a few samples)."""
    seconds = sum(len(f.audio) // 2 / f.sample_rate for f in audio)
    frames = round(seconds / FRAME_SECONDS)
    assert abs(seconds - frames * FRAME_SECONDS) < 1e-3
    return frames


class WordRecorder(FrameProcessor):
    """Keeps the word frames that pass (an assistant aggregator after it consumes them) and
    when each audio frame passed (pipeline clock, ns)."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[TTSTextFrame] = []
        self.audio_ns: list[int] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self.words.append(frame)
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio_ns.append(self.get_clock().get_time())
        await self.push_frame(frame, direction)

    def playout_end_ns(self, frame_ns: int) -> int:
        """When the audio that passed has played, with no output transport: each frame plays
        when it comes or right after the one before it, whichever is later (a busy CPU can
        leave gaps between runs of frames, which the heard clock follows)."""
        end = 0
        for t in self.audio_ns:
            end = max(end, t) + frame_ns
        return end


def user_audio_frames(seconds: float, sample_rate: int = 16000, f0: float = 180.0):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = (0.3 * np.sin(2 * np.pi * f0 * t) * 32767).astype(np.int16).tobytes()
    step = sample_rate // 50 * 2  # 20 ms of 16-bit samples
    return [
        InputAudioRawFrame(audio=wav[i : i + step], sample_rate=sample_rate, num_channels=1)
        for i in range(0, len(wav), step)
    ]
