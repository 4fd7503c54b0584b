"""The Qwen3 backbone over 17-channel rows (text id + 16 audio codebook ids per position)."""

from __future__ import annotations

import torch
from torch import nn

from moss_pipecat.masks import additive_mask
from moss_pipecat.model.config import MossTTSRealtimeConfig, TransformerConfig
from moss_pipecat.model.kv_cache import KVCache
from moss_pipecat.model.layers import (
    DecoderLayer,
    Embedding,
    RMSNorm,
    key_span,
    rope_cos_sin,
    run_stack,
)


class RowEmbedding(nn.Module):
    """Sum of 17 embeddings: table 0 for the text id, table k for codebook k-1 (k = 1..rvq)."""

    def __init__(self, cfg: MossTTSRealtimeConfig) -> None:
        super().__init__()
        H = cfg.language.hidden_size
        tables = [Embedding(cfg.language.vocab_size, H)]
        tables += [Embedding(cfg.audio_vocab_size, H) for _ in range(cfg.rvq)]
        self.embed_tokens = nn.ModuleList(tables)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: [B, T, 17] int64 -> [B, T, H]."""
        x = self.embed_tokens[0](rows[..., 0])
        for c in range(1, len(self.embed_tokens)):
            x = x + self.embed_tokens[c](rows[..., c])
        return x


class Qwen3Backbone(nn.Module):
    """Decoder layers + final norm. Its input embeddings come from ``RowEmbedding``."""

    # On a CPU, two shortcuts: an eager call attends only the key blocks up to its longest row
    # (a host read of the lengths), and its mask stays boolean (cheaper there). The kernel
    # checks (scripts/interpret_kernels.py, compile_kernels.py) turn them off on a model's
    # backbone to drive the route a GPU takes: the whole slot, an additive mask (what the
    # attention kernel takes).
    cpu_shortcuts: bool = True

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor | None = None,
        kv_len: int | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Runs T new positions per row on top of each slot's cached history.

        Args:
            x: [B, T, H] input embeddings of the new positions.
            cache: the backbone cache; row b uses slot ``slots[b]`` (or slot b when None).
            kv_len: attend over cache positions [0, kv_len) only (a bound on every row's
                length + T: the graphs' context buckets). None: an eager call, which gives a
                row the same numbers however its rows were split into calls and whoever
                shares them. On a CPU it attends over whole key blocks up to its longest row
                (``key_span``: the blocked CPU attention gives a row the same numbers over
                any such span). Elsewhere over the whole slot: attention's last bits depend
                on the key length (how the kernels block and sum it), so a length taken from
                the call would make a row's numbers depend on the call; over the whole slot
                every call sees the same length and masked keys add exactly zero.
            valid: [B] rows per batch row whose keys/values are kept; the others (padding)
                write theirs to the slot's last position, its spare, which every query masks
                (no slot's length reaches it), instead of above the valid ones: a padded chunk
                then never writes past a slot's end. None: every row writes in place.
        Returns:
            [B, T, H] final-norm hidden states. Does not advance ``cache.lengths``.
        """
        B, T, _ = x.shape
        start = cache.lengths[:B] if slots is None else cache.lengths[slots]  # [B]
        positions = start[:, None] + torch.arange(T, device=x.device)  # [B, T]
        cfg = self.cfg
        cos, sin = rope_cos_sin(
            positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor, x.dtype
        )
        shortcuts = x.device.type == "cpu" and self.cpu_shortcuts
        if kv_len is None:
            kv_len = cache.max_len
            if shortcuts:  # a host read is free here: skip the keys past every row
                kv_len = key_span(int(start.max()) + T, cache.max_len)
        S = kv_len
        key_pos = torch.arange(S, device=x.device)
        allowed = key_pos[None, None, :] <= positions[:, :, None]  # [B, T, S]
        # [B, 1, T, S]. The CPU attention takes it as it is (it hides keys only in the blocks
        # that need it: a long prefill would spend more making the additive one than using it).
        mask = allowed[:, None] if shortcuts else additive_mask(allowed, x.dtype)[:, None]
        writes = positions
        if valid is not None:
            keep = torch.arange(T, device=x.device)[None, :] < valid[:, None]  # [B, T]
            writes = torch.where(keep, positions, cache.max_len - 1)
        kvs = cache.writers(len(self.layers), slots, writes, S)
        return run_stack(self.layers, self.norm, x, cos, sin, kvs, mask)
