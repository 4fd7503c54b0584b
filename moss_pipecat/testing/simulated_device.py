"""A simulated device: the model runner's interface, well-formed outputs, a virtual clock.

``SimulatedRunner`` stands in for ``engine.runner.ModelRunner``: every call returns what the
real one would in shape and kind (hidden states, frames of codes with EOS after a drawn turn
length, silent PCM) and advances a ``VirtualClock`` by what the call costs on a measured GPU
(``DeviceCosts``). ``simulated_engine`` builds a ``MossEngine`` around it with a model on the
``meta`` device (its KV pools take no memory), so the real scheduler serves hundreds of
sessions on a CPU in seconds of wall time (in the spirit of the Vidur inference simulator).
Drive it without the engine thread: ``core.execute`` and ``core.tick``, with the clock moved
between events (``testing.sim_traffic``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from moss_pipecat.cuda_graphs import DEFAULT_BATCH_BUCKETS, capped_buckets, smallest_bucket
from moss_pipecat.engine import EngineConfig, MossEngine, RowLayout
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.engine.kv_pools import KVPools
from moss_pipecat.engine.runner import RowSampling
from moss_pipecat.model import MossTTSRealtime, MossTTSRealtimeConfig

SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz


# The share of the codec's time that ran beside the decode step on an H200 under traffic
# (fused ops, 190-260 calls): the simulation of the 2026-12-04b traffic run gives its measured
# capacity (192 calls) within 15 % at 0-0.1, and twice it (382) at 1. The two streams'
# graphs each fill the GPU at these batches; little runs truly side by side.
H200_OVERLAP_SHARE = 0.1


class SimulatedRunner:
    """``ModelRunner``'s calls on a simulated device.

    Args:
        clock: advanced by each call's cost.
        costs: seconds per call kind and size.
        rvq, audio_eos: the frames' codebooks and the EOS code (codebook 0 ends a turn).
        n_slots: KV slots (one repetition-history row and one codec stream each).
        turn_frames: (lo, hi): each turn's length in frames is drawn uniformly from it (by the
            session's seed and frame counter, so a run is reproducible); the frame after the
            last is EOS (if the engine allows EOS then; else audio goes on).
        overlap: the codec runs on a stream of its own (``EngineConfig.overlap_codec``): a
            codec call occupies that stream from when it is launched (or the stream frees)
            for its cost, and only a host wait (``to_host``) waits for it; otherwise it
            advances the clock as it is called.
        overlap_share: with ``overlap``, the share of a codec call's cost that truly runs
            beside the main stream; the rest slows the main stream by as much (the two
            streams share one GPU's memory bandwidth and SMs). 1: free beside the decode step;
            0: no faster than one stream.
        batch_buckets: a call is priced at the batch the real runner's graph replays: the
            decode step and the codec frame run slots ``0..bucket-1`` (the bucket of the
            highest slot + 1), a first frame the bucket of its rows. None: at the call's own
            size. (Priced by rows, 219 simulated calls passed where 128-143 did on the H200,
            2026-12-04.)
    """

    graphed = False
    uses_cuda_graphs = False

    def __init__(
        self,
        clock: VirtualClock,
        costs: DeviceCosts,
        rvq: int,
        audio_eos: int,
        n_slots: int,
        turn_frames: tuple[int, int] = (40, 120),
        overlap: bool = False,
        batch_buckets: Sequence[int] | None = DEFAULT_BATCH_BUCKETS,
        overlap_share: float = 1.0,
    ) -> None:
        if not 0.0 <= overlap_share <= 1.0:
            raise ValueError("overlap_share is a share: 0 .. 1")
        self.overlap_share = overlap_share
        self._main_debt = 0.0  # main-stream seconds the codec stream's share has cost
        self._buckets = None if batch_buckets is None else capped_buckets(batch_buckets, n_slots)
        self.clock, self.costs = clock, costs
        self.overlap = overlap
        self._codec_free_at = 0.0  # when the codec stream has done what it was given
        self.host_syncs = 0
        self.rvq, self.audio_eos = rvq, audio_eos
        self.turn_frames = turn_frames
        self._made = [0] * n_slots  # frames of the current turn, per history row
        self._length = [0] * n_slots  # its drawn length
        self._free_streams = set(range(n_slots))
        self.calls: dict[str, int] = {}

    @classmethod
    def factory(cls, clock: VirtualClock, costs: DeviceCosts, **kw: Any):
        """A ``runner_factory`` for ``MossEngine`` (same arguments as ``ModelRunner``)."""

        def make(model, codec, config: EngineConfig, pools: KVPools, graphed: bool):
            cfg = model.cfg
            kw.setdefault("overlap", config.overlap_codec)
            return cls(clock, costs, cfg.rvq, cfg.audio_eos, pools.n_slots, **kw)

        return make

    def batch_of(self, n: int, pool: int = 0) -> int:
        """What a call over ``n`` rows (slots ``0..n-1``) runs at (``ModelRunner.batch_of``)."""
        if self._buckets is None or n <= 0:
            return n
        return smallest_bucket(self._buckets, n) or n

    def _spend(self, kind: str, size: int) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.clock.advance(self.costs.cost(kind, size) + self._main_debt)
        self._main_debt = 0.0

    # ---- ModelRunner's interface ----------------------------------------------------------------
    def graph_steps(self) -> list[Any]:
        return []

    def capture_graphs(self) -> int:
        return 0

    def sync(self) -> None:
        self.host_syncs += 1  # the main stream: the clock is there already
        self.clock.advance(self._main_debt)
        self._main_debt = 0.0

    def to_host(self, tensors: Sequence[torch.Tensor], codec: bool = False) -> list[torch.Tensor]:
        """One host wait: for the main stream (the clock), and the codec stream if asked."""
        self.host_syncs += 1
        self.clock.advance(self._main_debt)
        self._main_debt = 0.0
        if codec:
            self.clock.advance_to(self._codec_free_at)
        return list(tensors)

    @staticmethod
    def pcm_bytes(pcm: torch.Tensor) -> list[bytes]:
        return [bytes(2 * pcm.shape[1])] * pcm.shape[0]  # silence, 16-bit

    def prefill(
        self, pool: int, rows: Sequence[torch.Tensor], slots: list[int], lengths: list[int]
    ) -> torch.Tensor:
        self._spend("prefill", sum(r.shape[0] for r in rows))
        return torch.zeros(len(rows), 1)  # [B, H]: nothing reads a simulated hidden state

    def first_frames(self, hidden: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
        self._spend("first_frame", self.batch_of(len(rows)))
        for r in rows:
            draw = random.Random(hash((r.seed, r.counter)))
            self._made[r.hist_row] = 0
            self._length[r.hist_row] = draw.randint(*self.turn_frames)
        return self._frames(rows)

    def decode(
        self,
        pool: int,
        step_rows: torch.Tensor,
        slots: list[int],
        lengths: list[int],
        rows: list[RowSampling],
    ) -> torch.Tensor:
        self._spend("decode", self.batch_of(max(slots, default=-1) + 1))
        return self._frames(rows)

    def _frames(self, rows: list[RowSampling]) -> torch.Tensor:
        frames = torch.zeros(len(rows), self.rvq, dtype=torch.int64)  # [B, rvq]: code 0, audio
        for b, r in enumerate(rows):
            h = r.hist_row
            if self._made[h] >= self._length[h] and r.eos_allowed:
                frames[b, 0] = self.audio_eos
            self._made[h] += 1
        return frames

    def copy_history(self, src_row: int, dst_row: int) -> None:
        self._made[dst_row], self._length[dst_row] = self._made[src_row], self._length[src_row]

    def open_streams(self, n: int) -> list[int]:
        """The ``n`` lowest free stream slots, as the codec's state claims them (the slot a
        codec call's bucket covers)."""
        taken = sorted(self._free_streams)[:n]
        self._free_streams.difference_update(taken)
        return taken

    def close_stream(self, slot: int) -> None:
        self._free_streams.add(slot)

    def pcm(self, frames: Sequence[torch.Tensor], streams: list[int]) -> torch.Tensor:
        if self.overlap:  # beside what the main stream does next, after what it did so far
            self.calls["codec"] = self.calls.get("codec", 0) + 1
            start = max(self.clock.now(), self._codec_free_at)
            cost = self.costs.cost("codec", self.batch_of(max(streams, default=-1) + 1))
            self._codec_free_at = start + cost
            # What it takes from the main stream shows in the main stream's next call (on a
            # GPU the launch returns at once; the decode step beside it runs slower).
            self._main_debt += (1.0 - self.overlap_share) * cost
        else:
            self._spend("codec", self.batch_of(max(streams, default=-1) + 1))
        return torch.zeros(len(frames), SAMPLES_PER_FRAME, dtype=torch.int16)  # [B, samples]


def stand_in_layout(cfg: MossTTSRealtimeConfig) -> RowLayout:
    """Row specials for a model without a tokenizer: the vocabulary's last ids (timing does
    not depend on them)."""
    v = cfg.language.vocab_size
    return RowLayout(
        rvq=cfg.rvq,
        audio_pad=cfg.audio_pad_token,
        audio_bos=cfg.audio_bos,
        audio_eos=cfg.audio_eos,
        text_pad=cfg.text_pad,
        ref_audio_pad=cfg.reference_audio_pad,
        im_start=v - 7,
        im_end=v - 6,
        newline=(v - 5,),
        roles={"assistant": (v - 4,), "user": (v - 3,), "system": (v - 2,), "context": (v - 1,)},
    )


def simulated_engine(
    costs: DeviceCosts,
    config: EngineConfig,
    clock: VirtualClock | None = None,
    turn_frames: tuple[int, int] = (40, 120),
    model_config: MossTTSRealtimeConfig | None = None,
    overlap_share: float = 1.0,
) -> MossEngine:
    """A ``MossEngine`` (not started) on a simulated device: the real-size model on ``meta``
    (no memory), a codec stand-in (frames come out as silent PCM), ``SimulatedRunner``
    (``overlap_share``: see there)."""
    clock = clock or VirtualClock()
    with torch.device("meta"):
        model = MossTTSRealtime(model_config or MossTTSRealtimeConfig.real())
    factory = SimulatedRunner.factory(
        clock, costs, turn_frames=turn_frames, overlap_share=overlap_share
    )
    return MossEngine(
        model,
        stand_in_layout(model.cfg),
        codec=_SILENT_CODEC,
        config=config,
        clock=clock,
        runner_factory=factory,
    )


# The engine decodes PCM when it has a codec; the simulated runner makes the PCM itself.
_SILENT_CODEC = object()
