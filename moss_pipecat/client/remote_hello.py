"""A remote conversation's handshake (``RemoteSession``'s): the ``hello`` that opens or resumes
it on a new connection, what the server's ``ready`` says of it, and the resume tickets its
``history`` deltas bring."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.client.wire import _build, _wire_sampling

if TYPE_CHECKING:
    from moss_pipecat.client.remote_session import RemoteSession


class RemoteHello:
    """``RemoteSession``'s handshake (a base class of it: the hello and the ready in one
    module)."""

    def hello(self: RemoteSession) -> P.Hello:
        """The ``hello`` that opens (or resumes) this conversation on a new connection."""
        return _build(
            P.Hello,
            v=P.PROTOCOL_VERSION,
            conversation_id=self.id,
            resume_secret=self.resume_secret,
            resume_ticket=self.resume_ticket,
            token=self.engine.token or None,
            sampling=None if self._sampling is None else _wire_sampling(self._sampling),
            seed=self._seed,
            history=self.engine.journal or None,
            history_at=self._history_at(),
        )

    def _history_at(self: RemoteSession) -> P.HistoryAt | None:
        """Where the journal's copy of the history is a server's, untouched since its last
        delta: resumed there, the server sends only what changed since."""
        at, server = self.journal.at, self.server_id
        if at is None or server is None or P.HELLO_HISTORY_AT not in self._features:
            return None
        return P.HistoryAt(server=server, rev=at)

    def refused_history_at(self: RemoteSession, hello: P.Hello, why: str) -> bool:
        """The server refused ``hello`` (``bad_message``, ``why``): if for its ``history_at``,
        the server is older than the field (a rollback behind the same URL), so the hellos say
        it no more till a ``ready`` lists it; True then (say hello again)."""
        if hello.history_at is None or "history_at" not in why:
            return False
        logger.info(f"conversation {self.id}: hello refused with history_at; again without")
        self._features = ()
        return True

    def take_ready(self: RemoteSession, ready: P.Ready) -> None:
        """Takes what the server's ``ready`` says about the conversation."""
        self.id = ready.conversation_id
        self.resumed = ready.resumed
        if ready.resume_secret is not None:  # the one we sent, unless the server chose
            self.resume_secret = ready.resume_secret
        if ready.resume_ticket is not None:  # none from a server older than tickets
            self.resume_ticket = ready.resume_ticket
        self.audio = ready.audio
        self.journal.rvq = ready.audio.rvq
        if not ready.resumed:
            self.journal.verify_due = self.journal.stale = False  # made anew: a restore follows
        elif ready.server_id != self.server_id and None not in (ready.server_id, self.server_id):
            # Resumed by another server than the last one: its copy may predate what was said
            # there (``Journal.verify_due``). Set before the link reads the full history.
            self.journal.verify_due = self.journal.restorable
        if not ready.resumed or ready.server_id != self.server_id:
            self.journal.unsync()  # its copy is not this server's conversation's
        self.server_id, self._features = ready.server_id, ready.features

    def take_history(self: RemoteSession, msg: P.History) -> None:
        """Takes a ``history`` delta's fresh resume ticket (after the journal took it)."""
        if msg.resume_ticket is not None:
            self.resume_ticket = msg.resume_ticket
