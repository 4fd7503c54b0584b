"""One conversation held by the server: its engine session, its live turn, its client."""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moss_pipecat import protocol as P
from moss_pipecat.engine.records import HistoryCursor
from moss_pipecat.engine.session import Session, TurnStream
from moss_pipecat.server.tickets import ResumeTickets
from moss_pipecat.speech.events import TurnSummary
from moss_pipecat.speech.sampling import SamplingParams

if TYPE_CHECKING:
    from moss_pipecat.server.connection import Connection

# The history deltas a conversation keeps (since its last full history) for a client that
# resumes it having missed them (sent to a connection that departed): it gets them again.
RESENDABLE_DELTAS = 8


@dataclass(eq=False)
class Conversation:
    """One conversation held by the server: its engine session and its live turn."""

    id: str
    session: Session
    sampling: SamplingParams
    # Proves a resuming client is the one that created the conversation (the id may be known).
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # When its first creator made it (ms; a good resume ticket carries it over from the
    # server that was lost), and the server's ticket book: ``resume_ticket``.
    created_ms: int = 0
    tickets: ResumeTickets | None = None
    conn: Connection | None = None
    detached_at: float | None = None
    turn: TurnStream | None = None
    pump: asyncio.Task | None = None
    frames_sent: int = 0
    turn_ids: int = 0  # ids and characters sent with ``turn.ids`` for the open turn
    turn_chars: int = 0
    ids_told: int = 0  # of the open turn's ids, those told to a client keeping a journal
    # The turn a departed connection left open, and the frames it received: cut by the hub's
    # ``_settle`` (under ``lock``) before anyone else uses the conversation.
    cut: tuple[TurnStream, int] | None = None
    # The last cut a client asked for, ((turn id, heard frames, heard units), its summary):
    # the answer again to that cut sent again naming its turn (``Interrupt.turn_id``).
    last_cut: tuple[tuple[int, int, int | None], TurnSummary] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # engine calls of attach/detach
    # A turn's frames and its end go out under ``out``, so a drain's cut reads an exact
    # ``frames_sent``; the pump sends no more frames of the turn ``held``, and its end is the
    # cut's (``held_cut``: the engine's summary of the cut, None when nothing was cut).
    out: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: TurnStream | None = None
    held_cut: asyncio.Future | None = None
    # What the client was last told of the history (``server.history_feed``).
    cursor: HistoryCursor = field(default_factory=HistoryCursor)
    history_rev: int = 0
    history_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recent_deltas: deque[P.History] = field(default_factory=lambda: deque(maxlen=RESENDABLE_DELTAS))

    def delta_taken(self, msg: P.History) -> None:
        """A history delta was taken (``history_rev`` is its rev): kept for ``deltas_after``
        unless it is a full one, which they no longer lead to."""
        if msg.full:
            self.recent_deltas.clear()
        else:
            self.recent_deltas.append(msg)

    def deltas_after(self, rev: int | None) -> list[P.History] | None:
        """The deltas taken after delta ``rev`` of this conversation, in order (none: it is
        the last one), where they are all kept; else None (the client needs the full history)."""
        if rev is None or not self.cursor.started or not 0 < rev <= self.history_rev:
            return None
        missed = [m for m in self.recent_deltas if m.rev > rev]
        if len(missed) != self.history_rev - rev:
            return None  # some went before the last full one, or out of the ring
        return missed

    def resume_ticket(self) -> str | None:
        """A fresh resume ticket for the conversation's id, secret and creation time."""
        if self.tickets is None:
            return None
        return self.tickets.issue(self.id, self.secret, self.created_ms)
