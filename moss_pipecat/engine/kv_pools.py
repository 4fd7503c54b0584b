"""KV memory: pools of equal-capacity cache slots, one slot per conversation.

Short conversations sit in small slots; a conversation that outgrows its slot moves to a
larger pool by copying its cached keys/values (no recomputation). Each slot also owns one row
of the runner's repetition-history buffer (``hist_row``). Everything here runs on the engine
thread.
"""

from __future__ import annotations

import bisect

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.errors import CapacityError
from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.model.kv_cache import KVCache


class KVPool:
    """One KV cache of ``n_slots`` slots of ``capacity`` positions plus a spare position per
    slot, which padding rows (idle rows of a graphed step, the rows an exact eager call adds
    to fill its row blocks) write to."""

    def __init__(self, cache: KVCache, capacity: int, n_slots: int, hist_offset: int) -> None:
        self.cache = cache
        self.capacity = capacity
        self.n_slots = n_slots
        self.hist_offset = hist_offset  # this pool's first row in the history buffer
        self.free = list(range(n_slots))

    def take(self) -> int:
        return self.free.pop(0)

    def release(self, slot: int) -> None:
        self.cache.lengths[slot] = 0
        # Kept sorted in place: a metrics scrape may read len(free) from another thread, and
        # list.sort() shows an empty list while it runs.
        bisect.insort(self.free, slot)


class KVPools:
    """The engine's KV pools, smallest capacity first (``EngineConfig.pools()``)."""

    def __init__(self, model: MossTTSRealtime, config: EngineConfig) -> None:
        self.pools: list[KVPool] = []
        offset = 0
        for n_slots, capacity in config.pools():
            cache = model.new_cache(n_slots, capacity + 1)  # + the spare position
            self.pools.append(KVPool(cache, capacity, n_slots, offset))
            offset += n_slots
        self.n_slots = offset

    def __getitem__(self, index: int) -> KVPool:
        return self.pools[index]

    def __iter__(self):
        return iter(self.pools)

    def __len__(self) -> int:
        return len(self.pools)

    def allocate(self) -> tuple[int, int]:
        """(pool, slot) of a free slot in the smallest pool that has one: a new conversation
        is short."""
        for i, pool in enumerate(self.pools):
            if pool.free:
                return i, pool.take()
        raise CapacityError(f"all {self.n_slots} session slots are in use")

    def hist_row(self, pool: int, slot: int) -> int:
        return self.pools[pool].hist_offset + slot

    def set_length(self, pool: int, slot: int, length: int) -> None:
        """Sets a slot's device-side length (rollback is lowering it)."""
        self.pools[pool].cache.lengths[slot] = length

    def move(self, pool: int, slot: int, n: int, need: int) -> tuple[int, int] | None:
        """Moves a slot holding ``n`` positions to a free slot of a pool with room for
        ``need``, copying its KV; frees the old slot. Returns the new (pool, slot), or None
        when no such slot is free (nothing changes)."""
        for i, dst in enumerate(self.pools):
            if dst.capacity >= need and dst.free:
                new = dst.take()
                src = self.pools[pool]
                src.cache.copy_slot(slot, dst.cache, new, n)
                src.release(slot)
                return i, new
        return None
