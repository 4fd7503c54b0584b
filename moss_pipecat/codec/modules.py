"""Codec building blocks: patch transforms, interleaved RoPE, causal sliding-window transformer.

Everything runs time-major (``[B, T, C]``); upstream's conv layout (``[B, C, T]``) is only used
at the public API. A transformer stage runs either over a whole sequence (``ring=None``: a
band mask over the sequence itself) or one chunk of a stream (``ring``: keys live in a
per-layer ring buffer, see ``RingView``). Both use the exact window: the query at step p
sees keys p-context+1..p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moss_pipecat.codec import kernels
from moss_pipecat.codec.config import StageConfig
from moss_pipecat.codec.kernels import (
    apply_rope,
    attention_formula,
    rope_write_formula,
    scaled_add,
)
from moss_pipecat.masks import additive_mask
from moss_pipecat.model.kernels import Fusable


class PatchFold(nn.Module):
    """Encoder ``PatchedPretransform``: ``[B, T, C] -> [B, T/p, C*p]``, channel c*p+j = step j."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor, ring: RingView | None = None) -> torch.Tensor:
        b, t, c = x.shape
        p = self.patch_size
        x = x.reshape(b, t // p, p, c).transpose(2, 3)  # [B, T/p, C, p]
        return x.reshape(b, t // p, c * p)


class PatchUnfold(nn.Module):
    """Decoder ``PatchedPretransform``: ``[B, T, C*p] -> [B, T*p, C]`` (inverse of the fold)."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor, ring: RingView | None = None) -> torch.Tensor:
        b, t, cp = x.shape
        p = self.patch_size
        x = x.reshape(b, t, cp // p, p).transpose(2, 3)  # [B, T, p, C]
        return x.reshape(b, t * p, cp // p)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, max_period: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[*positions.shape, head_dim/2]`` (float32) for interleaved-pair RoPE.

    The frequencies and angles are formed in float32 in the same order as the reference
    (exp of a scaled arange, then frequency x position), so positions in the thousands
    round identically; a different but equivalent formula drifts by ~1e-4 rad there.
    """
    half = torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32)
    freqs = torch.exp(half * (-math.log(max_period) * 2 / head_dim))
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs
    return torch.cos(angles), torch.sin(angles)


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dim tables for ``apply_rope`` from ``rope_cos_sin``'s ``[..., Dh/2]``: ``[..., Dh]``
    cos repeated per pair (c, c) and sin signed per pair (-s, s). Made once per stage and
    step, shared by every layer."""
    c = torch.stack((cos, cos), dim=-1).flatten(-2)  # [..., Dh]
    s = torch.stack((-sin, sin), dim=-1).flatten(-2)  # [..., Dh]
    return c, s


@dataclass
class RingView:
    """Streaming KV of one stage for the batch rows being stepped.

    Ring slot j of a row holds the key of the latest absolute step ≡ j (mod size) that the row
    has processed. The size is ``context + max_chunk - 1``: new steps are written before
    attention, and with that slack no key still inside any query's window is overwritten.

    Attributes:
        k: per-layer key rings, each ``[B, H, size, Dh]`` (views into the stream state).
        v: per-layer value rings, same shapes.
        start: ``[B]`` int64, absolute step index of the chunk's first step, per row.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    start: torch.Tensor

    @property
    def size(self) -> int:
        return self.k[0].shape[2]


def band_mask(t: int, context: int, device: torch.device) -> torch.Tensor:
    """``[T, T]`` bool: query i sees key j iff 0 <= i - j < context."""
    i = torch.arange(t, device=device)
    delta = i[:, None] - i[None, :]
    return (delta >= 0) & (delta < context)


def ring_mask(positions: torch.Tensor, size: int, context: int) -> torch.Tensor:
    """``[B, 1, T, size]`` bool mask over ring slots once the chunk at ``positions [B, T]`` is in.

    Slot j holds step ``last - ((last - j) mod size)`` with ``last`` the chunk's final step;
    negative means never written. No host sync: everything stays on the device.
    """
    last = positions[:, -1:]  # [B, 1]
    slots = torch.arange(size, device=positions.device)
    held = last - torch.remainder(last - slots, size)  # [B, size] step held by each slot
    delta = positions[:, :, None] - held[:, None, :]  # [B, T, size]
    ok = (held >= 0)[:, None, :] & (delta >= 0) & (delta < context)
    return ok[:, None]


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (key ``layer_scale_N.scale``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class Attention(Fusable, nn.Module):
    """Multi-head self-attention, fused q/k/v (upstream names ``in_projs.0``, ``out_projs.0``).
    Fused (``model.kernels.use_fused``), a stream chunk's RoPE and ring writes are one op."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_projs = nn.ModuleList([nn.Linear(d_model, 3 * d_model, bias=False)])
        self.out_projs = nn.ModuleList([nn.Linear(d_model, d_model, bias=False)])

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        write_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.in_projs[0](x).view(b, t, 3, self.num_heads, self.head_dim)
        if kv is not None:
            # Write first, then attend over the ring; the ring's slack keeps every key the
            # chunk's earliest query still needs (see RingView).
            write = kernels.rope_write if self.fused else rope_write_formula
            q = write(qkv, cos, sin, kv[0], kv[1], write_idx)
            k, v = kv
        else:
            qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
            q, k = apply_rope(qkv[:2], cos, sin).unbind(0)  # q and k rotated together
            v = qkv[2]  # [B, H, T, Dh]
        attend = kernels.attention if self.fused else attention_formula
        y = attend(q, k, v, mask)  # [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out_projs[0](y)


class Block(nn.Module):
    """Pre-LayerNorm block: ``x += s1*attn(LN1 x)``, ``x += s2*linear2(gelu(linear1(LN2 x)))``."""

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.num_heads)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d, bias=False)
        scaled = cfg.layer_scale is not None
        self.layer_scale_1 = LayerScale(d) if scaled else nn.Identity()
        self.layer_scale_2 = LayerScale(d) if scaled else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        write_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), cos, sin, mask, kv, write_idx))
        h = self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x + self.layer_scale_2(h)

    def fused_forward(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        write_idx: torch.Tensor | None,
        next_norm: nn.LayerNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` through the fused ops, each residual add fused with the norm after it
        (``norm2``; then ``next_norm``, the next layer's ``norm1``, if any). x: the residual
        stream, h: ``norm1(x)``; returns the new (x, ``next_norm(x)`` or None)."""
        attn = self.self_attn(h, cos, sin, mask, kv, write_idx)
        n2 = self.norm2
        x, h = kernels.add_layer_norm(
            x, attn, _scale(self.layer_scale_1), n2.weight, n2.bias, n2.eps
        )
        h = self.linear2(F.gelu(self.linear1(h)))
        scale = _scale(self.layer_scale_2)
        if next_norm is None:
            return scaled_add(x, h, scale), None
        return kernels.add_layer_norm(x, h, scale, next_norm.weight, next_norm.bias, next_norm.eps)


def _scale(m: nn.Module) -> torch.Tensor | None:
    return m.scale if isinstance(m, LayerScale) else None


class TransformerLayers(nn.Module):
    """Holds the blocks so parameter names match upstream (``transformer.layers.N``)."""

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])


