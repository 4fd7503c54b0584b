"""Per-stream codec state: sliding-window KV rings for many streams at once (slots).

A ``CodecStreamState`` has a fixed number of slots. Each live stream (call) owns one slot from
``add_stream()`` until ``remove_stream()``. One ``MossAudioCodec.decode_step`` call advances any
subset of the slots together, whatever their ages: every slot keeps its own step counter on
the device, so RoPE positions and window masks are per row.

Memory per stream is fixed: each attention layer keeps a ring of ``context + chunk - 1`` steps
(``chunk`` = steps of that stage in the largest frame chunk one call may push), however long
the call lasts. New steps are written before attention; the ``chunk - 1`` slack guarantees
that nothing inside any query's window is overwritten, so streaming output equals full
decoding for any chunking (upstream's ring of exactly ``context`` loses keys there).

State tensors have static shapes and the step never reads device values on the host, so a
step can later be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moss_pipecat.codec.config import CodecConfig, Module, StageConfig
from moss_pipecat.codec.modules import RingView
from moss_pipecat.errors import CapacityError, InvalidInputError


class StageRings:
    """KV rings for every transformer stage of one codec side (encoder or decoder).

    Args:
        modules: the side's module configs, in order (patches get no ring).
        capacity: rows (slots).
        max_frames: the most frames one step may push; sizes the rings' slack.
    """

    def __init__(
        self,
        modules: tuple[Module, ...],
        capacity: int,
        max_frames: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.capacity = capacity
        self.max_frames = max_frames
        self.stages: list[StageConfig | None] = []
        self.k: list[torch.Tensor | None] = []
        self.v: list[torch.Tensor | None] = []
        for m in modules:
            if not isinstance(m, StageConfig):
                self.stages.append(None)
                self.k.append(None)
                self.v.append(None)
                continue
            size = m.context + max_frames * m.steps_per_frame - 1
            shape = (m.num_layers, capacity, m.num_heads, size, m.head_dim)
            # Zero-filled: masked slots still enter the attention matmul with weight 0, which
            # must not meet NaN garbage.
            self.stages.append(m)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
        # Frames consumed per row; stage steps = frames x steps_per_frame.
        self.frames = torch.zeros(capacity, dtype=torch.long, device=device)

    def views(self, n: int) -> list[RingView | None]:
        """Ring views of rows ``0..n-1`` for one step (per module, ``None`` for patches)."""
        out: list[RingView | None] = []
        for cfg, k, v in zip(self.stages, self.k, self.v, strict=True):
            if cfg is None:
                out.append(None)
                continue
            start = self.frames[:n] * cfg.steps_per_frame
            # k[:, :n] is [L, n, H, size, Dh]; one view per layer.
            ks, vs = list(k[:, :n].unbind(0)), list(v[:, :n].unbind(0))
            out.append(RingView(k=ks, v=vs, start=start))
        return out

    def advance(self, n: int, frames: int, active: torch.Tensor | None = None) -> None:
        """Counts ``frames`` more frames for rows ``0..n-1`` (only ``active`` rows if given).

        Rows that were computed but not active keep their counters; what the step wrote into
        their rings lies in slots no window reaches before they are rewritten.
        """
        if active is None:
            self.frames[:n] += frames
        else:
            self.frames[:n] += frames * active.to(torch.long)

    def reset(self, slot: int | Sequence[int]) -> None:
        """Makes ``slot`` (or every slot of a list, in one op per ring) a fresh stream (step 0,
        zeroed rings)."""
        if not isinstance(slot, int):
            slot = torch.tensor(list(slot), dtype=torch.long, device=self.frames.device)
        self.frames[slot] = 0
        for k, v in zip(self.k, self.v, strict=True):
            if k is not None:
                k[:, slot] = 0
                v[:, slot] = 0

    def nbytes_per_slot(self) -> int:
        total = 0
        for k in self.k:
            if k is not None:
                total += 2 * k[:, 0].numel() * k.element_size()
        return total


class CodecStreamState:
    """Streaming-decode state for up to ``capacity`` concurrent streams.

    Create it with ``MossAudioCodec.new_stream_state``; feed it to ``decode_step``.

    Args:
        config: the codec config (decoder stages and windows).
        capacity: maximum number of concurrent streams (slots).
        max_frames_per_step: frames one ``decode_step`` call pushes through at most; larger
            requests are split into several steps. Sizes the rings' slack.
        dtype: dtype of the KV rings (the model's dtype).
        device: device of the state.
    """

    def __init__(
        self,
        config: CodecConfig,
        capacity: int,
        max_frames_per_step: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise InvalidInputError(f"capacity must be >= 1, got {capacity}")
        if max_frames_per_step < 1:
            raise InvalidInputError(f"max_frames_per_step must be >= 1, got {max_frames_per_step}")
        self.config = config
        self.capacity = capacity
        self.max_frames_per_step = max_frames_per_step
        self.rings = StageRings(config.decoder, capacity, max_frames_per_step, dtype, device)
        self._active: set[int] = set()
        self._host_frames = [0] * capacity  # mirror of rings.frames, so nobody syncs to read it

    @property
    def device(self) -> torch.device:
        return self.rings.frames.device

    @property
    def active_slots(self) -> list[int]:
        """Slots owned by live streams, ascending."""
        return sorted(self._active)

    def add_stream(self) -> int:
        """Claims the lowest free slot for a new stream and resets it.

        Lowest-first keeps live slots packed at the front, so steps touch few rows.

        Raises:
            CapacityError: every slot is taken.
        """
        for slot in range(self.capacity):
            if slot not in self._active:
                self.rings.reset(slot)
                self._host_frames[slot] = 0
                self._active.add(slot)
                return slot
        raise CapacityError(f"all {self.capacity} codec stream slots are in use")

    def add_streams(self, n: int) -> list[int]:
        """Claims the ``n`` lowest free slots for new streams (what ``n`` calls of
        ``add_stream`` give) and resets them together: a few ops whatever ``n``.

        Raises:
            CapacityError: fewer than ``n`` slots are free (then none is claimed).
        """
        free = [slot for slot in range(self.capacity) if slot not in self._active][:n]
        if len(free) < n:
            raise CapacityError(f"{n} new streams do not fit: {len(free)} codec slots are free")
        if free:
            self.rings.reset(free)
        for slot in free:
            self._host_frames[slot] = 0
            self._active.add(slot)
        return free

    def remove_stream(self, slot: int) -> None:
        """Frees ``slot``; other streams are untouched.

        Raises:
            InvalidInputError: ``slot`` is not a live stream.
        """
        if slot not in self._active:
            raise InvalidInputError(f"slot {slot} is not an active stream")
        self._active.remove(slot)

    def frames_decoded(self, slot: int) -> int:
        """Frames decoded so far by the stream in ``slot``."""
        if slot not in self._active:
            raise InvalidInputError(f"slot {slot} is not an active stream")
        return self._host_frames[slot]

    def bytes_per_stream(self) -> int:
        """Memory of one slot's KV rings (constant over the stream's life)."""
        return self.rings.nbytes_per_slot()

    def _record(self, slots: list[int], frames: int) -> None:
        for s in slots:
            self._host_frames[s] += frames
