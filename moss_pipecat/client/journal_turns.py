"""The turns a ``Journal`` holds: ``InflightTurn``, the assistant turn being generated as its
server reports it, and ``JournalTurn``, one turn of the history as a server reported it (with,
for a reply seen in flight here, what it was in flight: its words)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from moss_pipecat import protocol as P
from moss_pipecat.speech.events import TurnSummary
from moss_pipecat.speech.units import TimedWord, heard_units, join_units

# A turn in flight holds at most this many rows (frames and text ids): a bound far above any
# server's context, so a journal never grows without one.
MAX_INFLIGHT_ROWS = 1 << 16


@dataclass
class InflightTurn:
    """The assistant turn being generated, as its server reported it: its text ids (from the
    ``turn.text_ids`` and ``turn.words`` messages, which may tell the same ids) and its
    frames' codes (from its audio), both in order."""

    turn_id: int
    ids: list[int] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # [rvq] uint16 each
    lead: int | None = None
    pad: int | None = None
    whole: bool = True  # False once something was missed: it cannot be rebuilt
    words: list[TimedWord] = field(default_factory=list)  # its word times, as placed
    # The sampling noise's counter at its frame 0 (the journal's, as the turn started), or None
    # once a delta came while it was in flight (a reseed, a resume): the restore then sends
    # the journal's counter as it is.
    noise: int | None = None
    # Once it is in the history: the noise's draws from its frame 0 to its end (the counter
    # past its mark, as the server last told while it was the last turn; a reseed shifts both
    # alike), so the mark of a reply that becomes the last again is known (``cut_last``).
    drawn: int | None = None

    def made(self, turn: JournalTurn) -> bool:
        """Whether ``turn``, a reply in a history, is this one: its frames are the first ones
        this turn's audio brought (a full copy holds no turn ids)."""
        k = len(turn.frames)
        if not self.whole or k == 0 or k > len(self.frames) or turn.role != "assistant":
            return False
        return np.array_equal(turn.frames, np.stack(self.frames[:k]))

    def kept(self) -> InflightTurn:
        """What the history keeps of it once it landed: its id and words, no frames (its
        record holds its rows)."""
        return InflightTurn(self.turn_id, ids=self.ids, words=self.words)

    def add_text(self, msg: P.TurnWords) -> None:
        self.words.extend(msg.timed_words())
        if not msg.text_ids and msg.lead is None:
            return
        if msg.lead is not None:
            self.lead, self.pad = msg.lead, msg.text_pad
        self.add_ids(msg.text_from, msg.text_ids)

    def add_ids(self, start: int, ids: Sequence[int]) -> None:
        """Takes the turn's text ids from its ``start``-th: those it holds must be the same,
        and none may be missing before them (else the turn cannot be rebuilt)."""
        held = len(self.ids) - start  # of ``ids``, how many it holds already
        if start < 0 or held < 0 or self.ids[start : start + len(ids)] != list(ids[:held]):
            self.whole = False
        self.ids.extend(ids[max(held, 0) :])
        self._bound()

    def add_frame(self, index: int, codes: np.ndarray) -> None:
        self.whole = self.whole and index == len(self.frames)
        self.frames.append(codes)
        self._bound()

    def _bound(self) -> None:
        if len(self.ids) + len(self.frames) + len(self.words) > MAX_INFLIGHT_ROWS:
            self.whole, self.ids, self.frames, self.words = False, [], [], []

    @property
    def nbytes(self) -> int:
        words = sum(len(w[0]) + 8 for w in self.words)
        return 4 * len(self.ids) + sum(f.nbytes for f in self.frames) + words

    def spoken(self, kept: int, units: int | None) -> str:
        """The words heard in its first ``kept`` frames (``units`` of them, if counted), as the
        engine's cut says them (``heard_units``)."""
        return join_units(heard_units(self.words, kept, units)) if kept > 0 else ""

    def summary(self, kept: int, units: int | None) -> TurnSummary:
        """What an interruption that kept ``kept`` of its frames in the history (``units``
        units, if counted) says of it, as the engine's would: its frames so far, those kept,
        the words heard in them."""
        return TurnSummary(
            self.turn_id,
            "interrupted",
            audio_frames=len(self.frames),
            heard_frames=kept,
            text_ids=list(self.ids),
            spoken_text=self.spoken(kept, units),
        )

    def cut(self, heard: int) -> JournalTurn | None:
        """The turn as an interruption after ``heard`` frames leaves it in the engine
        (``AssistantTurn.close``): its ``lead`` prompt ids, its first ``heard`` frames, each on
        the row of the next text id, and the EOS row; ``text_pad`` past the text. None when
        nothing is kept (nothing heard, as in the engine) or it cannot be rebuilt."""
        k = min(heard, len(self.frames))
        if k <= 0 or not self.whole or self.lead is None or self.pad is None:
            return None
        n = self.lead + k + 1
        ids = (self.ids + [self.pad] * n)[:n]
        frames = np.stack(self.frames[:k]).astype(np.uint16)  # [k, rvq]
        return JournalTurn("assistant", np.asarray(ids, dtype=np.uint32), self.lead, frames)


@dataclass(frozen=True)
class JournalTurn:
    """One finished turn: role, text ids (uint32), an assistant turn's lead, frames [A, rvq];
    ``reply``: a reply as it was in flight here (its id on the server that made it, its words;
    ``InflightTurn.kept``), where known: a cut of it while no server answers is made here
    (``Journal.cut_last``)."""

    role: str
    ids: np.ndarray
    lead: int
    frames: np.ndarray
    reply: InflightTurn | None = field(default=None, compare=False)

    @property
    def nbytes(self) -> int:
        reply = 0 if self.reply is None else self.reply.nbytes
        return int(self.ids.nbytes + self.frames.nbytes) + reply

    def same(self, other: JournalTurn) -> bool:
        """Whether ``other`` is this turn (role, lead, ids and codes)."""
        return (
            self.role == other.role
            and self.lead == other.lead
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.frames, other.frames)
        )
