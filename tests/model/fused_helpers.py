"""Shapes and the closeness rule shared by the fused-kernel checks (Triton's interpreter on a
CPU, ``tests/model/test_fused_triton.py``; CUDA, ``tests/gpu/test_fused_cuda.py``)."""

from __future__ import annotations

import torch

# (hidden, heads, head_dim, intermediate): the tiny model's layer and the real one / 16.
SHAPES = {"tiny": (64, 4, 16, 96), "narrow_real": (128, 24, 8, 384)}


def assert_near(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.float32:
        # A sum of products that cancels (RoPE) is exact only to the terms' last bits: on CUDA
        # 1.5e-7 apart at a value near 0 among values ~8 (measured, H200); 2 ulps of the
        # tensor's largest value allowed.
        scale = float(want.abs().max()) if want.numel() else 0.0
        torch.testing.assert_close(got, want, rtol=4e-7, atol=max(1e-7, scale * 2.0**-22))
        return
    ulp = want.float().abs().clamp_min(1e-30) * 2.0**-7  # one bf16 step at each value
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= ulp).all()), diff.max()
    assert (diff > 0).float().mean() < 0.01  # flips are rare, not a different rounding
