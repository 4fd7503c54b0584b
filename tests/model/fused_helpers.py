"""Shapes and the closeness rule shared by the fused-kernel checks (Triton's interpreter on a
CPU, ``tests/model/test_fused_triton.py``; CUDA, ``tests/gpu/test_fused_cuda.py``)."""

from __future__ import annotations

import torch

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