class TransformerStage(Fusable, nn.Module):
    """Projected causal transformer: ``input_proj`` -> blocks -> ``output_proj`` (projections
    only where the widths differ, as upstream)."""

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.input_proj = (
            nn.Linear(cfg.input_dimension, d, bias=False) if cfg.input_dimension != d else None
        )
        self.transformer = TransformerLayers(cfg)
        self.output_proj = (
            nn.Linear(d, cfg.output_dimension, bias=False) if cfg.output_dimension != d else None
        )

    def forward(self, x: torch.Tensor, ring: RingView | None = None) -> torch.Tensor:
        """``x [B, T, input_dimension] -> [B, T, output_dimension]``.

        Args:
            x: the chunk (or whole sequence) of this stage.
            ring: streaming KV for the rows of ``x``; ``None`` runs ``x`` as a complete
                sequence starting at step 0.
        """
        cfg = self.cfg
        if self.input_proj is not None:
            x = self.input_proj(x)
        t = x.shape[1]
        steps = torch.arange(t, device=x.device)
        if ring is None:
            cos, sin = rope_tables(*rope_cos_sin(steps, cfg.head_dim, cfg.max_period))
            cos, sin = cos[None, None], sin[None, None]  # [1, 1, T, Dh]
            allowed = band_mask(t, cfg.context, x.device)
            write_idx = None
        else:
            positions = ring.start[:, None] + steps  # [B, T]
            cos, sin = rope_tables(*rope_cos_sin(positions, cfg.head_dim, cfg.max_period))
            cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, Dh]
            allowed = ring_mask(positions, ring.size, cfg.context)
            write_idx = torch.remainder(positions, ring.size)
        mask = additive_mask(allowed, x.dtype)  # once for every layer of the stage
        layers = self.transformer.layers
        kvs = [None if ring is None else (ring.k[i], ring.v[i]) for i in range(len(layers))]
        if self.fused:
            h = layers[0].norm1(x)
            norms = [layer.norm1 for layer in layers[1:]] + [None]
            for layer, kv, next_norm in zip(layers, kvs, norms, strict=True):
                x, h = layer.fused_forward(x, h, cos, sin, mask, kv, write_idx, next_norm)
        else:
            for layer, kv in zip(layers, kvs, strict=True):
                x = layer(x, cos, sin, mask, kv, write_idx)
        if self.output_proj is not None:
            x = self.output_proj(x)
        return x
