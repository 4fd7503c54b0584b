"""The local (depth) transformer: turns one backbone hidden state into the 16 codes of a frame.

Position 0 is the backbone's hidden state; position i (1..15) is the embedding of code i-1 of
the same frame. Its KV cache lives for one frame only, in a scratch buffer of ``rvq`` positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from moss_pipecat.masks import additive_mask
from moss_pipecat.model.config import MossTTSRealtimeConfig
from moss_pipecat.model.fused_sampling import NO_EOS, choose_codebook, keyed_noise_op
from moss_pipecat.model.kernels import Fusable
from moss_pipecat.model.layers import (
    DecoderLayer,
    Embedding,
    KVDestination,
    KVWriter,
    RMSNorm,
    rope_cos_sin,
    run_stack,
)
from moss_pipecat.model.sampling import (
    BatchSampling,
    NoiseKeys,
    choose_with,
    filter_plan,
    keyed_noise,
    mask_token,
    penalty_factors,
    seen_mask,
)


class _FrameTables(NamedTuple):
    cos: torch.Tensor
    sin: torch.Tensor
    causal: torch.Tensor
    index: torch.Tensor


class _FrameKV(KVWriter):
    """Scratch keys/values of one local layer: [B, n_kv, rvq, hd], written at ``start`` (the
    next ``T`` positions). ``index`` (the fused path's, ``LocalTransformer._tables``):
    0, 1, 2 ... [max(B, rvq)]: batch row b writes scratch row b; step t position start + t."""

    def __init__(
        self, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor | None, T: int = 1
    ) -> None:
        self.k, self.v, self.index, self.start, self.T = k, v, index, 0, T

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        self.k[:, :, self.start : self.start + T] = k
        self.v[:, :, self.start : self.start + T] = v
        return self.k, self.v

    def destination(self) -> KVDestination:
        if self.index is None:
            raise RuntimeError("a plain local transformer's scratch has no destination index")
        B, start = self.k.shape[0], self.start
        positions = self.index[None, start : start + self.T]  # [1, T]
        return KVDestination(self.k, self.v, self.index[:B], positions)

    def attended(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k, self.v


class LocalModel(nn.Module):
    def __init__(self, cfg: MossTTSRealtimeConfig) -> None:
        super().__init__()
        c = cfg.local
        self.embed_tokens = nn.ModuleList(
            Embedding(cfg.audio_vocab_size, c.hidden_size) for _ in range(cfg.rvq - 1)
        )
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LocalTransformer(Fusable, nn.Module):
    def __init__(self, cfg: MossTTSRealtimeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rvq = cfg.rvq
        self.model = LocalModel(cfg)
        self.local_lm_heads = nn.ModuleList(
            nn.Linear(cfg.local.hidden_size, cfg.audio_vocab_size, bias=False)
            for _ in range(cfg.rvq)
        )

    def _scratch(self, B: int, like: torch.Tensor, index: torch.Tensor) -> list[_FrameKV]:
        c = self.cfg.local
        shape = (B, c.num_key_value_heads, self.rvq, c.head_dim)
        # one zeroed buffer (one kernel) for every layer's keys and values
        buf = like.new_zeros((c.num_hidden_layers, 2, *shape))
        index = index if self.fused else None  # the fused ops write at (row, position) indices
        return [_FrameKV(buf[i, 0], buf[i, 1], index) for i in range(c.num_hidden_layers)]

    def _tables(self, B: int, like: torch.Tensor) -> _FrameTables:
        """RoPE cos/sin [1, 1, rvq, hd], the causal mask [rvq, rvq] (additive) of one frame's
        positions, and 0, 1, 2 ... [max(B, rvq)] (the positions, and the fused path's scratch
        rows): made once per frame rather than once per codebook."""
        c = self.cfg.local
        index = torch.arange(max(B, self.rvq), device=like.device)
        positions = index[None, : self.rvq]  # [1, rvq]
        cos, sin = rope_cos_sin(
            positions, c.head_dim, c.rope_theta, c.rope_scaling_factor, like.dtype
        )
        causal = positions[0][None, :] <= positions[0][:, None]  # [rvq (query), rvq (key)]
        return _FrameTables(cos, sin, additive_mask(causal, like.dtype), index)

    def _run(
        self,
        x: torch.Tensor,
        kvs: list[_FrameKV],
        start: int,
        tables: _FrameTables,
    ) -> torch.Tensor:
        """x: [B, T, H] inputs at positions start..start+T-1 -> [B, T, H] normed outputs."""
        T = x.shape[1]
        cos, sin, causal, _ = tables
        cos, sin = cos[:, :, start : start + T], sin[:, :, start : start + T]
        mask = causal[start : start + T][None, None]  # [1, 1, T, rvq]
        for kv in kvs:
            kv.start, kv.T = start, T
        return run_stack(self.model.layers, self.model.norm, x, cos, sin, kvs, mask)

    def teacher_forced_logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Logits of every codebook given the true previous codes.

        Args:
            hidden: [B, H] backbone hidden states; codes: [B, rvq] int64.
        Returns:
            [B, rvq, audio_vocab] float32.
        """
        embeds = [hidden[:, None]] + [
            self.model.embed_tokens[i](codes[:, i : i + 1]) for i in range(self.rvq - 1)
        ]
        x = torch.cat(embeds, dim=1)
        tables = self._tables(x.shape[0], x)
        out = self._run(x, self._scratch(x.shape[0], x, tables.index), 0, tables)
        return torch.stack(
            [self.local_lm_heads[i](out[:, i]).float() for i in range(self.rvq)], dim=1
        )

    def generate(
        self,
        hidden: torch.Tensor,
        sampling: BatchSampling,
        history: torch.Tensor | None = None,
        noise: torch.Tensor | NoiseKeys | None = None,
    ) -> torch.Tensor:
        """The codes of one frame, codebook by codebook, with no host sync.

        Args:
            hidden: [B, H] backbone hidden state of the row before the frame.
            sampling: settings of the first n rows (n <= B); rows whose ``allow_eos``
                is False never pick EOS on codebook 0 (the code that ends a turn). Rows past
                n only fill the matmuls to whole row blocks (``model.row_blocks``): they
                are not sampled (they take row 0's codes) and not returned.
            history: [n, W, rvq] codes of the turn's earlier frames for the repetition
                penalty (``NO_HISTORY`` where empty), or None for no penalty.
            noise: the randomness of sampled rows: ``NoiseKeys`` (per-row seed and frame
                counter; the noise is made here, ``keyed_noise``), or explicit [n, rvq, V]
                Exp(1) noise, or None when every row is greedy.
        Returns:
            [n, rvq] int64 codes.
        """
        B, sampled = hidden.shape[0], sampling.temperature.shape[0]
        if sampled > B:
            raise ValueError(f"sampling settings for {sampled} rows, hidden states of {B}")
        V = self.cfg.audio_vocab_size
        if isinstance(noise, NoiseKeys):
            if self.fused:
                noise = keyed_noise_op(noise.seed, noise.counter, self.rvq, V)
            else:
                noise = keyed_noise(noise, self.rvq, V)  # [B, rvq, V]
        tables = self._tables(B, hidden)
        kvs = self._scratch(B, hidden, tables.index)
        # The penalty window and the filter settings are fixed for the frame: their per-row
        # tensors are made once for all codebooks.
        factors = None  # [B, rvq, V]
        if history is not None:
            factors = penalty_factors(seen_mask(history.transpose(1, 2), V), sampling.penalty)
        plan = None if noise is None else filter_plan(sampling.top_k, sampling.top_p, V)
        x = hidden[:, None]  # [B, 1, H]
        codes = []
        for i in range(self.rvq):
            out = self._run(x, kvs, i, tables)[:, 0]  # [B, H]
            logits = self.local_lm_heads[i](out)[:sampled]  # [n, V] (the head ran on all B)
            f = None if factors is None else factors[:, i]
            n = None if noise is None else noise[:, i]
            if self.fused:
                eos = self.cfg.audio_eos if i == 0 else NO_EOS
                kth, tail = (None, None) if plan is None else (plan.kth, plan.tail)
                t, g = sampling.temperature, sampling.greedy
                code = choose_codebook(logits, f, t, g, kth, tail, n, eos, sampling.allow_eos)
            else:
                logits = logits.float()
                if i == 0:
                    logits = mask_token(logits, self.cfg.audio_eos, sampling.allow_eos)
                code = choose_with(logits, f, sampling, plan, n)
            codes.append(code)
            if i + 1 < self.rvq:
                if sampled < B:  # the padding rows go on with row 0's code
                    code = torch.cat((code, code[:1].expand(B - sampled)))
                x = self.model.embed_tokens[i](code)[:, None]
        return torch.stack(codes, dim=1)
