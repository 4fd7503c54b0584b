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

from collections.abc import Sequence

import torch

from moss_pipecat.codec.model import MossAudioCodec, run_modules
from moss_pipecat.codec.streaming import CodecStreamState
from moss_pipecat.cuda_graphs import (
    DEFAULT_BATCH_BUCKETS,
    BucketedGraph,
    GraphedStep,
    StaticInput,
    capped_buckets,
    smallest_bucket,
)
from moss_pipecat.errors import InvalidInputError


class GraphedCodecDecode(GraphedStep):
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
        self.batch_buckets = capped_buckets(batch_buckets, state.capacity)
        # key: (rows, quantizers decoded)
        self.graphs: BucketedGraph[tuple[int, int]] = BucketedGraph(
            "codec decode",
            self._inputs,
            self._body,
            device=state.device,
            use_cuda_graphs=use_cuda_graphs,
        )

    def bucket(self, rows: int) -> int:
        """Smallest bucket holding ``rows`` rows (``rows`` <= the state's capacity)."""
        b = smallest_bucket(self.batch_buckets, rows)
        if b is None:
            raise InvalidInputError(f"{rows} rows exceed the stream state's capacity")
        return b

    def _inputs(self, key: tuple[int, int]) -> dict[str, StaticInput]:
        n, n_q = key
        dev = self.state.device
        return {
            "codes": StaticInput(torch.zeros(n, n_q, dtype=torch.int64, device=dev), 0),
            # Idle rows' counters stay put and what they write is overwritten before any
            # window reads it (``StageRings.advance``).
            "active": StaticInput(torch.zeros(n, dtype=torch.bool, device=dev), False),
        }

    def _body(self, inputs: dict[str, torch.Tensor], key: tuple[int, int]) -> torch.Tensor:
        codec, rings = self.codec, self.state.rings
        n = key[0]
        codes = inputs["codes"].T[:, :, None]  # [Q, n, 1]
        x = codec.quantizer.decode(codes).to(codec.decoder_dtype)  # [n, 1, D]
        out = run_modules(codec.decoder, x, rings.views(n))  # [n, hop, 1]
        rings.advance(n, 1, inputs["active"])
        return out[..., 0].float()  # [n, hop]

    @torch.inference_mode()
    def capture_all(self, n_q: int | None = None) -> int:
        """Prepares every bucket (all ``n_q`` quantizers by default); returns the count."""
        n_q = n_q or self.codec.config.quantizer.num_quantizers
        return self.graphs.prepare((b, n_q) for b in self.batch_buckets)

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
        key = (self.bucket(max(slots) + 1), n_q)
        dev = self.state.device
        rows = torch.tensor(slots, dtype=torch.int64, device=dev)
        codes = codes[:, :, 0].T.to(dev, torch.int64)  # [B, Q]
        wav = self.graphs(key, rows, {"codes": codes, "active": True})
        self.state._record(slots, 1)
        return wav[rows]
