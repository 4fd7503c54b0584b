"""The decode step (and a turn's first frame) on static buffers, captured as CUDA graphs per
(batch, context) bucket.

A real-time step is a few thousand small kernels (one backbone row, 16 local-transformer
positions, sampling); at small batches their launch overhead, not the GPU, sets the frame
time. Replaying a captured graph launches them all at once. Graphs need static shapes and
addresses, so every call is padded up to a row bucket and a context-length bucket, and every
input is copied into a buffer the graph reads (see ``GraphedDecodeStep`` for how idle rows
stay harmless).

On a device without CUDA graphs (CPU) the same padded, static-buffer path runs eagerly, so
tests on CPU exercise exactly the logic the GPU replays.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moss_pipecat._log import logger
from moss_pipecat.cuda_graphs import capture_graph
from moss_pipecat.model.kv_cache import KVCache
from moss_pipecat.model.moss_tts import MossTTSRealtime
from moss_pipecat.model.sampling import NO_HISTORY, BatchSampling, NoiseKeys

# Fine steps at the top: a batch of 130 pads to 160, not 256.
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


def default_kv_buckets(max_len: int, smallest: int = 512) -> tuple[int, ...]:
    """Powers of two from ``smallest`` up to (and ending exactly at) ``max_len``."""
    out, k = [], smallest
    while k < max_len:
        out.append(k)
        k *= 2
    return (*out, max_len)


def _sampling_buffers(B: int, window: int, rvq: int, dev) -> dict:
    """Static per-row sampling inputs; fresh rows are greedy with an empty penalty window.
    The noise of sampled rows is made inside the step from per-row keys (seed, counter)."""
    return {
        "history": torch.full((B, window, rvq), NO_HISTORY, dtype=torch.int64, device=dev),
        "keys": NoiseKeys(
            seed=torch.zeros(B, dtype=torch.int64, device=dev),
            counter=torch.zeros(B, dtype=torch.int64, device=dev),
        ),
        "sampling": BatchSampling(
            temperature=torch.ones(B, device=dev),
            top_k=torch.zeros(B, dtype=torch.int64, device=dev),
            top_p=torch.ones(B, device=dev),
            penalty=torch.ones(B, device=dev),
            greedy=torch.ones(B, dtype=torch.bool, device=dev),
            allow_eos=torch.ones(B, dtype=torch.bool, device=dev),
        ),
    }


def _check_keys(noise) -> None:
    if noise is not None and not isinstance(noise, NoiseKeys):
        raise TypeError(
            "graphed steps make the noise inside the step: pass NoiseKeys (or None when "
            f"every row is greedy), not {type(noise).__name__}"
        )


def _fill_sampling(buf, B: int, sampling, history, noise: NoiseKeys | None) -> None:
    """Copies a batch's sampling inputs into rows 0..B-1; padding rows become greedy."""
    _check_keys(noise)
    buf.history[:B].copy_(history)
    buf.history[B:] = NO_HISTORY
    if noise is not None:
        buf.keys.seed[:B].copy_(noise.seed)
        buf.keys.counter[:B].copy_(noise.counter)
    for name in ("temperature", "top_k", "top_p", "penalty", "greedy"):
        getattr(buf.sampling, name)[:B].copy_(getattr(sampling, name))
    _copy_allow_eos(buf.sampling.allow_eos, slice(0, B), sampling.allow_eos)
    buf.sampling.allow_eos[B:] = True
    if noise is None:
        buf.sampling.greedy[:B] = True  # all greedy: the stale noise is never used
    buf.sampling.greedy[B:] = True


def _copy_allow_eos(buf: torch.Tensor, rows, allow: torch.Tensor | None) -> None:
    """Copies a batch's ``allow_eos`` into ``buf[rows]`` (None: allowed)."""
    if allow is None:
        buf[rows] = True
    else:
        buf[rows] = allow


@dataclass
class _Buffers:
    rows: torch.Tensor  # [Bb, 1, 17]: row i is slot i's step row (a pad row when idle)
    n_new: torch.Tensor  # [Bb] int64: 1 for the slots stepped this call, 0 for the rest
    history: torch.Tensor  # [Bb, W, rvq]
    keys: NoiseKeys  # [Bb] seed and counter per row
    sampling: BatchSampling
    frames: torch.Tensor | None = None  # outputs, owned by the graph
    hidden: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None


