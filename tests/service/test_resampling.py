"""Resampled output keeps every sample of a reply, however its frames are spaced in time."""

from __future__ import annotations

from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import Probe, SnapshotProbe


async def test_a_pause_in_the_text_loses_no_resampled_audio(talkative_engine):
    # The LLM stalls mid-reply: the engine waits for text, so the reply's frames stop for
    # most of 1 s. The reply's resampler must carry on across the gap (a stream resampler that
    # clears its state after an idle moment drops the samples it holds: audio lost, a click).
    # The first part is a little over the text lead (12 tokens): a few frames, then a wait.
    first = [w + " " for w in "This is the first part of a reply that the LLM sends now,".split()]
    rest = [w + " " for w in "and then the reply goes on to its end.".split()]
    codec = talkative_engine.codec
    # A phone-style pipeline: the reply's audio (24 kHz upstream) is resampled.
    out_rate = 16000 if codec.sampling_rate != 16000 else 8000
    tts = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    probe = SnapshotProbe(tts)
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in first),
        SleepFrame(1.0),
        *(LLMTextFrame(p) for p in rest),
        LLMFullResponseEndFrame(),
        SleepFrame(0.3),
        Probe(),
    ]
    down, up = await run_test(
        Pipeline([tts, probe]),
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=out_rate),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    (snap,) = probe.snapshots
    (frames_generated,) = snap["turn_frames"]
    audio = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    # 80 ms frames: hop samples at the codec's rate each
    expected = frames_generated * codec.samples_per_frame * out_rate // codec.sampling_rate
    assert frames_generated > 0
    assert abs(len(audio) // 2 - expected) <= 2, (len(audio) // 2, expected)
