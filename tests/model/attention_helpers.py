"""Cases and the closeness rule of the attention kernel's checks (Triton's interpreter on a
CPU, ``tests/model/test_triton_attention.py``; CUDA, ``tests/gpu/test_fused_cuda.py``).

float32: the formula's numbers within a few ulps. bfloat16: the formula on a CPU rounds its
scores and weights to bf16 where the kernel keeps float32 (as the GPU's flash kernels do), so
the kernel is held to the exact (float64) attention: within the rounding of its weights (2^-8
of the largest value) and one step of the output."""

from __future__ import annotations

import torch

from moss_pipecat.masks import additive_mask
from moss_pipecat.model.attention import grouped_attention


def x(*shape, seed, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def decode_case(dtype, B=3, h=4, n_kv=2, hd=16, S=150, seed=0, device="cpu"):
    """A decode step: one query per row at position length - 1 over a bucket of S keys,
    through strided views of a bigger cache (as the engine's cache hands them)."""
    cache_k = x(B + 2, n_kv, S + 30, hd, seed=seed, dtype=dtype, device=device)
    cache_v = x(B + 2, n_kv, S + 30, hd, seed=seed + 1, dtype=dtype, device=device)
    k, v = cache_k[:B, :, :S], cache_v[:B, :, :S]
    q = x(B, h, 1, hd, seed=seed + 2, dtype=dtype, device=device)
    lengths = torch.tensor([S, 1, 70, S // 2][:B], device=device)
    allowed = torch.arange(S, device=device)[None, None, None, :] < lengths[:, None, None, None]
    return q, k, v, allowed  # [B, 1, 1, S]


def exact_attention(q, k, v, allowed):
    """float64 attention with the g query heads of a kv head sharing it."""
    g = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(g, dim=1) for t in (k, v))
    s = q.double() @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def check_attention(kernel, q, k, v, allowed, splits=None):
    mask = additive_mask(allowed, q.dtype)
    got = kernel(q, k, v, mask, splits=splits)
    assert got.shape == q.shape and got.dtype == q.dtype
    if q.dtype == torch.float32:
        want = grouped_attention(q, k, v, allowed if q.device.type == "cpu" else mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        return
    exact = exact_attention(q, k, v, allowed)
    tol = 2.0**-8 * float(v.float().abs().max()) + exact.abs() * 2.0**-8
    assert bool(((got.double() - exact).abs() <= tol).all())
