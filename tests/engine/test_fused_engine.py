"""The engine with fused ops (``EngineConfig.fused``) makes the frames it makes without them:
greedy and seeded turns identical frame for frame (float32, CPU), through the graphed
(padded static-buffer) step, with the codec's PCM identical too (the one switch fuses model
and codec), and a fused session alone makes what it makes in a batch of 8."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams
from moss_pipecat.model.kernels import Fusable, use_fused

FRAMES = 8


@pytest.fixture(autouse=True)
def _plain_model_after(tiny_model, tiny_codec):
    yield
    for part in (tiny_model, tiny_codec):  # back as the other tests of the session know them
        use_fused(part, False)


def _say(engine, text: list[int], sampling: SamplingParams, seed: int, pcm: bool = False):
    session = SyncSession(engine.create_session(sampling=sampling, seed=seed))
    chunks, summary = session.say(ids=text, max_frames=FRAMES, min_frames=FRAMES)
    assert summary.stop == "max_frames" and len(chunks) == FRAMES
    codes = torch.stack([c.codes for c in chunks])
    return (codes, b"".join(c.pcm for c in chunks)) if pcm else codes


@pytest.mark.parametrize("sampling", [SamplingParams.greedy_decoding(), SamplingParams()])
def test_fused_engine_makes_the_plain_engines_frames(
    make_engine, tiny_model, realtime_golden, sampling
):
    text = realtime_golden["session.text1"].tolist()
    frames = {}
    for fused in (False, True):
        engine = make_engine(graphed_decode=True, fused=fused)
        assert all(m.fused == fused for m in tiny_model.modules() if isinstance(m, Fusable))
        frames[fused] = _say(engine, text, sampling, seed=77)
        engine.shutdown()
    assert torch.equal(frames[True], frames[False])


@pytest.mark.parametrize("graphed", [True, False], ids=["graphed", "eager"])
def test_fused_engine_decodes_the_plain_engines_pcm(
    make_engine, tiny_model, tiny_codec, realtime_golden, graphed
):
    text = realtime_golden["session.text1"].tolist()
    out = {}
    for fused in (False, True):
        engine = make_engine(codec=tiny_codec, graphed_decode=graphed, fused=fused)
        assert all(m.fused == fused for m in tiny_codec.modules() if isinstance(m, Fusable))
        out[fused] = _say(engine, text, SamplingParams(), seed=5, pcm=True)
        engine.shutdown()
    assert torch.equal(out[True][0], out[False][0])
    assert len(out[True][1]) == 2 * FRAMES * tiny_codec.samples_per_frame
    assert out[True][1] == out[False][1]


def test_fused_session_alone_equals_in_a_batch_of_8(make_engine, realtime_golden):
    text = realtime_golden["session.text1"].tolist()
    sampled = SamplingParams()
    alone = _say(make_engine(graphed_decode=True, fused=True), text, sampled, seed=3)
    engine = make_engine(graphed_decode=True, fused=True, max_sessions=8)
    others = [SyncSession(engine.create_session(sampling=sampled, seed=100 + i)) for i in range(7)]
    turns = [o.start_turn(max_frames=FRAMES, min_frames=FRAMES) for o in others]
    for t in turns:
        t.push_ids(text[::-1])
        t.end_text()
    assert torch.equal(_say(engine, text, sampled, seed=3), alone)
    for t in turns:
        t.wait_sync()


def test_fused_is_on_by_default_only_on_cuda_with_triton(make_engine, tiny_model):
    import importlib.util

    from moss_pipecat.model.device_kernels import fused_by_default

    engine = make_engine()  # EngineConfig.fused left at None
    assert engine.core.fused is False  # a CPU: each op would only run its formula
    assert not any(m.fused for m in tiny_model.modules() if isinstance(m, Fusable))
    assert fused_by_default(torch.device("cpu")) is False
    has_triton = importlib.util.find_spec("triton") is not None
    assert fused_by_default(torch.device("cuda")) is has_triton
    assert make_engine(fused=True).core.fused is True  # an explicit choice wins
