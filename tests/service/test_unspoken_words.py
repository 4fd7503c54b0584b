"""Words the model never spoke never become word frames, nor LLM context."""

from __future__ import annotations

from itertools import pairwise

import pytest
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.engine.rows import DEFAULT_DELAY
from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import WordRecorder, assistant_aggregator, frames_lasted, service_engine
from .test_moss_tts_service import reply

CAP = 20  # frames: the reply is cut long before its text ends


@pytest.fixture(scope="module")
def capped_engine(fixtures_dir):
    # The cap, not a random EOS, ends the reply.
    engine = service_engine(
        fixtures_dir, max_turn_frames=CAP, max_text_chars=6000, eos_after_text=True
    )
    yield engine
    engine.shutdown()


async def test_a_reply_cut_short_reports_only_the_words_it_fed(capped_engine):
    text = " ".join(f"w{i}" for i in range(1000))  # ~5,000 characters
    context = LLMContext()
    tts = MossTTSService(engine=capped_engine, settings=MossTTSSettings(greedy=True))
    frames = [*reply(*(w + " " for w in text.split())), SleepFrame(1.5)]
    recorder = WordRecorder()  # the assistant aggregator consumes the word frames
    down, up = await run_test(
        Pipeline([tts, recorder, assistant_aggregator(context)]),
        frames_to_send=frames,
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    frames = frames_lasted(audio)  # (not len(audio): a resampler's tail is no frame)
    assert 0 < frames <= CAP
    words = [f.text.strip() for f in recorder.words]
    # At most what the model was fed: the text lead plus one token per frame (each "wN " is
    # at least one token), in order, from the start.
    assert 0 < len(words) <= DEFAULT_DELAY + frames
    assert words == text.split()[: len(words)]
    pts = [f.pts for f in recorder.words]
    assert all(a < b for a, b in pairwise(pts))
    # Every word is released while the reply's audio plays: once its frame has, by its end.
    assert recorder.audio_ns[0] - 0.05e9 <= pts[0]
    assert pts[-1] <= recorder.playout_end_ns(round(FRAME_SECONDS * 1e9))
    said = [m["content"].split() for m in context.get_messages() if m["role"] == "assistant"]
    assert said == [words]
