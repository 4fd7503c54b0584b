"""The Triton kernels of the fused ops (``moss_pipecat.model.triton_kernels``) against the
ops' formulas on a CPU, run by Triton's interpreter (``TRITON_INTERPRET=1``), at tiny and
real-size-narrow shapes. They round where the formulas round; what may differ is the last bit
of a reduction summed in another order or of ``exp``/``rsqrt`` (numpy's here, libdevice's on
a GPU): float32 within a few ulps, bf16 equal but for rare one-ulp flips.

Skipped without ``triton`` (not a dependency yet) and where CUDA is present (there
``tests/gpu/test_fused_cuda.py`` runs them compiled)."""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the interpreter check runs where there is no GPU", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton's kernels are defined
pytest.importorskip("triton")

from moss_pipecat.model import kernels, triton_kernels
from moss_pipecat.model.layers import rope_cos_sin

# (hidden, heads, head_dim, intermediate): the tiny model's layer and the real one / 16.
SHAPES = {"tiny": (64, 4, 16, 96), "narrow_real": (128, 24, 8, 384)}


def assert_near(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=4e-7, atol=1e-7)
        return
    ulp = want.float().abs().clamp_min(1e-30) * 2.0**-7  # one bf16 step at each value
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= ulp).all()), diff.max()
    assert (diff > 0).float().mean() < 0.01  # flips are rare, not a different rounding


def _x(*shape, dtype, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_norms_and_silu_mul_match_the_formulas(dtype, shape):
    hidden, _, _, inter = SHAPES[shape]
    x, y = _x(3, 5, hidden, dtype=dtype), _x(3, 5, hidden, dtype=dtype, seed=1)
    w = _x(hidden, dtype=dtype, seed=2)
    assert_near(triton_kernels.rms_norm(x, w, 1e-6), kernels.scaled_rms_norm(x, w, 1e-6))
    got = triton_kernels.add_rms_norm(x, y, w, 1e-6)
    want = kernels.add_rms_norm_formula(x, y, w, 1e-6)
    assert torch.equal(got[0], want[0])  # the residual sum: one rounding, the same
    assert_near(got[1], want[1])
    gu = _x(3, 5, 2 * inter, dtype=dtype, seed=3)
    assert_near(triton_kernels.silu_mul(gu), kernels.silu_mul_formula(gu))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tables", ["per_row", "shared"])
def test_triton_norm_rope_matches_the_formula(dtype, shape, tables):
    _, heads, hd, _ = SHAPES[shape]
    B, T = 2, 3
    qk = _x(B, T, heads, hd, dtype=dtype)
    w = _x(heads, hd, dtype=dtype, seed=4)
    start = torch.tensor([[0], [1000]]) if tables == "per_row" else torch.zeros(1, 1).long()
    positions = start + torch.arange(T)[None]
    cos, sin = rope_cos_sin(positions, hd, 1e6, 1.0, dtype)
    got = triton_kernels.norm_rope(qk, w, cos, sin, 1e-6)
    assert_near(got, kernels.norm_rope_formula(qk, w, cos, sin, 1e-6))


def test_register_makes_them_the_cuda_kernels_counted_once():
    saved = {k: set(v) for k, v in kernels.SINGLE_KERNEL.items()}
    try:
        triton_kernels.register()
        triton_kernels.register()  # idempotent
        for name in triton_kernels.KERNELS:
            assert "cuda" in kernels.SINGLE_KERNEL[name]
    finally:
        kernels.SINGLE_KERNEL.clear()
        kernels.SINGLE_KERNEL.update(saved)
