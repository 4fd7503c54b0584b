"""A tick's audio on its way out: frames whose PCM the codec is making, sent at the next host
wait on the device.

With ``EngineConfig.overlap_codec`` the codec call of tick t runs on its own stream beside the
decode step of tick t+1, and its PCM comes to the host in that tick's one wait (``Scheduler
.host``); without, it is sent at once (a second wait). Either way the same chunks go out, in
the same order, with the word times taken when the frame was made; a turn whose last audio
frame is still on its way ends only once that audio is out (``finishes``), so its summary
always comes after its audio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from moss_pipecat.engine.events import AudioChunk
from moss_pipecat.engine.state import OpenTurn, SessionState


@dataclass(eq=False)
class PendingAudio:
    """Frames of one tick whose PCM is on the device (or None: no codec).

    Attributes:
        tick: the tick that made them; pad: the ``<|text_pad|>`` id (``TurnText``).
        chunks: (session, its turn, frame index, codes [rvq], words) per frame, in order.
        pcm: int16 [B, samples] on the device, one row per chunk (None: codes only).
        finishes: (session, turn, stop) of the turns that end once these chunks are out.
    """

    tick: int
    pad: int
    chunks: list[tuple[SessionState, OpenTurn, int, torch.Tensor, tuple]] = field(
        default_factory=list
    )
    pcm: torch.Tensor | None = None
    finishes: list[tuple[SessionState, OpenTurn, str]] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)  # whose audio or end is here
    ending: set[str] = field(default_factory=set)  # whose end is here

    def send(
        self,
        pcm_host: torch.Tensor | None,
        to_bytes: Callable[[torch.Tensor], list[bytes]],
        finish: Callable[[SessionState, str], None],
    ) -> None:
        """Puts each chunk (with its PCM) into its turn's channel, then ends the turns that
        were waiting for it. A turn that ended meanwhile (it failed, was interrupted or
        closed) gets nothing more: its caller never had these frames, so never heard them."""
        pcm = to_bytes(pcm_host) if pcm_host is not None else [None] * len(self.chunks)
        for (s, turn, index, codes, words), p in zip(self.chunks, pcm, strict=True):
            if s.turn is turn:
                text = turn.new_text(self.pad)  # the text ids it got since: the turn's rows so far
                turn.channel.put(AudioChunk(turn.turn_id, index, codes, p, words, text))
        for s, turn, stop in self.finishes:
            if s.turn is turn:
                finish(s, stop)