class GraphedDecodeStep:
    """``MossTTSRealtime.decode_step`` over a prefix of the cache's slots, replayed as CUDA
    graphs per (rows, context) bucket.

    A call steps any set of slots; the graph runs rows ``0..Bb-1`` (``Bb`` the bucket holding
    the highest slot stepped) with row i = slot i, so attention reads each slot's keys and
    values in place: no per-layer gather of the batch's caches, which at 150 sessions would
    copy tens of GB per step. Slots not stepped run with ``n_new = 0``: their lengths do not
    move and what they write lands at their own length, i.e. above their valid entries, where
    their next real write lands first. For that the cache needs one spare position per slot:
    every slot's length must stay below ``cache.max_len``. The engine hands out low slots
    first, so the prefix stays short.

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
        n = cache.n_slots
        self.batch_buckets = tuple(sorted({min(b, n) for b in batch_buckets if b >= 1} | {n}))
        # The last position of every slot is the idle rows' spare: no step attends to it.
        usable = max(cache.max_len - 1, 1)
        self.kv_buckets = tuple(sorted(kv_buckets or default_kv_buckets(usable)))
        if self.kv_buckets[-1] > cache.max_len:
            raise ValueError("kv buckets exceed the cache length")
        device = cache.device
        self.use_cuda_graphs = device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self._pool = None
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._decode = model.decode_step
        if compile_backend is not None:
            self._decode = torch.compile(
                model.decode_step, backend=compile_backend, fullgraph=True, dynamic=True
            )
        cfg = model.cfg
        self._pad_row = torch.full(
            (cfg.channels,), cfg.audio_pad_token, dtype=torch.int64, device=device
        )
        self._pad_row[0] = cfg.text_pad

    def bucket(self, rows: int, kv_len: int) -> tuple[int, int]:
        """(rows, context) bucket for stepping slots ``0..rows-1`` with ``kv_len`` positions."""
        i = bisect.bisect_left(self.batch_buckets, rows)
        j = bisect.bisect_left(self.kv_buckets, kv_len)
        if i == len(self.batch_buckets) or j == len(self.kv_buckets):
            raise ValueError(f"rows {rows} / kv_len {kv_len} exceed the largest bucket")
        return self.batch_buckets[i], self.kv_buckets[j]

    def _make_buffers(self, B: int) -> _Buffers:
        cfg, dev = self.model.cfg, self.cache.device
        return _Buffers(
            rows=self._pad_row.repeat(B, 1, 1),
            n_new=torch.zeros(B, dtype=torch.int64, device=dev),
            **_sampling_buffers(B, self.window, cfg.rvq, dev),
        )

    def _run(self, buf: _Buffers, kv_len: int) -> None:
        buf.frames, buf.hidden = self._decode(
            buf.rows,
            self.cache,
            None,  # row i is slot i: keys and values are read in place
            kv_len,
            buf.sampling,
            buf.history,
            buf.keys,
            buf.n_new,
        )

    def _warm_up(self, buf: _Buffers, kv_len: int) -> None:
        """The runs before capture (allocator and kernels settle). They really execute: fresh
        buffers step no slot (``n_new`` 0), so no session's length or valid entries change."""
        for _ in range(2):
            self._run(buf, kv_len)

    def _capture(self, buf: _Buffers, kv_len: int) -> None:
        buf.graph = capture_graph(
            lambda: self._run(buf, kv_len), lambda: self._warm_up(buf, kv_len), self._pool
        )
        self._pool = buf.graph.pool()
        logger.debug(f"captured decode graph rows={buf.rows.shape[0]} kv_len={kv_len}")

    def prepare(self, batch_bucket: int, kv_bucket: int) -> _Buffers:
        """The static buffers (and, with CUDA graphs, the captured graph) of one bucket."""
        buf = self._buffers.get((batch_bucket, kv_bucket))
        if buf is None:
            buf = self._buffers[(batch_bucket, kv_bucket)] = self._make_buffers(batch_bucket)
            if self.use_cuda_graphs:
                # Capture before any input is copied in: the warm-up runs really execute.
                self._capture(buf, kv_bucket)
        return buf

    def capture_all(self, max_rows: int | None = None) -> int:
        """Prepares every bucket up to ``max_rows`` rows (default: all slots), so no session
        waits for a capture mid-call (vLLM does the same at start-up). Returns the count."""
        largest = self.bucket(max_rows or self.cache.n_slots, 1)[0]
        pairs = [(b, k) for b in self.batch_buckets if b <= largest for k in self.kv_buckets]
        for b, k in pairs:
            self.prepare(b, k)
        return len(pairs)

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
        _check_keys(noise)
        Bb, K = self.bucket(max(slots) + 1, kv_len)
        buf = self.prepare(Bb, K)
        idx = torch.tensor(slots, dtype=torch.int64, device=buf.rows.device)
        buf.rows[:] = self._pad_row
        buf.rows[idx] = rows
        buf.n_new.zero_()
        buf.n_new[idx] = 1
        buf.history.fill_(NO_HISTORY)
        buf.history[idx] = history
        if noise is not None:
            buf.keys.seed[idx] = noise.seed
            buf.keys.counter[idx] = noise.counter
        greedy = buf.sampling.greedy
        for name in ("temperature", "top_k", "top_p", "penalty"):
            getattr(buf.sampling, name)[idx] = getattr(sampling, name)
        buf.sampling.allow_eos.fill_(True)
        _copy_allow_eos(buf.sampling.allow_eos, idx, sampling.allow_eos)
        greedy.fill_(True)  # idle rows: argmax, never the stale noise
        if noise is not None:
            greedy[idx] = sampling.greedy
        if self.use_cuda_graphs:
            buf.graph.replay()
        else:
            self._run(buf, K)
        return buf.frames[idx], buf.hidden[idx]


