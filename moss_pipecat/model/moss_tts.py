"""MOSS-TTS-Realtime: row embedding + Qwen3 backbone + local transformer, and weight loading.

Module names mirror the upstream checkpoint keys, so loading is a key check plus
``load_state_dict(assign=True)`` onto a model built on the ``meta`` device.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from moss_pipecat._log import logger
from moss_pipecat.checkpoint import check_keys, load_state_dict, read_config, resolve_checkpoint
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model.backbone import Qwen3Backbone, RowEmbedding
from moss_pipecat.model.config import MossTTSRealtimeConfig
from moss_pipecat.model.kv_cache import KVCache, ensure_capacity
from moss_pipecat.model.layers import MLP, Attention, RMSNorm
from moss_pipecat.model.local import LocalTransformer
from moss_pipecat.model.sampling import BatchSampling, NoiseKeys

# Checkpoint keys we deliberately do not load.
IGNORED_KEYS = {
    "language_model.embed_tokens.weight": (
        "Qwen3's own text embedding is saved but unused: rows are embedded by the 17 tables "
        "embed_tokens.0..16 (table 0 is the text embedding)"
    ),
}


class MossTTSRealtime(nn.Module):
    def __init__(self, cfg: MossTTSRealtimeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = RowEmbedding(cfg)
        self.language_model = Qwen3Backbone(cfg.language)
        self.local_transformer = LocalTransformer(cfg)

    # Upstream keeps the 17 tables at the top level ("embed_tokens.N.weight").
    @property
    def embed_tokens(self) -> nn.ModuleList:
        return self.embedding.embed_tokens

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under upstream key names, the fused q/k/v, q/k norm and gate/up
        weights split apart again (views of ours, no copies)."""
        state = dict(self.state_dict())
        for prefix, m in self._fused_modules():
            m.to_checkpoint(state, prefix)
        return {_to_checkpoint_key(k): v for k, v in state.items()}

    def _fused_modules(self) -> list[tuple[str, Attention | MLP]]:
        """(state-dict prefix, module) of every module whose parameters the checkpoint keeps
        apart."""
        return [(f"{n}.", m) for n, m in self.named_modules() if isinstance(m, (Attention, MLP))]

    # ---- validation -------------------------------------------------------------------------
    def validate_rows(self, rows: torch.Tensor) -> None:
        """Raises ``InvalidInputError`` unless rows is [B, T, 17] int with ids in range (syncs)."""
        cfg = self.cfg
        if not isinstance(rows, torch.Tensor):
            raise InvalidInputError(f"rows must be a torch.Tensor, got {type(rows).__name__}")
        if rows.dim() != 3 or rows.shape[-1] != cfg.channels or rows.shape[1] == 0:
            raise InvalidInputError(
                f"rows must be [batch, time>0, {cfg.channels}], got {tuple(rows.shape)}"
            )
        if rows.dtype not in (torch.int64, torch.int32):
            raise InvalidInputError(f"rows must be int64/int32 ids, got {rows.dtype}")
        text, audio = rows[..., 0], rows[..., 1:]
        if bool((text < 0).any() | (text >= cfg.language.vocab_size).any()):
            raise InvalidInputError(f"text ids must be in [0, {cfg.language.vocab_size})")
        if bool((audio < 0).any() | (audio >= cfg.audio_vocab_size).any()):
            raise InvalidInputError(f"audio ids must be in [0, {cfg.audio_vocab_size})")

    # ---- backbone -----------------------------------------------------------------------------
    def backbone(
        self,
        rows: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor | None = None,
        n_new: torch.Tensor | None = None,
        kv_len: int | None = None,
        spare_writes: bool = False,
    ) -> torch.Tensor:
        """Appends rows to each slot's history and returns their hidden states.

        The decode hot path: no validation and no host sync.

        Args:
            rows: [B, T, 17] ids; row b goes to slot ``slots[b]`` (slot b when None).
            n_new: [B] number of valid (non-padding) rows per batch row; defaults to T.
                A slot's length grows by its ``n_new``; padding rows are overwritten later.
            spare_writes: padding rows write their keys/values to each slot's last position
                (a spare no call attends to) rather than above its valid ones, so a chunk
                padded past a slot's end stays in bounds. Batch rows with ``n_new`` 0 then
                change nothing, whatever slot they name (a slot may appear more than once).
        Returns:
            [B, T, H] final-norm hidden states.
        """
        valid = n_new if spare_writes else None
        hidden = self.language_model(self.embedding(rows), cache, slots, kv_len, valid)
        B, T, _ = rows.shape
        grow = torch.full((B,), T, device=rows.device) if n_new is None else n_new
        if slots is None:
            cache.lengths[:B] += grow
        elif spare_writes:
            cache.lengths.index_add_(0, slots, grow)  # repeated slots: their n_new add up
        else:
            cache.lengths[slots] += grow
        return hidden

    def prefill(
        self,
        rows: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor | None = None,
        n_new: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Validated append of a batch of prompts; returns the hidden of each last valid row.

        Args:
            rows: [B, T, 17]; shorter prompts are right-padded (any valid ids) to T.
            n_new: [B] valid rows per prompt (defaults to T).
        Returns:
            [B, H].
        """
        self.validate_rows(rows)
        B, T, _ = rows.shape
        if n_new is not None and bool(((n_new < 1) | (n_new > T)).any()):
            raise InvalidInputError(f"n_new must be in [1, {T}]")
        if slots is not None:
            if slots.shape != (B,) or bool(((slots < 0) | (slots >= cache.n_slots)).any()):
                raise InvalidInputError(f"slots must be [{B}] indices < {cache.n_slots}")
            if slots.unique().numel() != B:
                raise InvalidInputError("slots must be distinct")
        elif B > cache.n_slots:
            raise InvalidInputError(f"batch {B} exceeds the cache's {cache.n_slots} slots")
        ensure_capacity(cache, slots, B, T)
        hidden = self.backbone(rows, cache, slots, n_new)  # [B, T, H] (keys: the whole slot)
        last = (n_new - 1) if n_new is not None else torch.full((B,), T - 1, device=rows.device)
        return hidden[torch.arange(B, device=rows.device), last]

    # ---- local transformer ----------------------------------------------------------------------
    def generate_frame(
        self,
        hidden: torch.Tensor,
        sampling: BatchSampling,
        history: torch.Tensor | None = None,
        noise: torch.Tensor | NoiseKeys | None = None,
    ) -> torch.Tensor:
        """[B, H] hidden -> [B, rvq] codes; see ``LocalTransformer.generate``."""
        return self.local_transformer.generate(hidden, sampling, history, noise)

    def decode_step(
        self,
        rows: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor | None,
        kv_len: int | None,
        sampling: BatchSampling,
        history: torch.Tensor | None = None,
        noise: torch.Tensor | NoiseKeys | None = None,
        n_new: torch.Tensor | None = None,
        spare_writes: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One real-time step for a batch of sessions: each row's step row through the backbone
        (appended to its slot), then the 16 codes of its next frame. No host sync: this is the
        function the CUDA graphs capture.

        Args:
            rows: [B, 1, 17] step rows (next text id beside the previous frame).
            slots: [B] cache slots, or None for slots 0..B-1 (read in place, no gather);
                kv_len: static bound on every stepped slot's length + 1 (None: the whole
                slot, see ``Qwen3Backbone.forward``).
            n_new: [B] int64, 1 to append the row to its slot, 0 to leave the slot's length
                as it is (default: all 1).
            spare_writes: see ``backbone`` (rows with ``n_new`` 0 then change nothing, so a
                batch may be padded with rows naming any slot).
            history, noise: see ``LocalTransformer.generate`` (``NoiseKeys``: the noise is
                made inside the step).
        Returns:
            frames [B, rvq] int64 and the backbone hidden states [B, H].
        """
        hidden = self.backbone(rows, cache, slots, n_new, kv_len, spare_writes)[:, 0]  # [B, H]
        return self.local_transformer.generate(hidden, sampling, history, noise), hidden

    def new_cache(
        self, n_slots: int, max_len: int, device: torch.device | str | None = None
    ) -> KVCache:
        """A backbone KV cache matching this model's shapes, dtype and device."""
        c = self.cfg.language
        p = next(self.parameters())
        return KVCache(
            c.num_hidden_layers,
            n_slots,
            max_len,
            c.num_key_value_heads,
            c.head_dim,
            dtype=p.dtype,
            device=device or p.device,
        )

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        repo_or_path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        revision: str | None = None,
    ) -> MossTTSRealtime:
        """Loads a checkpoint directory or Hugging Face hub id (downloaded into the hub cache).

        Raises:
            CheckpointError: missing or unreadable files.
            ConfigMismatchError: weights that do not fit the config.
        """
        directory = resolve_checkpoint(repo_or_path, revision=revision)
        cfg = MossTTSRealtimeConfig.from_dict(read_config(directory))
        state = load_state_dict(directory, device=device)
        model = cls.from_state_dict(cfg, state, dtype=dtype)
        logger.info(
            f"Loaded MOSS-TTS-Realtime from {Path(directory)} "
            f"({model.num_parameters() / 1e6:.1f}M parameters, {dtype}, {device})"
        )
        return model

    @classmethod
    def from_state_dict(
        cls,
        cfg: MossTTSRealtimeConfig,
        state: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
    ) -> MossTTSRealtime:
        """Builds the model on ``meta``, then assigns the checkpoint tensors (no double copy,
        except the fused projections, concatenated once)."""
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k: v.shape for k, v in model.checkpoint_state_dict().items()}
        check_keys(expected, state, IGNORED_KEYS)
        ours = {_from_checkpoint_key(k): state[k].to(dtype) for k in expected}
        for prefix, m in model._fused_modules():
            m.from_checkpoint(ours, prefix)  # concatenated once here, stored fused
        model.load_state_dict(ours, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    @torch.no_grad()
    def init_random_(self, std: float = 0.02) -> MossTTSRealtime:
        """Random weights in place, for benchmarks and shape tests: norm weights 1, every
        other weight N(0, std) (activations stay O(1), like a trained model's)."""
        norms = {id(m.weight) for m in self.modules() if isinstance(m, RMSNorm)}
        for p in self.parameters():
            p.fill_(1.0) if id(p) in norms else p.normal_(std=std)
        return self

    def num_parameters(self) -> int:
        """Parameters as the checkpoint counts them (the q/k norms once, not per head)."""
        return sum(v.numel() for v in self.checkpoint_state_dict().values())


def _to_checkpoint_key(name: str) -> str:
    return name.removeprefix("embedding.")


def _from_checkpoint_key(key: str) -> str:
    return "embedding." + key if key.startswith("embed_tokens.") else key
