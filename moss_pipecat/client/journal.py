"""``Journal``: the client's copy of its conversation's history, kept from the server's
``history`` deltas, to give a server that lost the conversation its history back (``restore``).

It holds what the server's history holds, turn by turn (``engine.records.TurnRecord`` as
numpy arrays): bounded as that is by the conversation's context budget (the server's trims
arrive as deltas too), and dropped with the conversation. Pure Python and numpy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from loguru import logger

from moss_pipecat import protocol as P


@dataclass(frozen=True)
class JournalTurn:
    """One finished turn: role, text ids (uint32), an assistant turn's lead, frames [A, rvq]."""

    role: str
    ids: np.ndarray
    lead: int
    frames: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.frames.nbytes)


class Journal:
    """The history a server reported for one conversation (filled by the link's reader)."""

    def __init__(self, rvq: int = 16) -> None:
        self.rvq = rvq
        self.clear()

    def clear(self) -> None:
        """Forgets everything (a conversation that starts afresh)."""
        self.rev = 0
        self.turns: list[JournalTurn] = []
        self.voice: np.ndarray | None = None
        self.seed: int | None = None
        self.noise = 0
        self.valid = True  # False after a missed delta, until the next full one
        self.deltas = 0
        # Set while a server that made the conversation anew may not hold this history yet
        # (its ``restore`` is due, or was sent and no reply came): see ``apply``.
        self.restore_due = False

    @property
    def restorable(self) -> bool:
        """Whether there is a history to restore (a voice or a turn) and it is whole."""
        return self.valid and (bool(self.turns) or self.voice is not None)

    @property
    def nbytes(self) -> int:
        """The journal's size: its ids and codes."""
        voice = 0 if self.voice is None else self.voice.nbytes
        return voice + sum(t.nbytes for t in self.turns)

    def apply(self, msg: P.History) -> None:
        """Takes one ``history`` delta (see ``protocol.History``)."""
        self.deltas += 1
        if msg.full and self.restore_due:
            if not msg.turns and msg.voice is None:
                # The conversation as the server made it anew, before a restore landed: the
                # journal keeps its history (the session restores it).
                self.rev = msg.rev
                return
            self.restore_due = False  # it landed (a smaller server may have trimmed it)
        if not msg.full and msg.rev != self.rev + 1:
            if self.valid:
                logger.warning(f"history delta {msg.rev} after {self.rev}: journal incomplete")
            self.valid = False
            self.rev = msg.rev
            return
        turns = [] if msg.full else self.turns[msg.drop :][: msg.keep]
        for t in msg.turns:
            frames = P.codes_from_b64(t.codes, self.rvq)
            turns.append(JournalTurn(t.role, np.asarray(t.ids, dtype=np.uint32), t.lead, frames))
        self.turns = turns
        if msg.full or msg.voice_changed:
            self.voice = None if msg.voice is None else P.codes_from_b64(msg.voice, self.rvq)
        self.seed, self.noise, self.rev = msg.seed, msg.noise, msg.rev
        self.valid = self.valid or msg.full

    def restore_request(self) -> tuple[dict, bytes]:
        """The ``restore`` message's fields and its binary frame."""
        records = [(t.role, t.lead, t.ids, t.frames) for t in self.turns]
        fields, data = P.pack_restore(self.voice, records)
        return {**fields, "seed": self.seed, "noise": self.noise}, data
