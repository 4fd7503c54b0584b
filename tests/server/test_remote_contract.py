"""pipecat's TTS contract on MossRemoteTTSService: the scenarios of
tests/service/test_pipecat_contract.py that depend on how replies are owned and ended, with the
model behind the engine server."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.test_pipecat_contract import FooFrame, errors, spoken_groups, words_of
from .conftest import TALKATIVE


@pytest.fixture
async def remote_tts(make_tiny_engine, make_server):
    # Turns never end before their text was read (nor before 4 frames), as the local tests'.
    engine = make_tiny_engine(
        max_sessions=4,
        **TALKATIVE,
    )
    server = await make_server(engine)

    def make() -> MossRemoteTTSService:
        return MossRemoteTTSService(url=server.url, settings=MossTTSSettings(greedy=True))

    return make


async def test_remote_speak_frames_back_to_back_each_form_one_group(remote_tts):
    frames = [
        TTSSpeakFrame("The first notice.", append_to_context=False),
        FooFrame(label="1"),
        TTSSpeakFrame("The second notice.", append_to_context=False),
        FooFrame(label="2"),
    ]
    down, up = await run_test(remote_tts(), frames_to_send=frames)
    assert errors(up) == []
    kinds = [type(f) for f in down]
    foos = [i for i, k in enumerate(kinds) if k is FooFrame]
    assert len(foos) == 2
    for group in (kinds[: foos[0]], kinds[foos[0] + 1 : foos[1]]):
        assert group[:2] == [TTSStartedFrame, AggregatedTextFrame]
        assert group[-1] is TTSStoppedFrame
        assert set(group[2:-1]) == {TTSAudioRawFrame, TTSTextFrame, AggregatedTextProgressFrame}
    groups = spoken_groups(down)
    assert [words_of(down, ctx) for ctx, _ in groups] == [
        ["The", "first", "notice."],
        ["The", "second", "notice."],
    ]


async def test_remote_uninterruptible_speech_survives_an_interruption(remote_tts):
    protected = TTSSpeakFrame("Please hold on a moment.", append_to_context=False)
    protected.interruptible = False
    frames = [
        protected,
        SleepFrame(0.05),
        VADUserStartedSpeakingFrame(),
        InterruptionFrame(),
        SleepFrame(0.1),
        TTSSpeakFrame("Next reply."),
    ]
    down, up = await run_test(remote_tts(), frames_to_send=frames)
    assert errors(up) == []
    (first, kinds1), (second, kinds2) = spoken_groups(down)
    assert words_of(down, first) == ["Please", "hold", "on", "a", "moment."]
    assert words_of(down, second) == ["Next", "reply."]
    assert TTSAudioRawFrame in kinds1 and TTSAudioRawFrame in kinds2
    assert [f.interruptible for f in down if isinstance(f, TTSStoppedFrame)] == [False, True]


async def test_remote_end_frame_mid_reply_stops_it(remote_tts):
    text = "Ending before the reply ends."
    frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(" " + w) for w in text.split())]
    tts = remote_tts()
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    ((ctx, kinds),) = spoken_groups(down)
    assert TTSAudioRawFrame in kinds
    words = words_of(down, ctx)
    assert words == text.split()[: len(words)]
    assert tts.session is None
