"""Triton kernels of the codec's fused ops (``moss_pipecat.codec.kernels``), one kernel per
call; ``register()`` makes them the ops' CUDA implementations (see
``moss_pipecat.model.triton_kernels``, whose rounding they share).

They round where the formulas round (the layer-scaled branch, the residual sum, the norm's
output, the rotated q/k: to the activation dtype, ties to even), and are launched without
floating-point contraction (``enable_fp_fusion=False``: no ``a*b + c`` turned into one
``fma``), so the residual sum and RoPE are the formulas' numbers bit for bit; the
LayerNorm's mean and variance are summed in another order than torch's (a last bit may
differ). Checked against the formulas in Triton's interpreter on a CPU
(``tests/codec/test_codec_fused.py``) and on CUDA (``tests/gpu/test_fused_cuda.py``).

Importing this module needs ``triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moss_pipecat.codec import kernels
from moss_pipecat.model.triton_common import EXACT, round_to
from moss_pipecat.model.triton_kernels import register_cuda


@triton.jit
def _add_layer_norm_kernel(
    x_ptr, h_ptr, scale_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, dim, eps,
    HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    keep = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=keep, other=0.0)
    dt = x.dtype
    h = tl.load(h_ptr + row * dim + cols, mask=keep, other=0.0).to(tl.float32)
    if HAS_SCALE:  # LayerScale's product, rounded to the activation dtype as torch rounds it
        h = round_to(tl.load(scale_ptr + cols, mask=keep, other=0.0).to(tl.float32) * h, dt)
    s = round_to(x.to(tl.float32) + h, dt)
    tl.store(sum_ptr + row * dim + cols, s, mask=keep)
    mean = tl.sum(s, axis=0) / dim
    d = tl.where(keep, s - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / dim + eps)
    w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + cols, round_to(d * rstd * w + b, dt), mask=keep)


def add_layer_norm(
    x: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.add_layer_norm_formula`` in one kernel (one program per row)."""
    x, h = x.contiguous(), h.contiguous()
    dim = x.shape[-1]
    total, out = torch.empty_like(x), torch.empty_like(x)
    _add_layer_norm_kernel[(x.numel() // dim,)](
        x, h, weight if scale is None else scale.contiguous(), weight.contiguous(),
        bias.contiguous(), total, out, dim, eps,
        HAS_SCALE=scale is not None, BLOCK=triton.next_power_of_2(dim), **EXACT,
    )  # fmt: skip
    return total, out


@triton.jit
def _rotated(qkv_ptr, base, cols, pair, keep, c, s, dt: tl.constexpr):
    """One head row of q or k, rotated as ``kernels.apply_rope`` (float32, then ``dt``)."""
    x = tl.load(qkv_ptr + base + cols, mask=keep, other=0.0).to(tl.float32)
    xs = tl.load(qkv_ptr + base + pair, mask=keep, other=0.0).to(tl.float32)
    return round_to(x * c + xs * s, dt)


@triton.jit
def _rope_write_kernel(
    qkv_ptr, c_ptr, s_ptr, rk_ptr, rv_ptr, idx_ptr, q_ptr, T, heads, hd,
    q_sb, q_st, q_s3, q_sh, c_sb, c_st, r_sb, r_sh, r_ss, i_sb, i_st,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # one program per (batch, step, head): its q row out, its k and v rows into the rings
    pid = tl.program_id(0)
    h = pid % heads
    t = (pid // heads) % T
    b = pid // (heads * T)
    cols = tl.arange(0, BLOCK)
    keep = cols < hd
    pair = cols ^ 1  # the other dim of the rotated pair
    base = b * q_sb + t * q_st + h * q_sh
    c = tl.load(c_ptr + b * c_sb + t * c_st + cols, mask=keep, other=0.0)
    s = tl.load(s_ptr + b * c_sb + t * c_st + cols, mask=keep, other=0.0)
    v = tl.load(qkv_ptr + base + 2 * q_s3 + cols, mask=keep)
    dt = v.dtype
    q = _rotated(qkv_ptr, base, cols, pair, keep, c, s, dt)
    k = _rotated(qkv_ptr, base + q_s3, cols, pair, keep, c, s, dt)
    tl.store(q_ptr + ((b * heads + h) * T + t) * hd + cols, q, mask=keep)
    ring = b * r_sb + h * r_sh + tl.load(idx_ptr + b * i_sb + t * i_st) * r_ss
    tl.store(rk_ptr + ring + cols, k, mask=keep)
    tl.store(rv_ptr + ring + cols, v, mask=keep)


def rope_write(
    qkv: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    write_idx: torch.Tensor,
) -> torch.Tensor:
    """``kernels.rope_write_formula`` in one kernel (the rings written in place, q returned
    contiguous)."""
    b, t, _, heads, hd = qkv.shape
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    c = c.expand(b, 1, t, hd)
    s = s.expand(b, 1, t, hd)
    if c.stride(-1) != 1 or s.stride() != c.stride():
        c, s = c.contiguous(), s.contiguous()
    if ring_k.stride() != ring_v.stride() or ring_k.stride(-1) != 1:
        raise ValueError("rope_write needs key and value rings of one unit-stride layout")
    q = qkv.new_empty((b, heads, t, hd))
    _rope_write_kernel[(b * t * heads,)](
        qkv, c, s, ring_k, ring_v, write_idx, q, t, heads, hd,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3),
        c.stride(0), c.stride(2), ring_k.stride(0), ring_k.stride(1), ring_k.stride(2),
        write_idx.stride(0), write_idx.stride(1),
        BLOCK=triton.next_power_of_2(hd), **EXACT,
    )  # fmt: skip
    return q


KERNELS = {
    "moss::codec_add_layer_norm": (kernels.add_layer_norm, add_layer_norm),
    "moss::codec_rope_write": (kernels.rope_write, rope_write),
}


def register() -> None:
    """The codec's kernels (``KERNELS``), see ``model.triton_kernels.register_cuda``."""
    register_cuda(KERNELS)


def register_attention() -> None:
    """The attention kernel (``model.triton_attention``, not yet measured on a GPU: asked for
    by ``MOSS_ATTENTION_KERNEL=triton``) as the CUDA implementation of the codec's attention."""
    from moss_pipecat.model import triton_attention

    register_cuda(
        {"moss::codec_attention": (kernels.attention, triton_attention.codec_attention_op)}
    )
