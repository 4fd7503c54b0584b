"""Static, slot-based KV cache for the backbone.

One slot per conversation. Every slot has its own length (kept on the device), so sessions of
different lengths run in one batch: a query at absolute position p attends to the keys at
positions 0..p of its own slot. Rolling back (interruption) is just lowering a slot's length;
the stale entries above it are masked and overwritten by the next write, which always
happens before attention reads them. Shapes never change after construction, which is what
CUDA graphs need.
"""

from __future__ import annotations

import torch

from moss_pipecat.errors import CapacityError, InvalidInputError
from moss_pipecat.model.layers import KVDestination, KVWriter


class KVCache:
    """Keys and values of every backbone layer for ``n_slots`` sessions of up to ``max_len``.

    Attributes:
        k, v: [n_layers, n_slots, n_kv_heads, max_len, head_dim]
        lengths: [n_slots] int64 on the cache's device; number of valid positions per slot.
    """

    def __init__(
        self,
        n_layers: int,
        n_slots: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if n_slots < 1 or max_len < 1:
            raise InvalidInputError("KVCache needs n_slots >= 1 and max_len >= 1")
        shape = (n_layers, n_slots, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(n_slots, dtype=torch.int64, device=device)

    @property
    def n_slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def device(self) -> torch.device:
        return self.k.device

    def length(self, slot: int) -> int:
        """Host copy of one slot's length (syncs; not for the decode hot path)."""
        self._check_slot(slot)
        return int(self.lengths[slot])

    def truncate(self, slot: int, length: int) -> None:
        """Rolls a slot back to its first ``length`` positions."""
        self._check_slot(slot)
        current = int(self.lengths[slot])
        if not 0 <= length <= current:
            raise InvalidInputError(f"cannot truncate slot {slot} of length {current} to {length}")
        self.lengths[slot] = length

    def reset(self, slot: int) -> None:
        self.truncate(slot, 0)

    def copy_slot(self, slot: int, dst: KVCache, dst_slot: int, n: int) -> None:
        """Copies this slot's first ``n`` positions into ``dst_slot`` of ``dst`` (which may be
        this cache) and gives the copy that length."""
        self._check_slot(slot)
        dst._check_slot(dst_slot)
        if n > dst.max_len:
            raise CapacityError(f"{n} positions do not fit a cache of max_len {dst.max_len}")
        dst.write_slot(dst_slot, *self.read_slot(slot, n))

    def read_slot(self, slot: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one slot's first ``n`` keys and values: [n_layers, n_kv_heads, n, head_dim]."""
        return self.k[:, slot, :, :n], self.v[:, slot, :, :n]

    def write_slot(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes keys/values [n_layers, n_kv_heads, n, head_dim] at positions 0..n-1 of a slot
        and sets its length to n."""
        n = k.shape[2]
        self.k[:, slot, :, :n] = k
        self.v[:, slot, :, :n] = v
        self.lengths[slot] = n

    def nbytes_per_position(self) -> int:
        """KV bytes one position of one slot occupies (all layers, keys and values)."""
        n_layers, _, n_kv, _, hd = self.k.shape
        return 2 * n_layers * n_kv * hd * self.k.element_size()

    def writers(
        self, n_layers: int, slots: torch.Tensor | None, positions: torch.Tensor, kv_len: int
    ) -> list[KVWriter]:
        """One writer per layer for a call over ``positions`` [B, T] of slots ``slots`` (None:
        batch row b is slot b); they share the call's row index (one tensor, not one per
        layer: on a GPU each would be a kernel of the step)."""
        B = positions.shape[0]
        rows = torch.arange(B, device=positions.device) if slots is None else slots
        rows = (rows, rows[:, None])  # [B], and [B, 1] to index with positions [B, T]
        return [_SlotWriter(self, i, slots, rows, positions, kv_len) for i in range(n_layers)]

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.n_slots:
            raise InvalidInputError(f"slot {slot} out of range 0..{self.n_slots - 1}")


class _SlotWriter(KVWriter):
    def __init__(
        self,
        cache: KVCache,
        layer: int,
        slots: torch.Tensor | None,
        rows: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        kv_len: int,
    ) -> None:
        self.cache, self.layer, self.slots = cache, layer, slots
        self.rows, self.row_column = rows  # [B], [B, 1]
        self.positions, self.kv_len = positions, kv_len

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self.cache.k[self.layer], self.cache.v[self.layer]  # [N, n_kv, M, hd]
        kc[self.row_column, :, self.positions] = k.transpose(1, 2)  # value [B, T, n_kv, hd]
        vc[self.row_column, :, self.positions] = v.transpose(1, 2)
        return self.attended(k.shape[0])

    def destination(self) -> KVDestination:
        layer = self.layer
        return KVDestination(self.cache.k[layer], self.cache.v[layer], self.rows, self.positions)

    def attended(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self.cache.k[self.layer], self.cache.v[self.layer]
        if self.slots is None:
            # Rows 0..B-1 are slots 0..B-1: read through views, no gather.
            return kc[:batch, :, : self.kv_len], vc[:batch, :, : self.kv_len]
        return kc[self.slots, :, : self.kv_len], vc[self.slots, :, : self.kv_len]


def ensure_capacity(cache: KVCache, slots: torch.Tensor | None, batch: int, n_new: int) -> None:
    """Raises ``CapacityError`` if appending ``n_new`` positions would overflow a slot (syncs)."""
    lengths = cache.lengths[:batch] if slots is None else cache.lengths[slots]
    longest = int(lengths.max()) + n_new
    if longest > cache.max_len:
        raise CapacityError(
            f"appending {n_new} positions needs {longest} > cache max_len {cache.max_len}"
        )
