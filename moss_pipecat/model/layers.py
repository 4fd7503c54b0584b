"""Qwen3 decoder building blocks: RMSNorm, RoPE, attention over a caller-owned KV buffer, MLP.

Attention never owns a cache. It gets the key/value buffers to write into and the absolute
position of every query, so the same block serves the backbone (long per-session caches) and
the local transformer (a 16-position cache that lives for one frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moss_pipecat.model.config import TransformerConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in fp32 inside F.rms_norm (one fused kernel on GPU, vs. seven ops
        # written out), cast back, then scaled in the activation dtype, like the reference.
        return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x*cos + [-x2, x1]*sin, written as x*cos + [x2, x1]*signed_sin (the
    sign lives in the table: one kernel less per call, bit-identical).

    x: [B, heads, T, hd]; cos/sin: [B, 1, T, hd] from ``rope_cos_sin``.
    """
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos + swapped * sin


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

        # Set by fuse(): the stacked q/k/v weight and the per-head q/k norm weights.
        self.wqkv: torch.Tensor | None = None
        self.qk_norm_weight: torch.Tensor | None = None

    def fuse(self) -> None:
        """One matmul for q/k/v, one norm and one RoPE for q and k together (a third of the
        kernels; the decode step is launch-bound). The projections' weights become views of
        the stacked one: no extra memory, same state dict. Call it after the weights are
        loaded and placed (``.to()`` would split them apart again)."""
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        nq, nkv = self.q_proj.weight.shape[0], self.k_proj.weight.shape[0]
        self.q_proj.weight = nn.Parameter(w[:nq], requires_grad=False)
        self.k_proj.weight = nn.Parameter(w[nq : nq + nkv], requires_grad=False)
        self.v_proj.weight = nn.Parameter(w[nq + nkv :], requires_grad=False)
        self.wqkv = w
        hd = self.head_dim
        self.qk_norm_weight = torch.cat(
            [self.q_norm.weight.expand(self.n_heads, hd), self.k_norm.weight.expand(self.n_kv, hd)]
        )  # [n_heads + n_kv, hd]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: KVWriter,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, T, D]; mask: [B, 1, T, S] (True = attend); returns [B, T, D]."""
        B, T, _ = x.shape
        nq, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        if self.wqkv is not None:
            qkv = F.linear(x, self.wqkv).view(B, T, nq + 2 * nkv, hd)
            qk, v = qkv.split((nq + nkv, nkv), dim=2)  # views
            # Same math as q_norm/k_norm + RoPE apart, element for element.
            qk = F.rms_norm(qk, (hd,), eps=self.q_norm.eps) * self.qk_norm_weight
            q, k = apply_rope(qk.transpose(1, 2), cos, sin).split((nq, nkv), dim=1)
            v = v.transpose(1, 2)
        else:
            q = self.q_norm(self.q_proj(x).view(B, T, nq, hd)).transpose(1, 2)
            k = self.k_norm(self.k_proj(x).view(B, T, nkv, hd)).transpose(1, 2)
            v = self.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # q: [B, h, T, hd]; k, v: [B, n_kv, T, hd]
        k_all, v_all = kv.write(k, v)  # [B, n_kv, S, hd]
        out = grouped_attention(q, k_all, v_all, mask)  # [B, h, T, hd]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """GQA without repeating keys/values: the g query heads that share a kv head are folded
    into the query-time axis. (SDPA's ``enable_gqa`` with a mask falls back, on CUDA, to the
    math kernel, which copies every key and value g times: at many sessions that copy would
    be the step's largest memory traffic.) Same result, query row by query row.

    Args:
        q: [B, h, T, hd]; k, v: [B, n_kv, S, hd] (query head i uses kv head i // (h / n_kv));
        mask: [B or 1, 1, T, S] bool, True = attend.
    Returns:
        [B, h, T, hd].
    """
    B, h, T, hd = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    g = h // n_kv
    if g == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    qg = q.reshape(B, n_kv, g * T, hd)  # head i = kv * g + j -> rows j*T .. j*T+T-1
    mg = mask[:, :, None].expand(mask.shape[0], 1, g, T, S).reshape(mask.shape[0], 1, g * T, S)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg)  # [B, n_kv, g*T, hd]
    return out.reshape(B, h, T, hd)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

        self.w13: torch.Tensor | None = None  # set by fuse()

    def fuse(self) -> None:
        """Stacks gate/up into one weight (one matmul); see ``Attention.fuse``."""
        w = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        n = self.gate_proj.weight.shape[0]
        self.gate_proj.weight = nn.Parameter(w[:n], requires_grad=False)
        self.up_proj.weight = nn.Parameter(w[n:], requires_grad=False)
        self.w13 = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = F.linear(x, self.w13).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
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


class KVWriter:
    """Where one layer's new keys/values go, and what it attends over.

    Subclasses decide the storage (per-session slots for the backbone, a per-frame scratch
    buffer for the local transformer). ``write`` stores the new entries and returns the
    [B, n_kv, S, hd] keys/values the queries attend to (masking is the caller's job).
    """

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
