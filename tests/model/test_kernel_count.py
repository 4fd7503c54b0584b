"""Kernels per graphed step, counted on the ``meta`` device (``moss_pipecat.testing.kernels``).

The counter's rules (views and allocations are free, fused ops and custom ops count once)
are checked on small cases; the real-size decode step and codec frame hold their counts
exactly, so a change that adds kernels to the hot steps shows up here (the counts are what
``benchmarks/bench_launches.py --kernels`` reports; docs/PERFORMANCE.md has their history).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moss_pipecat.testing.kernels import KernelCounter, codec_frame_kernels, decode_step_kernels

META = torch.device("meta")


@torch.library.custom_op("moss_test::scaled_sum", mutates_args=())
def _scaled_sum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * 2 + y) * 3  # three ATen ops inside, one op from outside


@_scaled_sum.register_fake
def _(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _count(fn) -> dict[str, int]:
    with KernelCounter() as counter:
        fn()
    return dict(counter.by_op)


def test_views_and_allocations_are_not_kernels():
    x = torch.empty(4, 6, device=META)
    assert _count(lambda: (x.view(2, 12), x.t(), x[:, 1:], x.split(3, dim=1))) == {}
    assert _count(lambda: torch.empty(3, device=META)) == {}
    assert _count(lambda: x.reshape(24) + 1) == {"aten.add": 1}
    assert _count(lambda: x.t().reshape(24)) == {"aten.clone": 1}  # a copy, so a kernel


def test_fused_and_custom_ops_count_once():
    x = torch.empty(2, 3, 8, device=META, dtype=torch.bfloat16)
    w = torch.empty(8, device=META, dtype=torch.bfloat16)
    assert _count(lambda: F.rms_norm(x, (8,), w, eps=1e-6)) == {"rms_norm": 1}
    assert _count(lambda: F.linear(x, torch.empty(5, 8, device=META, dtype=x.dtype))) == {
        "aten.mm": 1
    }
    q = torch.empty(1, 2, 3, 8, device=META)
    bool_mask = torch.empty(1, 1, 3, 3, dtype=torch.bool, device=META)
    float_mask = torch.empty(1, 1, 3, 3, device=META)
    # a boolean mask costs the 3 kernels that make it additive on CUDA
    assert _count(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=bool_mask)) == {
        "scaled_dot_product_attention": 4
    }
    assert _count(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=float_mask)) == {
        "scaled_dot_product_attention": 1
    }
    y = torch.ones(3)
    assert _count(lambda: _scaled_sum(y, y)) == {"moss_test.scaled_sum.default": 1}


def test_real_decode_step_kernels():
    k = decode_step_kernels(torch.bfloat16)
    assert k.total == 2532  # 2,559 before the 28 layers' KV writers shared one row index
    # 28 backbone layers + 16 codebooks x 4 local layers; 3 norms each, + the final norms
    assert k.by_op["rms_norm"] == 92 * 3 + 1 + 16
    assert k.by_op["aten.mm"] == 92 * 4 + 16  # + the 16 codebook heads


def test_real_codec_frame_kernels():
    k = codec_frame_kernels(torch.bfloat16)
    assert k.total == 1520
    assert k.by_op["aten.native_layer_norm"] == 68 * 2  # 68 decoder layers, 2 norms each


def test_real_decode_step_kernels_fused():
    """The decode step through the fused ops: their formulas' kernels where CUDA has no
    kernel for them (the same count as the plain step), each op once where it has one (as
    ``device_kernels`` registers with ``triton`` installed: every fused op)."""
    from moss_pipecat.model.kernels import SINGLE_KERNEL

    saved = {k: set(v) for k, v in SINGLE_KERNEL.items()}
    ops = ["rms_norm", "add_rms_norm", "norm_rope", "silu_mul", "choose_codebook", "keyed_noise"]
    try:
        SINGLE_KERNEL.clear()
        SINGLE_KERNEL.update({f"moss::{op}": {"cuda"} for op in ops})
        k = decode_step_kernels(torch.bfloat16, fused=True)
    finally:
        SINGLE_KERNEL.clear()
        SINGLE_KERNEL.update(saved)
    assert k.total == 1170  # 1,197 before the KV writers shared one row index
    assert k.by_op["moss.choose_codebook.default"] == 16
    assert k.by_op["moss.keyed_noise.default"] == 1
    assert k.by_op["moss.add_rms_norm.default"] == 92 * 2  # each residual add + the next norm
    assert k.by_op["moss.rms_norm.default"] == 1 + 16  # the input norm of each stack call
    assert k.by_op["aten.mm"] == 92 * 4 + 16
