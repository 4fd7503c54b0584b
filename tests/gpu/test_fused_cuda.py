"""On a GPU: the fused ops' CUDA kernels (Triton, ``moss_pipecat.model.triton_kernels`` and
``moss_pipecat.codec.triton_kernels``) against the ops' formulas, the graphed decode step
through the fused ops against the graphed plain one (CUDA graphs replayed, float32 tiny model:
greedy and seeded frames equal), and the graphed codec frame through the fused ops against the
graphed plain one (the codec's LayerNorm kernel sums in another order than torch's: PCM within
float rounding, int16 PCM at most one step apart).

Written without a GPU at hand (the CPU suite checks the kernels in Triton's interpreter,
``tests/model/test_fused_triton.py``): these are the checks a first GPU run must pass before
``EngineConfig.fused`` defaults on for CUDA.
"""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.codec import MossAudioCodec, pcm16
from moss_pipecat.codec import kernels as codec_kernels
from moss_pipecat.codec.device_kernels import register_device_kernels as register_codec_kernels
from moss_pipecat.codec.graphs import GraphedCodecDecode
from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.model.device_kernels import register_device_kernels
from moss_pipecat.model.graphs import GraphedDecodeStep
from moss_pipecat.model.kernels import SINGLE_KERNEL, use_fused
from tests.codec import fused_helpers as codec_cases
from tests.gpu.test_cuda_graphs import _prefilled, _run_steps
from tests.model.attention_helpers import check_attention, decode_case
from tests.model.fused_helpers import (
    SHAPES,
    assert_near,
    check_norm_rope_write,
    norm_rope_write_case,
)

