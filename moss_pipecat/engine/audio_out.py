"""A tick's audio on its way out: frames whose PCM the codec is making, sent at the next host
wait on the device, and the turns that end with it (``AudioOut``, the scheduler's).

With ``EngineConfig.overlap_codec`` the codec call of tick t runs on its own stream beside the
decode step of tick t+1, and its PCM comes to the host in that tick's one wait (``AudioOut
.host``); without, it is sent at once (a second wait). Either way the same chunks go out, in
the same order, with the word times taken when the frame was made; a turn whose last audio
frame is still on its way ends only once that audio is out (``finishes``), so its summary
always comes after its audio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from moss_pipecat.engine.events import AudioChunk, Channel, TurnSummary
from moss_pipecat.engine.state import OpenTurn, SessionState

if TYPE_CHECKING:
    from moss_pipecat.engine.core import EngineCore


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

    def split_off(self, session_id: str) -> PendingAudio:
        """Moves this session's chunks (with their PCM rows) and end into a new
        ``PendingAudio``; the rest stays here."""
        mine = [i for i, c in enumerate(self.chunks) if c[0].session_id == session_id]
        rest = [i for i, c in enumerate(self.chunks) if c[0].session_id != session_id]
        out = PendingAudio(self.tick, self.pad)
        out.chunks = [self.chunks[i] for i in mine]
        out.finishes = [f for f in self.finishes if f[0].session_id == session_id]
        if self.pcm is not None:
            out.pcm = self.pcm[mine]
            self.pcm = self.pcm[rest]
        self.chunks = [self.chunks[i] for i in rest]
        self.finishes = [f for f in self.finishes if f[0].session_id != session_id]
        out.sessions = {session_id} & self.sessions
        out.ending = {session_id} & self.ending
        self.sessions = self.sessions - {session_id}
        self.ending = self.ending - {session_id}
        return out

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
        items = []
        for (s, turn, index, codes, words), p in zip(self.chunks, pcm, strict=True):
            if s.turn is turn:
                text = turn.new_text(self.pad)  # the text ids it got since: the turn's rows so far
                items.append((turn.channel, AudioChunk(turn.turn_id, index, codes, p, words, text)))
        Channel.put_all(items)  # before the summaries below
        for s, turn, stop in self.finishes:
            if s.turn is turn:
                finish(s, stop)


class AudioOut:
    """The audio of past ticks still on its way out (engine thread only): sent at the next
    host wait, oldest first, and the turns that end once it is out."""

    def __init__(self, core: EngineCore) -> None:
        self.core, self.runner, self.layout = core, core.runner, core.layout
        self.pending: list[PendingAudio] = []

    def host(self, tensors: list[torch.Tensor], pcm: bool = True) -> list[torch.Tensor]:
        """``tensors`` on the host, in one wait on the device that also brings (and sends)
        the audio still pending (``pcm``; else this wait does not wait for the codec)."""
        pending, self.pending = (self.pending, []) if pcm else ([], self.pending)
        extra = [p.pcm for p in pending if p.pcm is not None]
        if not tensors and not extra:
            out = []
        else:
            out = self.runner.to_host([*tensors, *extra], codec=bool(extra))
        rows = iter(out[len(tensors) :])
        for p in pending:  # oldest first: a session's chunks stay in order
            p.send(
                next(rows) if p.pcm is not None else None,
                self.runner.pcm_bytes,
                self._finish_safely,
            )
        return out[: len(tensors)]

    def settle_for(self, session_id: str) -> None:
        """Sends now the pending audio of one session (and ends its turn if it ends with it);
        the other sessions' chunks stay pending, their PCM brought to the host by the same
        wait, and go out at the next host wait as they would have. A command for one call
        (a barge-in as its reply's last audio is on its way) so no longer sends every call's
        audio a tick early, which made each one's next chunk come two ticks later."""
        if not any(session_id in p.sessions for p in self.pending):
            return
        device = [p for p in self.pending if p.pcm is not None]
        if device:
            pcms = self.runner.to_host([p.pcm for p in device], codec=True)
            for p, pcm in zip(device, pcms, strict=True):
                p.pcm = pcm  # on the host now: a later wait only copies it
        now = [p.split_off(session_id) for p in self.pending]
        self.pending = [p for p in self.pending if p.chunks or p.finishes]
        for p in now:
            p.send(p.pcm, self.runner.pcm_bytes, self._finish_safely)

    def settle(self) -> None:
        """Sends the pending audio now (and ends the turns that end with it). Chunks of a turn
        that ended meanwhile (interrupted, closed) are not sent: they were made after what
        its caller reports heard (``PendingAudio.send``)."""
        if self.pending:
            self.host([])

    def ending(self, session_id: str) -> bool:
        """Whether the session's turn ends once its pending audio is out."""
        for p in self.pending:  # asked per session per tick: a plain loop, no generator
            if session_id in p.ending:
                return True
        return False

    def made_before(self, tick: int) -> bool:
        """Whether audio made before ``tick`` is still pending."""
        return any(p.tick < tick for p in self.pending)

    def _finish_safely(self, s: SessionState, stop: str) -> None:
        try:
            self.finish(s, stop)
        except Exception as e:  # this session's bookkeeping: the others go on
            self.core.fail_safely(s, e)

    def finish(self, s: SessionState, stop: str) -> None:
        """Ends a turn whose last audio is out ("eos", "max_frames")."""
        t, rec = s.turn, s.turn.record
        total = rec.audio_frames(self.layout.audio_eos)
        rec.close(self.layout, total)
        all_fed = t.text_done and t.fed_text >= len(t.tokens)
        if stop == "eos" and all_fed:
            s.learn_speaking_rate(t.text.strip(), total)
        # Words never fed (an early EOS, a frame cap) were not said: they get no time.
        tail = t.words.finish(total, t.fed_chars())
        summary = TurnSummary(
            t.turn_id,
            stop,
            audio_frames=total,
            heard_frames=total,
            text_ids=list(t.tokens),
            text=t.text,
            spoken_text=t.words.heard_text(total),
            words=tail,
        )
        self.core.end_turn(s, summary)
