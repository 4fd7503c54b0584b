"""Rows appended one at a time (a turn's step rows, its frames), kept as a few tensors.

Every tensor is an object Python's garbage collector tracks, and a full collection walks
every tracked object of the process: a turn that kept each of its step rows and frames as a
tensor of its own left ~2 objects per frame in every session's history (400 sessions: ~170 K
tensors, a 100-300 ms full collection inside one tick). A ``RowStore`` keeps the newest rows
(at most ``CHUNK - 1``) as the tensors they came as, stacks every ``CHUNK`` of them into one
tensor, and is compacted to a single tensor when its turn closes; appending stays a list
append (one ``torch.stack`` per ``CHUNK`` rows), and the rows read back are the same values.
"""

from __future__ import annotations

import torch

CHUNK = 32  # rows per stacked tensor: the hot path stacks once per CHUNK appends


class RowStore:
    """Rows of one shape, in order; ``len``, ``[i]`` (a row), ``tensors()`` (all of them)."""

    def __init__(self, rows: torch.Tensor | None = None) -> None:
        """``rows``: [n, ...] the first rows (kept as given: no copy)."""
        self._chunks: list[torch.Tensor] = [] if rows is None or not len(rows) else [rows]
        self._tail: list[torch.Tensor] = []
        self._n = 0 if rows is None else len(rows)

    @classmethod
    def of(cls, rows: RowStore | list[torch.Tensor] | torch.Tensor) -> RowStore:
        """``rows`` as a store: a store as it is, a list of rows stacked, a tensor kept."""
        if isinstance(rows, RowStore):
            return rows
        if isinstance(rows, list):
            return cls(torch.stack(rows)) if rows else cls()
        return cls(rows)

    def __len__(self) -> int:
        return self._n

    def append(self, row: torch.Tensor) -> None:
        self._tail.append(row)
        self._n += 1
        if len(self._tail) >= CHUNK:
            self._chunks.append(torch.stack(self._tail))
            self._tail = []

    def __getitem__(self, i: int) -> torch.Tensor:
        """Row ``i`` (negative counts from the end)."""
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} of {self._n}")
        start = self._n - len(self._tail)
        if i >= start:
            return self._tail[i - start]
        for c in self._chunks:
            if i < len(c):
                return c[i]
            i -= len(c)
        raise AssertionError("unreachable: the chunks hold the rows before the tail")

    def tensors(self) -> list[torch.Tensor]:
        """The rows as [k, ...] tensors, in order (their ``torch.cat`` is every row)."""
        return self._chunks + ([torch.stack(self._tail)] if self._tail else [])

    def truncate(self, k: int) -> None:
        """Keeps the first ``k`` rows, as one tensor (a closed turn's rows)."""
        k = max(0, min(k, self._n))
        parts = self.tensors()
        rows = torch.cat(parts)[:k] if parts and k else None
        self._chunks = [] if rows is None else [rows]
        self._tail = []
        self._n = k
