"""Prompt prefix cache: the KV of each distinct system block (system sentence + voice prompt),
prefilled once and copied into the slot of every conversation that starts with it.

Most calls of a deployment begin with the same system sentence and the same reference voice,
whose rows (a 10 s voice is 125 of them) would otherwise be prefilled again for every new
conversation, on its time-to-first-audio path. The key is the exact prefix rows (all 17
channels), so another voice or system sentence is simply another key: a voice change never
reads a stale entry. Entries live on the model's device and are evicted least recently used
first once their bytes pass the budget. One cache belongs to one engine and its model; its
KV layout (layers, heads, head size, dtype, device) is checked on every copy.

Keys and values at position p depend only on rows 0..p, so the prefix's KV is the same
whatever followed it when it was prefilled: bit for bit in eager calls, which give a row the
same numbers however its rows were split (``model.row_blocks``; tests/engine/test_exact_calls.py);
graphed calls round per bucket.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model.kv_cache import KVCache


@dataclass(frozen=True)
class PrefixKey:
    """Identity of a prefix: its row count and a digest of its ids (the rows themselves are
    compared too on a lookup, so a digest collision can never serve the wrong KV)."""

    n_rows: int
    digest: bytes

    @classmethod
    def of(cls, rows: torch.Tensor) -> PrefixKey:
        ids = rows.detach().to("cpu", torch.int64).contiguous()
        return cls(ids.shape[0], hashlib.blake2b(ids.numpy().tobytes(), digest_size=16).digest())


@dataclass
class PrefixEntry:
    """One cached prefix.

    Attributes:
        rows: [P, 17] the prefix rows (CPU, int64).
        k, v: [n_layers, n_kv_heads, P, head_dim] its keys and values, on the model's device.
        hits: how often it was copied into a slot.
    """

    key: PrefixKey
    rows: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    hits: int = 0

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def nbytes(self) -> int:
        """Device bytes of the entry (keys and values; the rows are a few KiB on the host)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class PrefixCache:
    """LRU cache of prefix KV, bounded by bytes.

    Args:
        max_bytes: device bytes the entries may hold together; 0 turns the cache off (every
            lookup misses, nothing is stored).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise InvalidInputError("prefix cache max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[PrefixKey, PrefixEntry] = OrderedDict()
        self._bytes = 0
        self._layout: tuple | None = None  # (layers, kv heads, head_dim, dtype, device)
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # ---- queries -----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rows: torch.Tensor) -> bool:
        return self._find(rows) is not None

    def keys(self) -> list[PrefixKey]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }

    # ---- use ---------------------------------------------------------------------------------
    def restore(self, rows: torch.Tensor, cache: KVCache, slot: int) -> PrefixEntry | None:
        """Copies the KV of prefix ``rows`` into positions 0..P-1 of ``slot`` on a hit (the
        slot's length becomes P) and marks the entry most recently used.

        Returns:
            The entry, or None on a miss (nothing is copied).
        """
        entry = self._find(rows)
        if entry is None:
            self.misses += 1
            return None
        self._check_layout(cache)
        cache.write_slot(slot, entry.k, entry.v)  # [layers, kv heads, P, head_dim]
        self._entries.move_to_end(entry.key)
        entry.hits += 1
        self.hits += 1
        return entry

    def store(self, rows: torch.Tensor, cache: KVCache, slot: int) -> bool:
        """Keeps a copy of the KV at positions 0..P-1 of ``slot``, which must hold prefix
        ``rows`` (the caller checks), evicting least recently used entries to fit.

        Returns:
            True if stored (or already there), False when off or larger than the budget.
        """
        if not self.enabled:
            return False
        if self._find(rows) is not None:
            return True
        self._check_layout(cache)
        n = rows.shape[0]
        if n < 1 or n > cache.max_len:
            raise InvalidInputError(f"prefix of {n} rows does not fit a {cache.max_len} slot")
        need = n * cache.nbytes_per_position()
        if need > self.max_bytes:
            return False
        while self._bytes + need > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            self.evictions += 1
        k, v = cache.read_slot(slot, n)  # [layers, kv heads, P, head_dim]
        entry = PrefixEntry(
            key=PrefixKey.of(rows),
            rows=rows.detach().to("cpu", torch.int64).clone(),
            k=k.clone(),  # copies: the slot moves on
            v=v.clone(),
        )
        self._entries[entry.key] = entry
        self._bytes += entry.nbytes
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    # ---- internals ---------------------------------------------------------------------------
    def _find(self, rows: torch.Tensor) -> PrefixEntry | None:
        if not self._entries:
            return None
        entry = self._entries.get(PrefixKey.of(rows))
        if entry is None or not torch.equal(entry.rows, rows.detach().to("cpu", torch.int64)):
            return None
        return entry

    def _check_layout(self, cache: KVCache) -> None:
        n_layers, _, n_kv, _, head_dim = cache.k.shape
        layout = (n_layers, n_kv, head_dim, cache.k.dtype, cache.k.device)
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise InvalidInputError(
                f"prefix cache holds KV of layout {self._layout}, not {layout}: "
                "a prefix cache serves one model"
            )
