"""Qwen3 decoder building blocks: RMSNorm, RoPE, attention over a caller-owned KV buffer, MLP.

Attention never owns a cache. It gets the key/value buffers to write into and the absolute
position of every query, so the same block serves the backbone (long per-session caches) and
the local transformer (a 16-position cache that lives for one frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from moss_pipecat.model import kernels
from moss_pipecat.model.attention import (  # noqa: F401 (re-exported: the model's attention)
    KEY_BLOCK,
    grouped_attention,
    key_block_attention,
    key_span,
)
from moss_pipecat.model.config import TransformerConfig
from moss_pipecat.model.kernels import (
    Fusable,
    apply_rope,  # noqa: F401 (re-exported: the model's RoPE)
    norm_rope_formula,
    scaled_rms_norm,
    silu_mul_formula,
)


class Embedding(nn.Embedding):
    """``nn.Embedding`` that leaves a table built on ``meta`` as it is: loading assigns the
    checkpoint's table, and ``normal_`` on a meta tensor runs torch's Python reference, whose
    first call imports ``torch._dynamo`` (~2 s of CPU at every process's start-up)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class RMSNorm(Fusable, nn.Module):
    """RMS norm over the last axis of size ``dim``; with ``rows``, one weight row per row of
    the second-to-last axis (e.g. per attention head). See ``kernels.scaled_rms_norm``."""

    def __init__(self, dim: int, eps: float, rows: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim if rows is None else (rows, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return kernels.rms_norm(x, self.weight, self.eps)
        return scaled_rms_norm(x, self.weight, self.eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, factor: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables for rotate-half RoPE (see ``apply_rope``).

    Args:
        positions: [B, T] absolute positions (int64, on the compute device).
    Returns:
        cos, sin: [B, 1, T, head_dim] in ``dtype``; sin's first half is negated.
    """
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float()
    inv_freq = 1.0 / (theta ** (exponent / head_dim)) / factor  # [hd/2]
    freqs = positions.float()[..., None] * inv_freq  # [B, T, hd/2]
    cos = freqs.cos().repeat(1, 1, 2)  # [B, T, hd]
    sin = freqs.sin()
    sin = torch.cat((-sin, sin), dim=-1)  # [B, T, hd]
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


class Attention(Fusable, nn.Module):
    """Qwen3 attention with q/k/v as one matmul and the q/k norms as one per-head norm (a
    third of the kernels; the decode step is launch-bound).

    The parameters are stored fused (``qkv_proj``: q, k, v rows stacked; ``qk_norm``: the
    q norm's weight repeated for each q head, then the k norm's for each kv head). The
    checkpoint keeps them apart: ``from_checkpoint`` / ``to_checkpoint`` map between the two.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        out = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, out, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.qk_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, rows=self.n_heads + self.n_kv)

    def from_checkpoint(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """Replaces the checkpoint's ``q/k/v_proj`` and ``q/k_norm`` weights under ``prefix``
        in ``state`` by this module's fused ones."""
        q, k, v = (state.pop(f"{prefix}{n}_proj.weight") for n in "qkv")
        state[f"{prefix}qkv_proj.weight"] = torch.cat((q, k, v))
        qn, kn = state.pop(f"{prefix}q_norm.weight"), state.pop(f"{prefix}k_norm.weight")
        hd = self.head_dim
        state[f"{prefix}qk_norm.weight"] = torch.cat(
            (qn.expand(self.n_heads, hd), kn.expand(self.n_kv, hd))
        )  # [n_heads + n_kv, hd]

    def to_checkpoint(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """The inverse of ``from_checkpoint`` (views, no copies)."""
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim  # rows of q, k, v
        q, k, v = state.pop(f"{prefix}qkv_proj.weight").split((nq, nkv, nkv))
        state[f"{prefix}q_proj.weight"], state[f"{prefix}k_proj.weight"] = q, k
        state[f"{prefix}v_proj.weight"] = v
        norm = state.pop(f"{prefix}qk_norm.weight")  # each head's row is the same
        state[f"{prefix}q_norm.weight"] = norm[0]
        state[f"{prefix}k_norm.weight"] = norm[self.n_heads]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: KVWriter,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, T, D]; mask: [B, 1, T, S] additive (``additive_mask``) or bool (True =
        attend); returns [B, T, D]."""
        B, T, _ = x.shape
        nq, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        qkv = self.qkv_proj(x).view(B, T, nq + 2 * nkv, hd)
        if self.fused:  # norm, RoPE and the cache writes in one op
            norm = self.qk_norm
            q = kernels.norm_rope_write(qkv, norm.weight, cos, sin, norm.eps, *kv.destination())
            out = kernels.attention(q, *kv.attended(B), mask)  # [B, h, T, hd]
            return self.o_proj(out.transpose(1, 2).reshape(B, T, nq * hd))
        # Views. split_with_sizes, not split: Tensor.split is a Python wrapper, and the eager
        # CPU step is dispatch-bound.
        qk, v = qkv.split_with_sizes((nq + nkv, nkv), dim=2)
        # q and k normed and rotated together: the same math as apart, element for element.
        normed = norm_rope_formula(qk, self.qk_norm.weight, cos, sin, self.qk_norm.eps)
        q, k = normed.split_with_sizes((nq, nkv), dim=1)
        v = v.transpose(1, 2)
        # q: [B, h, T, hd]; k, v: [B, n_kv, T, hd]
        k_all, v_all = kv.write(k, v)  # [B, n_kv, S, hd]
        out = grouped_attention(q, k_all, v_all, mask)  # [B, h, T, hd]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, nq * hd))


class MLP(Fusable, nn.Module):
    """SwiGLU with gate and up as one matmul (``gate_up_proj``: gate rows, then up rows;
    the checkpoint keeps them apart, see ``Attention``)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def from_checkpoint(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        gate, up = state.pop(f"{prefix}gate_proj.weight"), state.pop(f"{prefix}up_proj.weight")
        state[f"{prefix}gate_up_proj.weight"] = torch.cat((gate, up))

    def to_checkpoint(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        gate, up = state.pop(f"{prefix}gate_up_proj.weight").chunk(2)
        state[f"{prefix}gate_proj.weight"], state[f"{prefix}up_proj.weight"] = gate, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        inner = kernels.silu_mul(gate_up) if self.fused else silu_mul_formula(gate_up)
        return self.down_proj(inner)


class DecoderLayer(Fusable, nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: KVWriter,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv, mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def fused_forward(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: KVWriter,
        mask: torch.Tensor,
        next_norm: RMSNorm,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` through the fused ops, with the next norm (the next layer's input norm
        or the stack's final one) fused into its last residual add. x: the residual stream,
        h: this layer's normed input; returns (x, h) for the next layer, the same numbers as
        ``forward`` then ``next_norm``."""
        attn = self.self_attn(h, cos, sin, kv, mask)
        norm = self.post_attention_layernorm
        x, h = kernels.add_rms_norm(x, attn, norm.weight, norm.eps)
        return kernels.add_rms_norm(x, self.mlp(h), next_norm.weight, next_norm.eps)


def run_stack(
    layers: Sequence[DecoderLayer],
    norm: RMSNorm,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kvs: Sequence[KVWriter],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Decoder layers (layer i writes through ``kvs[i]``), then the final ``norm``: each
    layer's ``forward``, or with fused layers ``fused_forward`` (each residual add fused
    with the norm after it)."""
    if not layers[0].fused:
        for layer, kv in zip(layers, kvs, strict=True):
            x = layer(x, cos, sin, kv, mask)
        return norm(x)
    h = layers[0].input_layernorm(x)
    norms = [layer.input_layernorm for layer in layers[1:]] + [norm]
    for layer, kv, next_norm in zip(layers, kvs, norms, strict=True):
        x, h = layer.fused_forward(x, h, cos, sin, kv, mask, next_norm)
    return h


class KVDestination(NamedTuple):
    """Where a call's new keys and values go: row ``rows[b]`` ([B] int64), position
    ``positions[b, t]`` ([B or 1, T] int64) of the caches ``k``, ``v`` [N, n_kv, M, hd]."""

    k: torch.Tensor
    v: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor


class KVWriter:
    """Where one layer's new keys/values go, and what it attends over.

    Subclasses decide the storage (per-session slots for the backbone, a per-frame scratch
    buffer for the local transformer). The plain path calls ``write``: it stores the new
    entries and returns the [B, n_kv, S, hd] keys/values the queries attend to (masking is
    the caller's job). The fused path writes them itself at ``destination()`` (in the op
    that norms and rotates them), then attends over ``attended(B)``: the same entries.
    """

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def destination(self) -> KVDestination:
        raise NotImplementedError

    def attended(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
