"""On a GPU: the fused ops' CUDA kernels (Triton, ``moss_pipecat.model.triton_kernels``)
against the ops' formulas, and the graphed decode step through the fused ops against the
graphed plain one (CUDA graphs replayed, float32 tiny model: greedy and seeded frames equal).

Written without a GPU at hand (the CPU suite checks the kernels in Triton's interpreter,
``tests/model/test_fused_triton.py``): these are the checks a first GPU run must pass before
``EngineConfig.fused`` defaults on for CUDA.
"""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.model.device_kernels import register_device_kernels
from moss_pipecat.model.graphs import GraphedDecodeStep
from moss_pipecat.model.kernels import use_fused
from tests.gpu.test_cuda_graphs import _prefilled, _run_steps
from tests.model.fused_helpers import SHAPES, assert_near

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
