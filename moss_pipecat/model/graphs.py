"""The decode step, a turn's first frame and prefill chunks on static buffers, captured as
CUDA graphs per bucket (``moss_pipecat.cuda_graphs.BucketedGraph``).

A real-time step is a few thousand small kernels (one backbone row, 16 local-transformer
positions, sampling); at small batches their launch overhead, not the GPU, sets the frame
time. Every call is padded up to a row bucket (and a context-length bucket), and every input
is copied into a buffer the graph reads (see ``GraphedDecodeStep`` for how idle rows stay
harmless).

On a device without CUDA graphs (CPU) the same padded, static-buffer path runs eagerly, so
tests on CPU exercise exactly the logic the GPU replays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moss_pipecat.cuda_graphs import (
    DEFAULT_BATCH_BUCKETS,
    BucketedGraph,
    GraphedStep,
    StaticInput,
    capped_buckets,
    smallest_bucket,
)
from moss_pipecat.model.config import MossTTSRealtimeConfig
from moss_pipecat.model.kv_cache import KVCache
from moss_pipecat.model.moss_tts import MossTTSRealtime
from moss_pipecat.model.sampling import NO_HISTORY, BatchSampling, NoiseKeys

__all__ = [
    "DEFAULT_BATCH_BUCKETS",
    "DEFAULT_PREFILL_BATCHES",
    "DEFAULT_PREFILL_ROWS",
    "GraphedDecodeStep",
    "GraphedFrameStep",
    "GraphedPrefill",
    "default_kv_buckets",
]

# Prefill chunks: a turn's own rows (header + text lead: ~16), a user turn or a first turn
# with a voice prompt (~64-256); few sessions start a turn in the same tick. Larger chunks
# and batches run eagerly (their launches are a small part of their time).
DEFAULT_PREFILL_ROWS = (16, 64, 256)
DEFAULT_PREFILL_BATCHES = (1, 2, 4, 8)

_SETTINGS = ("temperature", "top_k", "top_p", "penalty")


def default_kv_buckets(max_len: int, smallest: int = 512) -> tuple[int, ...]:
    """Powers of two from ``smallest`` up to (and ending exactly at) ``max_len``."""
    out, k = [], smallest
    while k < max_len:
        out.append(k)
        k *= 2
    return (*out, max_len)


def _pad_row(cfg: MossTTSRealtimeConfig, device: torch.device) -> torch.Tensor:
    """What an idle (padding) row feeds the backbone: the text pad, then the audio pad on
    every codebook. [channels] int64."""
    row = torch.full((cfg.channels,), cfg.audio_pad_token, dtype=torch.int64, device=device)
    row[0] = cfg.text_pad
    return row


def _sampling_inputs(B: int, window: int, rvq: int, dev) -> dict[str, StaticInput]:
    """Static per-row sampling inputs. Idle rows are greedy with an empty penalty window and
    may end their frame; their settings and noise keys are never read, so left as they are.
    The noise of sampled rows is made inside the step from per-row keys (seed, counter)."""

    def stale(dtype: torch.dtype) -> StaticInput:
        return StaticInput(torch.zeros(B, dtype=dtype, device=dev), None)

    return {
        "history": StaticInput(
            torch.full((B, window, rvq), NO_HISTORY, dtype=torch.int64, device=dev), NO_HISTORY
        ),
        "seed": stale(torch.int64),
        "counter": stale(torch.int64),
        "temperature": StaticInput(torch.ones(B, device=dev), None),
        "top_k": stale(torch.int64),
        "top_p": StaticInput(torch.ones(B, device=dev), None),
        "penalty": StaticInput(torch.ones(B, device=dev), None),
        "greedy": StaticInput(torch.ones(B, dtype=torch.bool, device=dev), True),
        "allow_eos": StaticInput(torch.ones(B, dtype=torch.bool, device=dev), True),
    }


def _sampling_values(
    sampling: BatchSampling, history: torch.Tensor, noise: NoiseKeys | None
) -> dict[str, torch.Tensor | None]:
    """A batch's sampling inputs by name; without noise every row is greedy (and the stale
    keys are never used)."""
    if noise is not None and not isinstance(noise, NoiseKeys):
        raise TypeError(
            "graphed steps make the noise inside the step: pass NoiseKeys (or None when "
            f"every row is greedy), not {type(noise).__name__}"
        )
    values = {name: getattr(sampling, name) for name in _SETTINGS}
    values["history"] = history
    values["allow_eos"] = sampling.allow_eos  # None: allowed (the idle value)
    if noise is not None:
        values.update(seed=noise.seed, counter=noise.counter, greedy=sampling.greedy)
    return values


def _sampling_of(
    inputs: dict[str, torch.Tensor],
) -> tuple[BatchSampling, torch.Tensor, NoiseKeys]:
    sampling = BatchSampling(**{name: inputs[name] for name in (*_SETTINGS, "greedy", "allow_eos")})
    return sampling, inputs["history"], NoiseKeys(seed=inputs["seed"], counter=inputs["counter"])


class GraphedDecodeStep(GraphedStep):
    """``MossTTSRealtime.decode_step`` over a prefix of the cache's slots, replayed as CUDA
    graphs per (rows, context) bucket.

    A call steps any set of slots; the graph runs rows ``0..Bb-1`` (``Bb`` the bucket holding
    the highest slot stepped) with row i = slot i, so attention reads each slot's keys and
    values in place: no per-layer gather of the batch's caches, which at 150 sessions would
    copy tens of GB per step. Slots not stepped run with ``n_new = 0`` (their idle value):
    their lengths do not move and what they write lands at their own length, i.e. above their
    valid entries, where their next real write lands first. For that the cache needs one
    spare position per slot: every slot's length must stay below ``cache.max_len``. The
    engine hands out low slots first, so the prefix stays short.

    Args:
        model, cache: the model and the cache whose slots are stepped.
        window: repetition-penalty window (history buffer length).
        batch_buckets: row counts graphs are captured for (capped at the cache's slots).
        kv_buckets: context lengths attention is bucketed to (default: powers of two up to
            ``cache.max_len - 1``).
        use_cuda_graphs: capture graphs (CUDA only); False runs the padded path eagerly.
        compile_backend: also ``torch.compile`` the step (e.g. "inductor": fused kernels,
            fewer launches inside each graph). One trace serves every bucket (rows and
            context length are symbolic); ``fullgraph`` makes any host sync an error.
    """

    def __init__(
        self,
        model: MossTTSRealtime,
        cache: KVCache,
        window: int,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        kv_buckets: Sequence[int] | None = None,
        use_cuda_graphs: bool | None = None,
        compile_backend: str | None = None,
    ) -> None:
        self.model, self.cache, self.window = model, cache, window
        self.batch_buckets = capped_buckets(batch_buckets, cache.n_slots)
        # The last position of every slot is the idle rows' spare: no step attends to it.
        usable = max(cache.max_len - 1, 1)
        self.kv_buckets = tuple(sorted(kv_buckets or default_kv_buckets(usable)))
        if self.kv_buckets[-1] > cache.max_len:
            raise ValueError("kv buckets exceed the cache length")
        device = cache.device
        self._decode = model.decode_step
        if compile_backend is not None:
            self._decode = torch.compile(
                model.decode_step, backend=compile_backend, fullgraph=True, dynamic=True
            )
        cfg = model.cfg
        self._pad_row = _pad_row(cfg, device)
        self.graphs: BucketedGraph[tuple[int, int]] = BucketedGraph(
            "decode",
            self._inputs,
            self._body,
            device=device,
            use_cuda_graphs=use_cuda_graphs,
        )

    def bucket(self, rows: int, kv_len: int) -> tuple[int, int]:
        """(rows, context) bucket for stepping slots ``0..rows-1`` with ``kv_len`` positions."""
        b = smallest_bucket(self.batch_buckets, rows)
        k = smallest_bucket(self.kv_buckets, kv_len)
        if b is None or k is None:
            raise ValueError(f"rows {rows} / kv_len {kv_len} exceed the largest bucket")
        return b, k

    def _inputs(self, key: tuple[int, int]) -> dict[str, StaticInput]:
        B, dev = key[0], self.cache.device
        return {
            # row i is slot i's step row (a pad row when idle)
            "rows": StaticInput(self._pad_row.repeat(B, 1, 1), self._pad_row),
            # 1 for the slots stepped this call, 0 (idle: nothing moves) for the rest
            "n_new": StaticInput(torch.zeros(B, dtype=torch.int64, device=dev), 0),
            **_sampling_inputs(B, self.window, self.model.cfg.rvq, dev),
        }

    def _body(self, inputs: dict[str, torch.Tensor], key: tuple[int, int]):
        sampling, history, keys = _sampling_of(inputs)
        return self._decode(
            inputs["rows"],
            self.cache,
            None,  # row i is slot i: keys and values are read in place
            key[1],
            sampling,
            history,
            keys,
            inputs["n_new"],
        )  # frames [Bb, rvq], hidden [Bb, H]

    def capture_all(self, max_rows: int | None = None) -> int:
        """Prepares every bucket up to ``max_rows`` rows (default: all slots), so no session
        waits for a capture mid-call (vLLM does the same at start-up). Returns the count."""
        largest = self.bucket(max_rows or self.cache.n_slots, 1)[0]
        return self.graphs.prepare(
            (b, k) for b in self.batch_buckets if b <= largest for k in self.kv_buckets
        )

    def step(
        self,
        rows: torch.Tensor,
        slots: Sequence[int] | torch.Tensor,
        kv_len: int,
        sampling: BatchSampling,
        history: torch.Tensor,
        noise: NoiseKeys | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as ``MossTTSRealtime.decode_step`` (``history`` [B, window, rvq];
        ``noise`` the rows' ``NoiseKeys``, None when every row is greedy; ``slots`` distinct,
        best as a host list).

        Returns frames [B, rvq] and hidden [B, H], row b for ``slots[b]``."""
        if isinstance(slots, torch.Tensor):
            slots = slots.tolist()
        if len(slots) != rows.shape[0] or len(set(slots)) != len(slots):
            raise ValueError(f"need {rows.shape[0]} distinct slots, got {slots}")
        values = _sampling_values(sampling, history, noise)
        key = self.bucket(max(slots) + 1, kv_len)
        idx = torch.tensor(slots, dtype=torch.int64, device=self.cache.device)
        frames, hidden = self.graphs(key, idx, {"rows": rows, "n_new": 1, **values})
        return frames[idx], hidden[idx]


class GraphedFrameStep(GraphedStep):
    """``MossTTSRealtime.generate_frame`` (local transformer + sampling from a given hidden
    state) padded to batch buckets and replayed as CUDA graphs: the first frame of a turn,
    right after its prefill, which is on the time-to-first-audio path.

    Args:
        model: the TTS model; window: repetition-penalty window (history buffer length).
        max_batch: the most rows one call may bring (the buckets are capped there).
        use_cuda_graphs: capture graphs (CUDA only); False runs the padded path eagerly.
    """

    def __init__(
        self,
        model: MossTTSRealtime,
        window: int,
        max_batch: int,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        p = next(model.parameters())
        self.model, self.window, self.dtype, self.device = model, window, p.dtype, p.device
        self.batch_buckets = capped_buckets(batch_buckets, max_batch)
        self.graphs: BucketedGraph[int] = BucketedGraph(
            "first-frame",
            self._inputs,
            self._body,
            device=self.device,
            use_cuda_graphs=use_cuda_graphs,
        )

    def bucket(self, batch: int) -> int:
        b = smallest_bucket(self.batch_buckets, batch)
        if b is None:
            raise ValueError(f"batch {batch} exceeds the largest bucket")
        return b

    def _inputs(self, B: int) -> dict[str, StaticInput]:
        H = self.model.cfg.language.hidden_size
        return {
            "hidden": StaticInput(torch.zeros(B, H, dtype=self.dtype, device=self.device), 0),
            **_sampling_inputs(B, self.window, self.model.cfg.rvq, self.device),
        }

    def _body(self, inputs: dict[str, torch.Tensor], key: int) -> torch.Tensor:
        sampling, history, keys = _sampling_of(inputs)
        return self.model.generate_frame(inputs["hidden"], sampling, history, keys)  # [B, rvq]

    def capture_all(self) -> int:
        """Prepares every bucket; returns the count."""
        return self.graphs.prepare(self.batch_buckets)

    def step(
        self,
        hidden: torch.Tensor,
        sampling: BatchSampling,
        history: torch.Tensor,
        noise: NoiseKeys | None,
    ) -> torch.Tensor:
        """Same contract as ``MossTTSRealtime.generate_frame`` (``history`` [B, window, rvq];
        ``noise`` the rows' ``NoiseKeys``, None when every row is greedy). Returns a view of
        the graph's output: copy it before the next step."""
        values = _sampling_values(sampling, history, noise)
        B = hidden.shape[0]
        frames = self.graphs(self.bucket(B), slice(0, B), {"hidden": hidden, **values})
        return frames[:B]


class GraphedPrefill(GraphedStep):
    """A prefill chunk (``MossTTSRealtime.backbone`` over a few sessions' next rows) padded
    to (batch, rows, context) buckets and replayed as CUDA graphs: the turn prefill on the
    time-to-first-audio path, a few hundred launches at real size when eager.

    Unlike the decode step, rows are gathered by slot (a prefill involves a few sessions, not
    a prefix of the pool). Padding never changes a session: a batch row's rows past its
    ``n_new`` (and every row of a padding batch row, ``n_new`` 0) write their keys/values to
    the slot's spare last position (``backbone(spare_writes=True)``), so lengths grow by the
    real rows only and nothing lands above a slot's valid entries or past its end. The cache
    needs that spare position: every slot's length stays below ``cache.max_len`` (as for
    ``GraphedDecodeStep``). Chunks no bucket holds return None: run them eagerly.

    Args:
        model, cache: the model and the cache whose slots are prefilled.
        row_buckets: chunk lengths graphs are captured for.
        batch_buckets: sessions per call (capped at the cache's slots).
        kv_buckets: context lengths (default: powers of two up to ``cache.max_len - 1``).
        use_cuda_graphs: capture graphs (CUDA only); False runs the padded path eagerly.
    """

    def __init__(
        self,
        model: MossTTSRealtime,
        cache: KVCache,
        row_buckets: Sequence[int] = DEFAULT_PREFILL_ROWS,
        batch_buckets: Sequence[int] = DEFAULT_PREFILL_BATCHES,
        kv_buckets: Sequence[int] | None = None,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        self.model, self.cache = model, cache
        self.row_buckets = tuple(sorted({r for r in row_buckets if r >= 1}))
        self.batch_buckets = tuple(sorted({min(b, cache.n_slots) for b in batch_buckets if b >= 1}))
        usable = max(cache.max_len - 1, 1)  # the last position is the padding rows' spare
        self.kv_buckets = tuple(sorted(kv_buckets or default_kv_buckets(usable)))
        if self.kv_buckets[-1] >= cache.max_len:
            raise ValueError("kv buckets must leave the spare position out")
        cfg, device = model.cfg, cache.device
        self._pad_row = _pad_row(cfg, device)
        self.graphs: BucketedGraph[tuple[int, int, int]] = BucketedGraph(
            "prefill",
            self._inputs,
            self._body,
            device=device,
            use_cuda_graphs=use_cuda_graphs,
        )

    def bucket(self, batch: int, rows: int, kv_len: int) -> tuple[int, int, int] | None:
        """(batch, rows, context) bucket of a chunk, or None if none holds it."""
        b = smallest_bucket(self.batch_buckets, batch)
        t = smallest_bucket(self.row_buckets, rows)
        k = smallest_bucket(self.kv_buckets, kv_len)
        return None if b is None or t is None or k is None else (b, t, k)

    def _inputs(self, key: tuple[int, int, int]) -> dict[str, StaticInput]:
        B, T, _ = key
        dev = self.cache.device
        return {
            "rows": StaticInput(self._pad_row.repeat(B, T, 1), self._pad_row),  # [B, T, 17]
            "slots": StaticInput(torch.zeros(B, dtype=torch.int64, device=dev), 0),
            "n_new": StaticInput(torch.zeros(B, dtype=torch.int64, device=dev), 0),  # idle
        }

    def _body(self, inputs: dict[str, torch.Tensor], key: tuple[int, int, int]) -> torch.Tensor:
        B, _, K = key
        n_new = inputs["n_new"]
        hidden = self.model.backbone(
            inputs["rows"], self.cache, inputs["slots"], n_new, K, spare_writes=True
        )  # [B, T, H]
        last = (n_new - 1).clamp(min=0)
        return hidden[torch.arange(B, device=n_new.device), last]  # [B, H]

    def capture_all(self) -> int:
        """Prepares every bucket; returns the count."""
        return self.graphs.prepare(
            (b, t, k) for b in self.batch_buckets for t in self.row_buckets for k in self.kv_buckets
        )

    def step(
        self, rows: torch.Tensor, slots: Sequence[int], n_new: Sequence[int], kv_len: int
    ) -> torch.Tensor | None:
        """Appends ``rows[b, :n_new[b]]`` to slot ``slots[b]`` (distinct slots, lengths below
        the spare) and returns the hidden state of each one's last row, [B, H] (a copy); or
        None, changing nothing, when no bucket holds the chunk (run it eagerly then). More
        sessions than the largest batch bucket run as several replays.

        Args:
            rows: [B, T, 17]; kv_len: a bound on every slot's length + its ``n_new``.
        """
        B = rows.shape[0]
        slots, n_new = list(slots), list(n_new)
        if len(slots) != B or len(n_new) != B or len(set(slots)) != B:
            raise ValueError(f"need {B} distinct slots and row counts, got {slots} / {n_new}")
        most = self.batch_buckets[-1]
        groups = []  # (first session, sessions, rows, bucket)
        for i in range(0, B, most):
            n = n_new[i : i + most]
            key = self.bucket(len(n), max(n), kv_len)
            if key is None:
                return None
            groups.append((i, len(n), max(n), key))
        dev = self.cache.device
        rows = rows.to(dev)
        out = []
        for i, b, t, key in groups:
            values = {
                "rows": rows[i : i + b, :t],
                "slots": torch.tensor(slots[i : i + b], dtype=torch.int64, device=dev),
                "n_new": torch.tensor(n_new[i : i + b], dtype=torch.int64, device=dev),
            }
            out.append(self.graphs(key, (slice(0, b), slice(0, t)), values)[:b])
        return out[0].clone() if len(out) == 1 else torch.cat(out)
