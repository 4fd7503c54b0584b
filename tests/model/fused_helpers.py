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


def norm_rope_write_case(
    shape: str, hd: int | None, dtype: torch.dtype, where: str, device: str = "cpu"
) -> tuple:
    """Arguments of ``norm_rope_write`` (qkv, weight, cos, sin, eps, k_cache, v_cache, rows,
    positions) at ``SHAPES[shape]``'s heads (half as many kv heads), head size ``hd`` (None:
    the shape's). ``where``: "slots", the backbone's cache (the batch's rows any slots, a
    position per row and step, one near the end of a long slot); "frame", the local
    transformer's scratch (row b is row b, one position per step for every row)."""
    from moss_pipecat.model.layers import rope_cos_sin

    _, nq, shape_hd, _ = SHAPES[shape]
    # a prefill's two steps into the slots; the scratch takes one step a codebook
    hd, n_kv, B, T = hd or shape_hd, nq // 2, 2, 2 if where == "slots" else 1
    gen = torch.Generator().manual_seed(7)

    def x(*s):
        return (torch.randn(*s, generator=gen) * 3).to(dtype).to(device)

    qkv, w = x(B, T, nq + 2 * n_kv, hd), x(nq + n_kv, hd)
    if where == "slots":
        N, M = 5, 2000
        rows = torch.tensor([3, 0])
        positions = torch.tensor([[1500], [0]]) + torch.arange(T)[None]  # [B, T]
    else:
        N, M = B, 16
        rows, positions = torch.arange(B), torch.arange(5, 5 + T)[None]  # [1, T]
    rows, positions = rows.to(device), positions.to(device)
    cos, sin = rope_cos_sin(positions.expand(B, T), hd, 1e6, 1.0, dtype)
    k_cache, v_cache = x(N, n_kv, M, hd), x(N, n_kv, M, hd)
    return qkv, w, cos, sin, 1e-6, k_cache, v_cache, rows, positions


def check_norm_rope_write(kernels_module, case: tuple) -> None:
    """``kernels_module.norm_rope_write`` (a device kernel) against the formula: q and the
    keys near (exactly ``kernels_module.norm_rope``'s numbers: the same code), the values
    copied exactly, nothing else in the caches moved."""
    from moss_pipecat.model.kernels import norm_rope_write_formula

    qkv, w, cos, sin, eps, k_cache, v_cache, rows, positions = case
    B, T, _, _ = qkv.shape
    nq, n_kv = 2 * w.shape[0] - qkv.shape[2], qkv.shape[2] - w.shape[0]
    got_k, got_v = k_cache.clone(), v_cache.clone()
    want_k, want_v = k_cache.clone(), v_cache.clone()
    args = (qkv, w, cos, sin, eps)
    got = kernels_module.norm_rope_write(*args, got_k, got_v, rows, positions)
    want = norm_rope_write_formula(*args, want_k, want_v, rows, positions)
    assert_near(got, want)
    assert_near(got_k, want_k)
    assert torch.equal(got_v, want_v)
    qk = kernels_module.norm_rope(qkv[:, :, : nq + n_kv], w, cos, sin, eps)
    assert torch.equal(got, qk[:, :nq])
    at = rows[:, None], slice(None), positions.expand(B, T)  # -> [B, T, n_kv, hd]
    assert torch.equal(got_k[at], qk[:, nq:].transpose(1, 2))
    assert torch.equal(got_v[at], qkv[:, :, nq + n_kv :])
    untouched = torch.ones(k_cache.shape[0], k_cache.shape[2], dtype=torch.bool)
    untouched[rows[:, None].cpu(), positions.expand(B, T).cpu()] = False
    untouched = untouched[:, None, :, None].expand_as(k_cache).to(k_cache.device)
    assert torch.equal(got_k[untouched], k_cache[untouched])
    assert torch.equal(got_v[untouched], v_cache[untouched])
