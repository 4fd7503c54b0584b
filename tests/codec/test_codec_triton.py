"""The Triton kernels of the codec's fused ops (``moss_pipecat.codec.triton_kernels``) against
the ops' formulas on a CPU, in Triton's interpreter (``TRITON_INTERPRET=1``), at the tiny
codec's and the real codec's narrowed shapes (head dims that are no power of two among
them), float32 and bf16, with and without LayerScale, at edge values (a constant row, large
and tiny values, positions in the thousands, ring slots wrapping, a ring that is a view of
a larger state whose other rows stay untouched).

RoPE, the ring writes and the residual sum are the formulas' numbers bit for bit (launched
without floating-point contraction); the LayerNorm may differ in a last bit (its mean and
variance summed in another order). Skipped without ``triton`` and where CUDA is present
(there ``tests/gpu/test_fused_cuda.py`` runs them compiled)."""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the interpreter check runs where there is no GPU", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton's kernels are defined
pytest.importorskip("triton")

from moss_pipecat.codec import kernels, triton_kernels
from moss_pipecat.codec.modules import rope_cos_sin, rope_tables
from moss_pipecat.model.kernels import SINGLE_KERNEL

DTYPES = [torch.float32, torch.bfloat16]
# (d_model, heads): the tiny codec's stages, the real ones / 16 (head dim 4), odd head dims
SHAPES = {"tiny": (48, 4), "tiny_alt": (48, 2), "narrow_real": (80, 20), "narrow_wide": (48, 12)}


def _x(*shape, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


def assert_layer_norm_near(got: torch.Tensor, want: torch.Tensor) -> None:
    """A last bit apart at most, rarely in bf16 (one rounding of a float32 result)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        return
    ulp = want.float().abs().clamp_min(2.0**-100) * 2.0**-7
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= ulp).all()), diff.max()
    assert (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scaled", [True, False], ids=["layer_scale", "no_scale"])
def test_triton_add_layer_norm_matches_the_formula(dtype, shape, scaled):
    d, _ = SHAPES[shape]
    x, h = _x(4, 3, d, dtype=dtype), _x(4, 3, d, dtype=dtype, seed=1)
    x[0, 0] = 1.5  # with h = 0 below: a constant row (variance 0)
    h[0, 0] = 0.0
    x[1, 1] *= 1e4  # large and tiny rows
    h[1, 2] *= 1e-4
    scale = _x(d, dtype=dtype, seed=2, scale=0.01) if scaled else None
    w, b = _x(d, dtype=dtype, seed=3, scale=1.0), _x(d, dtype=dtype, seed=4, scale=1.0)
    got = triton_kernels.add_layer_norm(x, h, scale, w, b, 1e-5)
    want = kernels.add_layer_norm_formula(x, h, scale, w, b, 1e-5)
    assert torch.equal(got[0], want[0])  # the residual sum: the same roundings
    assert_layer_norm_near(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [1, 8])
def test_triton_rope_write_matches_the_formula(dtype, shape, steps):
    """Rows at steps 0 and in the thousands, per-row tables; the chunk's slots wrap around a
    ring of ``steps + 5`` slots; rows 0..1 of a 3-row state stepped."""
    d, heads = SHAPES[shape]
    hd = d // heads
    b, size = 2, steps + 5
    qkv = _x(b, steps, 3 * d, dtype=dtype).view(b, steps, 3, heads, hd)
    positions = torch.tensor([[0], [4000 + size - 2]]) + torch.arange(steps)
    c, s = rope_tables(*rope_cos_sin(positions, hd, 10000.0))
    c, s = c[:, None], s[:, None]
    idx = torch.remainder(positions, size)
    states = [_x(2, 3, heads, size, hd, dtype=dtype, seed=7) for _ in range(2)]
    q_want = kernels.rope_write_formula(qkv, c, s, states[0][0, :b], states[0][1, :b], idx)
    q_got = triton_kernels.rope_write(qkv, c, s, states[1][0, :b], states[1][1, :b], idx)
    assert torch.equal(q_got, q_want) and q_got.is_contiguous()
    assert torch.equal(states[1], states[0])  # rings written alike, row 2 untouched


def test_register_makes_them_the_cuda_kernels_counted_once():
    saved = {k: set(v) for k, v in SINGLE_KERNEL.items()}
    try:
        triton_kernels.register()
        triton_kernels.register()  # idempotent
        assert set(triton_kernels.KERNELS) == set(kernels.FORMULAS)
        for name in triton_kernels.KERNELS:
            assert "cuda" in SINGLE_KERNEL[name]
    finally:
        SINGLE_KERNEL.clear()
        SINGLE_KERNEL.update(saved)
