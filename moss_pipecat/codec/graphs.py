"""One-frame streaming decode on static buffers, captured as CUDA graphs per batch bucket.

Streaming decode of one 80 ms frame is a few hundred small kernels (quantizer, every decoder
stage, patch unfolds); at real-time batch sizes their launches, not the math, set its cost.
Like ``moss_pipecat.model.graphs`` for the TTS step, every call is padded up to a batch
bucket of rows ``0..bucket-1`` of the stream state (streams are packed low by
``CodecStreamState.add_stream``); rows that are not stepped this call run with an ``active``
flag off, so their counters do not move and what they wrote is overwritten before any
window reads it (see ``StageRings.advance``).

Without CUDA graphs (CPU) the same padded, static-buffer path runs eagerly, so tests on CPU
exercise the logic the GPU replays.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moss_pipecat._log import logger
from moss_pipecat.codec.model import MossAudioCodec, run_modules
from moss_pipecat.codec.streaming import CodecStreamState
from moss_pipecat.cuda_graphs import capture_graph
from moss_pipecat.errors import InvalidInputError

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


@dataclass
class _Buffers:
    codes: torch.Tensor  # [Q, Bb, 1] int64
    active: torch.Tensor  # [Bb] bool
    wav: torch.Tensor | None = None  # [Bb, hop] float32, owned by the graph
    graph: torch.cuda.CUDAGraph | None = None


class GraphedCodecDecode:
    """``MossAudioCodec.decode_step`` for one frame per stream, padded and graph-replayed.

    Args:
        codec: the codec; ``state`` must come from its ``new_stream_state``.
        batch_buckets: row counts graphs are captured for (clipped to the state's capacity).
        use_cuda_graphs: capture graphs (CUDA only); False runs the padded path eagerly.
    """

    def __init__(
        self,
        codec: MossAudioCodec,
        state: CodecStreamState,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        if state.config != codec.config:
            raise InvalidInputError("stream state was made for a different codec config")
        self.codec, self.state = codec, state
        cap = state.capacity
        self.batch_buckets = tuple(sorted({min(b, cap) for b in batch_buckets if b >= 1} | {cap}))
        device = state.device
        self.use_cuda_graphs = device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self._pool = None
        self._buffers: dict[tuple[int, int], _Buffers] = {}

    def bucket(self, rows: int) -> int:
        """Smallest bucket holding ``rows`` rows (``rows`` <= the state's capacity)."""
        i = bisect.bisect_left(self.batch_buckets, rows)
        if i == len(self.batch_buckets):
            raise InvalidInputError(f"{rows} rows exceed the stream state's capacity")
        return self.batch_buckets[i]

    def _run(self, buf: _Buffers) -> None:
        codec, rings = self.codec, self.state.rings
        n = buf.active.shape[0]
        x = codec.quantizer.decode(buf.codes).to(codec.decoder_dtype)  # [n, 1, D]
        out = run_modules(codec.decoder, x, rings.views(n))  # [n, hop, 1]
        rings.advance(n, 1, buf.active)
        buf.wav = out[..., 0].float()  # [n, hop]

    def _warm_up(self, buf: _Buffers) -> None:
        """The runs before capture. They really execute, so every row is inactive: counters
        stay put and the rows' writes land where the next real step overwrites them."""
        buf.active.zero_()
        for _ in range(2):
            self._run(buf)

    def _capture(self, buf: _Buffers) -> None:
        buf.graph = capture_graph(lambda: self._run(buf), lambda: self._warm_up(buf), self._pool)
        self._pool = buf.graph.pool()
        logger.debug(f"captured codec decode graph rows={buf.active.shape[0]}")

    @torch.inference_mode()
    def prepare(self, bucket: int, n_q: int) -> _Buffers:
        """The static buffers (and, with CUDA graphs, the captured graph) of one bucket."""
        buf = self._buffers.get((bucket, n_q))
        if buf is None:
            dev = self.state.device
            buf = self._buffers[(bucket, n_q)] = _Buffers(
                codes=torch.zeros(n_q, bucket, 1, dtype=torch.int64, device=dev),
                active=torch.zeros(bucket, dtype=torch.bool, device=dev),
            )
            if self.use_cuda_graphs:
                self._capture(buf)
        return buf

    def capture_all(self, n_q: int | None = None) -> int:
        """Prepares every bucket (all ``n_q`` quantizers by default); returns the count."""
        n_q = n_q or self.codec.config.quantizer.num_quantizers
        for b in self.batch_buckets:
            self.prepare(b, n_q)
        return len(self.batch_buckets)

    @torch.inference_mode()
    def step(self, codes: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        """Decodes the next frame of each stream in ``slots``.

        Args:
            codes: ``[Q, B]`` or ``[Q, B, 1]`` int codes in ``0..codebook_size-1`` (not
                value-checked: this is the hot path behind the TTS).
            slots: ``B`` distinct active slots; row ``i`` of ``codes`` belongs to ``slots[i]``.
        Returns:
            ``[B, hop]`` float32 audio, row ``i`` for ``slots[i]``. Valid until the next call.
        """
        if codes.dim() == 2:
            codes = codes[:, :, None]
        self.codec.check_codes(codes, values=False)
        n_q, b, t = codes.shape
        if t != 1:
            raise InvalidInputError(f"one frame per stream per step, got {t}")
        slots = [int(s) for s in slots]
        if len(slots) != b or len(set(slots)) != b:
            raise InvalidInputError(f"need {b} distinct slots, got {slots}")
        live = set(self.state.active_slots)
        if not set(slots) <= live:
            raise InvalidInputError(f"slots {sorted(set(slots) - live)} are not active streams")
        buf = self.prepare(self.bucket(max(slots) + 1), n_q)
        rows = torch.tensor(slots, dtype=torch.int64, device=buf.codes.device)
        buf.codes.zero_()
        buf.codes[:, rows] = codes.to(buf.codes.device, torch.int64)
        buf.active.zero_()
        buf.active[rows] = True
        if self.use_cuda_graphs:
            buf.graph.replay()
        else:
            self._run(buf)
        self.state._record(slots, 1)
        return buf.wav[rows]