CUDA = torch.device("cuda")
triton_kernels = pytest.importorskip("moss_pipecat.model.triton_kernels")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_kernels_match_the_formulas(dtype, shape):
    from moss_pipecat.model import kernels
    from moss_pipecat.model.layers import rope_cos_sin

    register_device_kernels()
    hidden, heads, hd, inter = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)

    def x(*s):
        return (torch.randn(*s, generator=gen) * 3).to(dtype).to(CUDA)

    a, b, w = x(3, 5, hidden), x(3, 5, hidden), x(hidden)
    assert_near(kernels.rms_norm(a, w, 1e-6), kernels.scaled_rms_norm(a, w, 1e-6))
    got, want = kernels.add_rms_norm(a, b, w, 1e-6), kernels.add_rms_norm_formula(a, b, w, 1e-6)
    assert torch.equal(got[0], want[0])
    assert_near(got[1], want[1])
    gu = x(3, 5, 2 * inter)
    assert_near(kernels.silu_mul(gu), kernels.silu_mul_formula(gu))
    qk, wh = x(2, 3, heads, hd), x(heads, hd)
    positions = torch.tensor([[0], [1000]], device=CUDA) + torch.arange(3, device=CUDA)
    cos, sin = rope_cos_sin(positions, hd, 1e6, 1.0, dtype)
    got = kernels.norm_rope(qk, wh, cos, sin, 1e-6)
    assert_near(got, kernels.norm_rope_formula(qk, wh, cos, sin, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("where", ["slots", "frame"])
@pytest.mark.parametrize("hd", [None, 128, 12])  # the shape's, the real model's, not 2**n
def test_cuda_norm_rope_write_kernel_matches(dtype, where, hd):
    """q/k norm + RoPE with the cache writes (not yet registered by default: called directly
    here) against the formula on CUDA, and q and k to the bit as ``norm_rope``'s kernel."""
    case = norm_rope_write_case("narrow_real", hd, dtype, where, device=CUDA)
    check_norm_rope_write(triton_kernels, case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S", [150, 2048])
def test_cuda_attention_kernel_matches(dtype, S):
    from moss_pipecat.model import triton_attention

    # The real heads (16 queries on 8 kv heads of 128) over a bucket of S keys; split as the
    # GPU wants it (several programs per row here) and not split.
    case = decode_case(dtype, B=4, h=16, n_kv=8, hd=128, S=S, seed=3, device=CUDA)
    check_attention(triton_attention.attention, *case)
    check_attention(triton_attention.attention, *case, splits=1)
    ring = decode_case(dtype, B=2, h=8, n_kv=8, hd=64, S=S, seed=4, device=CUDA)
    check_attention(triton_attention.attention, *ring)


def test_graphed_fused_step_equals_graphed_plain_step(realtime_dir, long_rows):
    model = MossTTSRealtime.from_pretrained(realtime_dir, device=CUDA)
    register_device_kernels()
    frames = {}
    try:
        for fused in (False, True):
            use_fused(model, fused)
            cache, slots = _prefilled(model, long_rows, [30, 47, 12], 5)
            g = GraphedDecodeStep(
                model, cache, window=50, batch_buckets=(1, 4), kv_buckets=(64, 160)
            )
            frames[fused] = _run_steps(model, g.step, cache, slots)
    finally:
        use_fused(model, False)
    assert torch.equal(frames[True], frames[False])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", codec_cases.SHAPES)
def test_cuda_codec_kernels_match_the_formulas(dtype, shape):
    """The codec's ops run their Triton kernels on CUDA (``SINGLE_KERNEL``) and equal the
    formulas (torch's CUDA kernels): RoPE, ring writes and the residual sum bit for bit."""
    register_codec_kernels()
    assert {"cuda"} <= SINGLE_KERNEL["moss::codec_rope_write"]
    d, heads = codec_cases.SHAPES[shape]
    for scaled in (True, False):
        args = codec_cases.layer_norm_case(d, dtype, scaled, device=CUDA)
        got = codec_kernels.add_layer_norm(*args)
        want = codec_kernels.add_layer_norm_formula(*args)
        assert torch.equal(got[0], want[0])
        codec_cases.assert_layer_norm_near(got[1], want[1])
    for steps in (1, 8):
        qkv, c, s, idx, state = codec_cases.rope_case(d, heads, steps, dtype, device=CUDA)
        want_state, b = state.clone(), qkv.shape[0]
        want = codec_kernels.rope_write_formula(
            qkv, c, s, want_state[0, :b], want_state[1, :b], idx
        )
        got = codec_kernels.rope_write(qkv, c, s, state[0, :b], state[1, :b], idx)
        assert torch.equal(got, want) and torch.equal(state, want_state)


def test_graphed_fused_codec_frame_equals_graphed_plain_frame(codec_dir):
    """Three streams of different ages through the captured codec frame, fused and plain."""
    codec = MossAudioCodec.from_pretrained(codec_dir, device=CUDA)
    register_codec_kernels()
    size = codec.config.quantizer.codebook_size
    codes = torch.randint(0, size, (16, 3, 8), generator=torch.Generator().manual_seed(3))
    pcm = {}
    try:
        for fused in (False, True):
            use_fused(codec, fused)
            state = codec.new_stream_state(4)
            graphed = GraphedCodecDecode(codec, state, batch_buckets=(1, 2, 4))
            assert graphed.graphs.use_cuda_graphs
            graphed.capture_all(16)
            state.add_streams(2)
            out = []
            for f in range(codes.shape[2]):
                if f == 3:
                    state.add_stream()
                slots = [0, 1, 2] if f >= 3 else [0, 1]
                out.append(graphed.step(codes[:, slots, f].to(CUDA), slots).flatten().cpu())
            pcm[fused] = torch.cat(out)
    finally:
        use_fused(codec, False)
    torch.testing.assert_close(pcm[True], pcm[False], atol=1e-5, rtol=0)
    assert (pcm16(pcm[True]).int() - pcm16(pcm[False]).int()).abs().max() <= 1


def test_an_engine_on_cuda_runs_fused_by_default(realtime_dir):
    from moss_pipecat.engine.config import EngineConfig
    from moss_pipecat.engine.engine import MossEngine
    from moss_pipecat.model.kernels import Fusable
    from moss_pipecat.testing.simulated_device import stand_in_layout

    model = MossTTSRealtime.from_pretrained(realtime_dir, device=CUDA)
    config = EngineConfig(max_sessions=2, max_context=256, context_budget=200, turn_reserve=40)
    engine = MossEngine(model, stand_in_layout(model.cfg), config=config)
    try:
        assert engine.core.fused is True
        assert all(m.fused for m in model.modules() if isinstance(m, Fusable))
    finally:
        engine.shutdown()
        use_fused(model, False)


def test_the_kv_write_kernel_leaves_the_graphed_step_as_it_was(realtime_dir, long_rows):
    """The cache writes folded into the q/k norm + RoPE kernel (``MOSS_KV_WRITE_KERNEL=triton``;
    near the end of this file: a registration lasts for the process): the graphed fused step's
    frames against the graphed plain step's, as above (its q and k are ``norm_rope``'s
    kernel's to the bit, so the frames are the same)."""
    triton_kernels.register_kv_write()
    assert {"cuda"} <= SINGLE_KERNEL["moss::norm_rope_write"]
    test_graphed_fused_step_equals_graphed_plain_step(realtime_dir, long_rows)


def test_the_attention_kernel_leaves_the_graphed_step_and_codec_frame_as_they_were(
    realtime_dir, long_rows, codec_dir
):
    """The attention kernel registered (``MOSS_ATTENTION_KERNEL=triton``; last in this file: a
    registration lasts for the process): the graphed fused step's frames and the graphed fused
    codec frame's PCM against the plain ones, as above."""
    from moss_pipecat.codec import triton_kernels as codec_triton
    from moss_pipecat.model import triton_attention

    triton_attention.register()
    codec_triton.register_attention()
    assert {"cuda"} <= SINGLE_KERNEL["moss::attention"]
    assert {"cuda"} <= SINGLE_KERNEL["moss::codec_attention"]
    test_graphed_fused_step_equals_graphed_plain_step(realtime_dir, long_rows)
    test_graphed_fused_codec_frame_equals_graphed_plain_frame(codec_dir)
