"""Shapes and the closeness rule shared by the codec's fused-kernel checks (Triton's
interpreter on a CPU, ``tests/codec/test_codec_triton.py``; CUDA,
``tests/gpu/test_fused_cuda.py``)."""

from __future__ import annotations

import torch

# (d_model, heads): the tiny codecs' stages (head dims 12 and 24: no power of two) and the
# real codec's / 16 (head dim 4; 20 and 12 heads)
SHAPES = {"tiny": (48, 4), "tiny_alt": (48, 2), "narrow_real": (80, 20), "narrow_wide": (48, 12)}


def assert_layer_norm_near(got: torch.Tensor, want: torch.Tensor) -> None:
    """A last bit apart at most (a LayerNorm's mean and variance summed in another order),
    rarely in bf16 (one rounding of a float32 result)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        return
    ulp = want.float().abs().clamp_min(2.0**-100) * 2.0**-7
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= ulp).all()), diff.max()
    assert (diff > 0).float().mean() < 0.01


def _x(*shape, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


def layer_norm_case(d: int, dtype, scaled: bool, device="cpu") -> tuple:
    """(x, h, scale, weight, bias, eps) with edge rows: a constant row (variance 0), a large
    row, a tiny branch."""
    x, h = _x(4, 3, d, dtype=dtype), _x(4, 3, d, dtype=dtype, seed=1)
    x[0, 0] = 1.5  # with h = 0: a constant row
    h[0, 0] = 0.0
    x[1, 1] *= 1e4
    h[1, 2] *= 1e-4
    scale = _x(d, dtype=dtype, seed=2, scale=0.01) if scaled else None
    w, b = _x(d, dtype=dtype, seed=3, scale=1.0), _x(d, dtype=dtype, seed=4, scale=1.0)
    return (*(t if t is None else t.to(device) for t in (x, h, scale, w, b)), 1e-5)


def rope_case(d: int, heads: int, steps: int, dtype, device="cpu") -> tuple:
    """(qkv, c, s, write_idx, state): rows at steps 0.. and in the thousands (per-row tables),
    the chunk's slots wrapping around a ring of ``steps + 5`` slots; ``state [2, 3, H, size,
    Dh]`` holds the key and value rings of 3 rows, of which rows 0..1 are stepped."""
    from moss_pipecat.codec.modules import rope_cos_sin, rope_tables

    hd, b, size = d // heads, 2, steps + 5
    qkv = _x(b, steps, 3 * d, dtype=dtype).view(b, steps, 3, heads, hd)
    positions = torch.tensor([[0], [4000 + size - 2]]) + torch.arange(steps)
    c, s = rope_tables(*rope_cos_sin(positions.to(device), hd, 10000.0))
    state = _x(2, 3, heads, size, hd, dtype=dtype, seed=7)
    idx = torch.remainder(positions, size)
    return qkv.to(device), c[:, None], s[:, None], idx.to(device), state.to(device)