@dataclass
class _FrameBuffers:
    hidden: torch.Tensor  # [B, H]
    history: torch.Tensor  # [B, W, rvq]
    keys: NoiseKeys  # [B] seed and counter per row
    sampling: BatchSampling
    frames: torch.Tensor | None = None  # output, owned by the graph
    graph: torch.cuda.CUDAGraph | None = None


class GraphedFrameStep:
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
        capped = {min(b, max_batch) for b in batch_buckets if b >= 1}
        self.batch_buckets = tuple(sorted(capped | {max_batch}))
        dev_is_cuda = self.device.type == "cuda"
        self.use_cuda_graphs = dev_is_cuda if use_cuda_graphs is None else use_cuda_graphs
        self._pool = None
        self._buffers: dict[int, _FrameBuffers] = {}

    def bucket(self, batch: int) -> int:
        i = bisect.bisect_left(self.batch_buckets, batch)
        if i == len(self.batch_buckets):
            raise ValueError(f"batch {batch} exceeds the largest bucket")
        return self.batch_buckets[i]

    def _run(self, buf: _FrameBuffers) -> None:
        buf.frames = self.model.generate_frame(buf.hidden, buf.sampling, buf.history, buf.keys)

    def _warm_up(self, buf: _FrameBuffers) -> None:
        for _ in range(2):  # touches nothing but the buffers
            self._run(buf)

    def _capture(self, buf: _FrameBuffers) -> None:
        buf.graph = capture_graph(lambda: self._run(buf), lambda: self._warm_up(buf), self._pool)
        self._pool = buf.graph.pool()
        logger.debug(f"captured first-frame graph batch={buf.hidden.shape[0]}")

    def prepare(self, batch_bucket: int) -> _FrameBuffers:
        """The static buffers (and, with CUDA graphs, the captured graph) of one bucket."""
        buf = self._buffers.get(batch_bucket)
        if buf is None:
            cfg = self.model.cfg
            buf = self._buffers[batch_bucket] = _FrameBuffers(
                hidden=torch.zeros(
                    batch_bucket, cfg.language.hidden_size, dtype=self.dtype, device=self.device
                ),
                **_sampling_buffers(batch_bucket, self.window, cfg.rvq, self.device),
            )
            if self.use_cuda_graphs:
                self._capture(buf)
        return buf

    def capture_all(self) -> int:
        """Prepares every bucket; returns the count."""
        for b in self.batch_buckets:
            self.prepare(b)
        return len(self.batch_buckets)

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
        B = hidden.shape[0]
        buf = self.prepare(self.bucket(B))
        buf.hidden[:B].copy_(hidden)
        buf.hidden[B:] = 0
        _fill_sampling(buf, B, sampling, history, noise)
        if self.use_cuda_graphs:
            buf.graph.replay()
        else:
            self._run(buf)
        return buf.frames[:B]
