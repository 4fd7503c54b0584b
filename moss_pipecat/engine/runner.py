"""The model runner: every device call the engine makes, batched, on plain tensors and lists.

It knows nothing of sessions or turns: the scheduler hands it slots, rows and each row's
sampling, and gets frames and PCM back. It owns what lives on the device besides the KV pools:
the repetition-history buffer (one row per slot), the codec's streaming state, and the graphed
steps (decode and prefill per KV pool, first frame, codec).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.cuda_graphs import smallest_bucket
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.kv_pools import KVPools
from moss_pipecat.engine.start_up import PhaseCosts, cache_entries
from moss_pipecat.model import BatchSampling, MossTTSRealtime, SamplingParams
from moss_pipecat.model.row_blocks import padded_rows
from moss_pipecat.model.sampling import NO_HISTORY, NoiseKeys


@dataclass(frozen=True)
class RowSampling:
    """How one row of a batch samples its next frame."""

    params: SamplingParams
    seed: int  # the session's noise key ...
    counter: int  # ... and its frame counter: the noise is a pure function of both
    eos_allowed: bool
    hist_row: int  # its row of the repetition-history buffer


class ModelRunner:
    """Batched prefill, frame and codec calls for the engine (engine thread only)."""

    def __init__(
        self,
        model: MossTTSRealtime,
        codec: Any | None,
        config: EngineConfig,
        pools: KVPools,
        graphed: bool,
    ) -> None:
        self.model, self.codec, self.config, self.pools = model, codec, config, pools
        self.device = next(model.parameters()).device
        window = config.repetition_window_max
        self.hist = torch.full(
            (pools.n_slots, window, model.cfg.rvq),
            NO_HISTORY,
            dtype=torch.int64,
            device=self.device,
        )  # [slots, W, rvq]: each slot's last W frames, oldest first
        self.codec_state = codec.new_stream_state(pools.n_slots) if codec is not None else None
        # The codec runs on its own stream (``EngineConfig.overlap_codec``), beside the next
        # decode step; on a CPU a stream is a no-op and the codec runs where it is called.
        self.codec_stream = (
            torch.cuda.Stream(self.device)
            if self.device.type == "cuda" and config.overlap_codec
            else None
        )
        self.host_syncs = 0  # host waits on the device (``to_host``, ``sync``), for tests
        self.device_wait_s = 0.0  # seconds the host spent in those waits (benchmarks)
        # Graphed steps (None: eager). Decode and prefill graphs are bound to a pool's cache.
        self.decode_graphs: list[Any] = [None] * len(pools)
        self.prefill_graphs: list[Any] = [None] * len(pools)
        self.frame_graph = self.codec_graph = None
        self.start_up: dict | None = None  # what preparing the graphs cost (capture_graphs)
        if graphed:
            from moss_pipecat.model.graphs import (
                GraphedDecodeStep,
                GraphedFrameStep,
                GraphedPrefill,
            )

            for i, pool in enumerate(pools):
                self.decode_graphs[i] = GraphedDecodeStep(
                    model, pool.cache, window=window, compile_backend=config.compile_decode
                )
                if config.graphed_prefill:
                    self.prefill_graphs[i] = GraphedPrefill(model, pool.cache)
            self.frame_graph = GraphedFrameStep(model, window=window, max_batch=pools.n_slots)
            if codec is not None:
                from moss_pipecat.codec.graphs import GraphedCodecDecode

                self.codec_graph = GraphedCodecDecode(codec, self.codec_state)

    # ---- graphs ------------------------------------------------------------------------------
    @property
    def graphed(self) -> bool:
        return self.decode_graphs[0] is not None

    @property
    def uses_cuda_graphs(self) -> bool:
        step = self.decode_graphs[0]
        return step is not None and step.use_cuda_graphs

    def batch_of(self, n: int, pool: int = 0) -> int:
        """The batch a call over slots ``0..n-1`` (or ``n`` rows) runs at: the graph bucket it
        replays (eager: ``n``). Costs are learned and projected at this size: it is what the
        device does (129 calls replay the bucket of 160)."""
        graph = self.decode_graphs[pool]
        if graph is None or n <= 0:
            return n
        return smallest_bucket(graph.batch_buckets, n) or n

    def graph_steps(self) -> list[Any]:
        """Every graphed step (for capture and for counting what runs outside graphs)."""
        steps = [g for g in self.decode_graphs + self.prefill_graphs if g is not None]
        return steps + [g for g in (self.frame_graph, self.codec_graph) if g is not None]

    def capture_graphs(self) -> int:
        """Prepares (on CUDA: captures) every bucket each step can hit; returns their number.
        What it cost, by phase, is kept in ``start_up`` (``start_up.PhaseCosts.report``). Once:
        a second call (``start()`` after an explicit capture) prepares nothing and keeps the
        first call's report (it would otherwise read as a start-up that cost 0 s)."""
        if self.start_up is not None:
            return sum(p["buckets"] for p in self.start_up["phases"].values())
        costs = PhaseCosts(self.device)
        entries = cache_entries()
        with torch.inference_mode():
            for pool, decode, prefill in zip(
                self.pools, self.decode_graphs, self.prefill_graphs, strict=True
            ):
                if decode is not None:
                    costs.measure("decode", lambda d=decode, p=pool: d.capture_all(p.n_slots))
                if prefill is not None:
                    costs.measure("prefill", prefill.capture_all)
            if self.frame_graph is not None:
                costs.measure("first_frame", self.frame_graph.capture_all)
            if self.codec_graph is not None:  # the codes it decodes: rvq quantizers
                costs.measure("codec", lambda: self.codec_graph.capture_all(self.model.cfg.rvq))
        costs.cache_entries_added = cache_entries() - entries
        self.start_up = costs.report()
        n = sum(p["buckets"] for p in costs.phases.values())
        logger.info(
            f"prepared {n} graph buckets in {self.start_up['seconds']:.1f} s "
            f"({costs.cache_entries_added} new kernel-cache entries)"
        )
        return n

    def sync(self) -> None:
        """Waits for the work queued on the main stream (timing a call whose results stay
        there); not for the codec beside it."""
        self.host_syncs += 1
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            torch.cuda.current_stream(self.device).synchronize()
            self.device_wait_s += time.perf_counter() - t0

    def to_host(self, tensors: Sequence[torch.Tensor], codec: bool = False) -> list[torch.Tensor]:
        """The tensors on the host, with one wait on the device: the one place the engine's
        results cross to the host (frames and PCM of a tick together; counted). ``codec``:
        some were made on the codec stream (the wait covers it too)."""
        self.host_syncs += 1
        if self.device.type != "cuda":
            return [t.cpu() for t in tensors]
        main = torch.cuda.current_stream(self.device)
        if codec and self.codec_stream is not None:
            main.wait_stream(self.codec_stream)  # PCM made beside this tick's decode step
        out = [t.to("cpu", non_blocking=True) for t in tensors]  # pinned, queued on main
        t0 = time.perf_counter()
        main.synchronize()
        self.device_wait_s += time.perf_counter() - t0
        return out

    # ---- backbone ----------------------------------------------------------------------------
    def prefill(
        self, pool: int, rows: Sequence[torch.Tensor], slots: list[int], lengths: list[int]
    ) -> torch.Tensor:
        """Feeds each slot its ``rows[b]`` [n_b, 17] after its ``lengths[b]`` cached positions
        (one padded backbone call); returns each slot's last hidden state [B, H]."""
        sizes = [r.shape[0] for r in rows]
        T = padded_rows(max(sizes))
        padded = torch.stack([torch.cat((r, r[-1:].expand(T - r.shape[0], -1))) for r in rows]).to(
            self.device
        )  # [B, T, 17]; padding repeats a real row, writes to the spare, is never attended
        graph = self.prefill_graphs[pool]
        if graph is not None:
            need = max(n + k for n, k in zip(lengths, sizes, strict=True))
            last = graph.step(padded, slots, sizes, need)  # None: no bucket holds it
            if last is not None:
                return last
        # Eager and exact: whole row blocks over whole-slot keys (``model.row_blocks``), so
        # each row's numbers are the same however its turn was split or batched.
        slot_t = torch.tensor(slots, device=self.device)
        n_new = torch.tensor(sizes, device=self.device)
        cache = self.pools[pool].cache
        hidden = self.model.backbone(padded, cache, slot_t, n_new, spare_writes=True)
        last_row = n_new - 1
        return hidden[torch.arange(len(rows), device=self.device), last_row]  # [B, H]

    # ---- frames ------------------------------------------------------------------------------
    def first_frames(self, hidden: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
        """Frame 0 of new turns from their last prefill hidden states [B, H] (the repetition
        penalty starts afresh); returns [B, rvq] on the device (``to_host`` brings them)."""
        hist_rows = self._hist_rows(rows)
        self.hist[hist_rows] = NO_HISTORY
        hist, penalty_hist, sampling, noise = self._sampling_inputs(rows, hist_rows)
        if self.frame_graph is not None:
            frames = self.frame_graph.step(hidden, sampling, penalty_hist, noise)  # [B, rvq]
        else:
            # Exact, as ``prefill``: the padding rows copy the first; only the real rows are
            # sampled (``LocalTransformer.generate``).
            pad = self._row_block_padding(len(rows))
            hidden = torch.cat((hidden, hidden[:1].expand(pad, -1)))  # [B + pad, H]
            frames = self.model.generate_frame(hidden, sampling, penalty_hist, noise)
        self._push_history(hist_rows, hist, frames)
        return frames

    def decode(
        self,
        pool: int,
        step_rows: torch.Tensor,
        slots: list[int],
        lengths: list[int],
        rows: list[RowSampling],
    ) -> torch.Tensor:
        """One step for each slot: its step row [B, 17] in, its next frame out (one fused
        call); returns [B, rvq] on the device (``to_host`` brings them)."""
        x = step_rows[:, None].to(self.device)  # [B, 1, 17]
        hist_rows = self._hist_rows(rows)
        hist, penalty_hist, sampling, noise = self._sampling_inputs(rows, hist_rows)
        graph = self.decode_graphs[pool]
        if graph is not None:
            kv_len = max(lengths) + 1
            frames, _ = graph.step(x, slots, kv_len, sampling, penalty_hist, noise)
        else:
            # Exact, as ``prefill``: padding rows copy the first and change nothing (n_new 0,
            # their writes on the spare position); only the real rows are sampled.
            B, pad = len(rows), self._row_block_padding(len(rows))
            x = torch.cat((x, x[:1].expand(pad, -1, -1)))  # [B + pad, 1, 17]
            slot_t = torch.tensor(slots + slots[:1] * pad, device=self.device)
            n_new = torch.tensor([1] * B + [0] * pad, device=self.device)
            cache = self.pools[pool].cache
            frames, _ = self.model.decode_step(
                x, cache, slot_t, None, sampling, penalty_hist, noise, n_new, spare_writes=True
            )
        self._push_history(hist_rows, hist, frames)
        return frames

    def copy_history(self, src_row: int, dst_row: int) -> None:
        self.hist[dst_row] = self.hist[src_row]

    def _hist_rows(self, rows: list[RowSampling]) -> torch.Tensor:
        return torch.tensor([r.hist_row for r in rows], device=self.device)

    @staticmethod
    def _row_block_padding(n: int) -> int:
        """The padding rows that fill an eager call of ``n`` rows to whole row blocks
        (``model.row_blocks``)."""
        return padded_rows(n) - n

    def _sampling_inputs(self, rows: list[RowSampling], hist_rows: torch.Tensor | None = None):
        """Penalty history (each row's own window), sampling settings and noise keys (the
        noise itself is made inside the step from each row's seed and counter: no launch per
        session)."""
        dev = self.device
        hist_rows = self._hist_rows(rows) if hist_rows is None else hist_rows
        hist = self.hist[hist_rows]  # [B, W, rvq]
        W = hist.shape[1]
        windows = torch.tensor([r.params.repetition_window for r in rows], device=dev)
        old = torch.arange(W, device=dev)[None, :] < (W - windows)[:, None]  # [B, W]
        penalty_hist = hist.masked_fill(old[:, :, None], NO_HISTORY)
        params = [r.params for r in rows]
        noise = None
        if not all(p.greedy for p in params):
            noise = NoiseKeys.from_ints([r.seed for r in rows], [r.counter for r in rows], dev)
        allow = [r.eos_allowed for r in rows]
        return hist, penalty_hist, BatchSampling.from_params(params, dev, allow), noise

    def _push_history(self, rows: torch.Tensor, hist: torch.Tensor, frames: torch.Tensor) -> None:
        if hist.shape[1]:
            self.hist[rows] = torch.cat((hist[:, 1:], frames[:, None]), dim=1)

    # ---- codec -------------------------------------------------------------------------------
    def open_streams(self, n: int) -> list[int]:
        """Codec stream slots for ``n`` turns starting (their decoder state starts afresh, on
        the codec's stream: after the codec calls queued there, which may still read a slot
        that was just freed)."""
        if self.codec_stream is None:
            return list(self.codec_state.add_streams(n))
        self.codec_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.codec_stream):
            return list(self.codec_state.add_streams(n))

    def close_stream(self, slot: int) -> None:
        self.codec_state.remove_stream(slot)

    def pcm(self, frames: Sequence[torch.Tensor], streams: list[int]) -> torch.Tensor:
        """16-bit PCM [B, samples] of one frame [rvq] per codec stream (one batched decode
        step), left on the device; with a codec stream it runs there, ordered after the
        work queued so far (the frames it decodes) and beside what is queued next."""
        from moss_pipecat.codec import pcm16

        size = self.codec.config.quantizer.codebook_size
        codes = torch.stack(list(frames), dim=1).to(self.device)  # one copy for the batch
        # [Q, B, 1]; specials (pad/BOS) can only appear in untrained models: clamp for the codec
        codes = codes[:, :, None].clamp(0, size - 1)
        if self.codec_stream is None:
            return pcm16(self._codec_step(codes, streams))
        self.codec_stream.wait_stream(torch.cuda.current_stream(self.device))  # an event
        with torch.cuda.stream(self.codec_stream):
            codes.record_stream(self.codec_stream)  # made on main, freed after the codec
            return pcm16(self._codec_step(codes, streams))

    def _codec_step(self, codes: torch.Tensor, streams: list[int]) -> torch.Tensor:
        if self.codec_graph is not None:
            return self.codec_graph.step(codes, streams)
        return self.codec.decode_step(self.codec_state, codes, streams, check=False)

    @staticmethod
    def pcm_bytes(pcm: torch.Tensor) -> list[bytes]:
        """Each row's bytes of host PCM [B, samples] (int16, little-endian)."""
        rows = pcm.numpy().astype("<i2", copy=False)
        return [row.tobytes() for row in rows]
