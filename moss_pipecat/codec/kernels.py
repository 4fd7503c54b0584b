"""The codec's layer math as functions, and the fused kernels of its streaming decode as
custom ops (the codec's counterpart of ``moss_pipecat.model.kernels``; same rules).

Two ops cover what a decoder layer spends most of its kernels on outside its matmuls:

* ``moss::codec_add_layer_norm``: the residual add of a layer-scaled branch and the
  LayerNorm after it (the same layer's second norm, or the next layer's first), 3 kernels
  (LayerScale product, add, norm) -> 1;
* ``moss::codec_rope_write``: q and k rotated (interleaved RoPE, in float32) and the new keys
  and values written into the stage's KV rings, 8 kernels (2 casts, pair swap, 2 products,
  sum, 2 scatters) -> 1.

Each op's registered implementation is the formula the plain path calls, so on a CPU the
fused codec decodes the plain codec's PCM bit for bit; on CUDA, where ``triton`` is
installed, ``codec.device_kernels.register_device_kernels`` puts the Triton kernels of
``moss_pipecat.codec.triton_kernels`` under them (and the model's, see
``moss_pipecat.model.device_kernels``). ``model.kernels.use_fused(codec, on)`` switches a codec's
stages, as it does a model's layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def apply_rope(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Rotates dims (2i, 2i+1) of ``x [..., T, Dh]`` by ``modules.rope_tables``' ``c/s``
    (broadcast to ``x``), in float32.

    Written as ``x * c + pair_swapped(x) * s``: pair i gives ``x0*cos + x1*(-sin)`` and
    ``x1*cos + x0*sin``, bit for bit the reference's ``x0*cos - x1*sin`` and
    ``x0*sin + x1*cos`` (a - b is a + (-b) in IEEE arithmetic, and a sum of two terms does
    not depend on their order), in 4 kernels instead of 7.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # [..., Dh]: (x1, x0) pairs
    return (xf * c + swapped * s).to(x.dtype)


def scaled_add(x: torch.Tensor, h: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """A residual add of a layer-scaled branch: ``x + scale * h`` (``scale`` None: no
    ``LayerScale`` in this stage)."""
    return x + (h if scale is None else scale * h)


def add_layer_norm_formula(
    x: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``scaled_add(x, h, scale)``, its LayerNorm over the last axis)."""
    s = scaled_add(x, h, scale)
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)


def rope_write_formula(
    qkv: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    write_idx: torch.Tensor,
) -> torch.Tensor:
    """One stage chunk's attention inputs: ``qkv [B, T, 3, H, Dh]`` (the fused projection),
    q and k rotated by the tables ``c/s [B, 1, T, Dh]``, k and v written into the rings
    ``[B, H, size, Dh]`` at slots ``write_idx [B, T]`` (in place); returns q ``[B, H, T, Dh]``.
    """
    b, t, _, heads, hd = qkv.shape
    qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
    q, k = apply_rope(qkv[:2], c, s).unbind(0)  # q and k rotated together
    idx = write_idx[:, None, :, None].expand(b, heads, t, hd)
    ring_k.scatter_(2, idx, k)
    ring_v.scatter_(2, idx, qkv[2])
    return q


# ---- the custom ops -------------------------------------------------------------------------
@torch.library.custom_op("moss::codec_add_layer_norm", mutates_args=())
def add_layer_norm(
    x: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_layer_norm_formula`` as one op."""
    return add_layer_norm_formula(x, h, scale, weight, bias, eps)


@add_layer_norm.register_fake
def _(x, h, scale, weight, bias, eps) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("moss::codec_rope_write", mutates_args=("ring_k", "ring_v"))
def rope_write(
    qkv: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    write_idx: torch.Tensor,
) -> torch.Tensor:
    """``rope_write_formula`` as one op."""
    return rope_write_formula(qkv, c, s, ring_k, ring_v, write_idx)


@rope_write.register_fake
def _(qkv, c, s, ring_k, ring_v, write_idx) -> torch.Tensor:
    b, t, _, heads, hd = qkv.shape
    return qkv.new_empty((b, heads, t, hd))


def attention_formula(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """A stage's attention: q ``[B, H, T, Dh]`` over the ring's k/v ``[B, H, size, Dh]``,
    ``mask`` additive ``[B, 1, T, size]``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@torch.library.custom_op("moss::codec_attention", mutates_args=())
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``attention_formula`` as one op."""
    return attention_formula(q, k, v, mask)


@attention.register_fake
def _(q, k, v, mask) -> torch.Tensor:
    return torch.empty_like(q)


# Every fused op -> its formula (what it runs where no single kernel is registered); for the
# kernel counter, beside ``model.kernels.FORMULAS``.
FORMULAS = {
    "moss::codec_add_layer_norm": add_layer_norm_formula,
    "moss::codec_rope_write": rope_write_formula,
    "moss::codec_attention": attention_formula,
}
