"""Resampled output keeps every sample of a reply, however its frames are spaced in time."""

from __future__ import annotations

import numpy as np
import pytest
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

from moss_pipecat.errors import MossError
from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.resampling import engine_frames, resampled

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


class _Chunk:
    def __init__(self, pcm: bytes) -> None:
        self.pcm = pcm


async def _turn(chunks):
    for c in chunks:
        yield c


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 8000), (8000, 24000), (24000, 16000)])
async def test_each_frame_of_a_resampled_reply_comes_out_at_once(in_rate, out_rate):
    """A phone pipeline resamples every reply: each engine frame's audio (its first one
    included) comes out as it comes, not a frame later, and every frame is counted once."""
    hop = in_rate * 80 // 1000
    gen = np.random.default_rng(0)
    chunks = [
        _Chunk((gen.standard_normal(hop) * 3000).astype(np.int16).tobytes()) for _ in range(8)
    ]
    out = [audio async for _, audio in resampled(_turn(chunks), in_rate, out_rate, "ctx")]
    *frames, tail = out
    assert all(a is not None and engine_frames(a) == 1 for a in frames), [
        None if a is None else (len(a.audio), engine_frames(a)) for a in frames
    ]
    total = sum(len(a.audio) // 2 for a in out if a is not None)
    assert abs(total - 8 * hop * out_rate // in_rate) <= 2
    assert tail is None or engine_frames(tail) == 0


async def test_a_failed_turn_still_lets_out_the_audio_of_every_frame_it_read():
    """A turn that fails (its server lost) keeps its frames as heard: the audio the
    resampler holds of them (16 -> 8 kHz: soxr holds some 80 ms frames whole) goes out before
    the error, counted, so what is kept as heard is what plays."""
    in_rate, out_rate, hop = 16000, 8000, 1280
    gen = np.random.default_rng(1)
    pcm = [(gen.standard_normal(hop) * 3000).astype(np.int16).tobytes() for _ in range(4)]

    async def failing():
        for p in pcm:
            yield _Chunk(p)
        raise MossError("connection to the server lost")

    out = []
    with pytest.raises(MossError):
        async for chunk, audio in resampled(failing(), in_rate, out_rate, "ctx"):
            out.append((chunk, audio))
    assert sum(c is not None for c, _ in out) == 4
    assert any(a is None for _, a in out)  # the resampler did hold a frame's audio ...
    pushed = [a for _, a in out if a is not None]
    assert sum(engine_frames(a) for a in pushed) == 4  # ... and let it out, counted
    assert abs(sum(len(a.audio) // 2 for a in pushed) - 4 * hop // 2) <= 2
