"""A barge-in's cut of a remote conversation (``RemoteSession.interrupt``): where the cut
turn is (on the server that runs it; lost with its server and kept in the journal; restored as
the last turn of another server), a cut lost with its connection sent again, and a cut made in
the journal while no server answered made again on the server that then resumes the call."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.client.tries import Tries
from moss_pipecat.errors import MossError
from moss_pipecat.protocol.errors import ServerUnavailableError
from moss_pipecat.speech.commands import Interrupt
from moss_pipecat.speech.events import TurnSummary

if TYPE_CHECKING:
    from moss_pipecat.client.link import Link
    from moss_pipecat.client.remote_session import RemoteSession
    from moss_pipecat.client.remote_turn import RemoteTurn


class RemoteCuts:
    """``RemoteSession``'s cuts (a base class of it: the rules of a cut in one module)."""

    async def interrupt(
        self: RemoteSession,
        heard_frames: int,
        heard_units: int | None = None,
        turn_id: int | None = None,
    ) -> TurnSummary | None:
        """Stops the current (or just finished) turn, keeping its first ``heard_frames``
        frames in the conversation (``heard_units``: the units the listener kept; ``turn_id``:
        only that turn, see ``Interrupt``). Returns None if there was nothing to cut.

        A turn lost with its server is cut in the journal (the restore carries it), and its
        summary is the journal's, from the frames and words that came before the loss, also
        when no server can be reached yet. A cut lost with its connection before its reply is
        sent again after the reconnect. A cut that names a turn goes with the name to the
        server that opened it (where its ``ready`` lists the feature), also when a later turn
        opened behind it (a back-to-back barge-in cuts that one first): a turn already gone
        (cut away by a first cut, or by a lost connection's departure) is then not confused
        with the turn before it, and a cut sent again gets the first one's summary. (Another
        server, one that restored the conversation, knows no such id: the cut goes to it
        unnamed.)"""
        command = Interrupt(heard_frames, heard_units, turn_id)
        turn = self._turn
        if turn is not None and turn_id not in (None, turn.turn_id):
            # A turn before the last (a back-to-back barge-in cut the last first): where the
            # last turn is (lost, restored) is not this cut's business.
            turn = None
        if turn is not None and turn.summary is None:
            turn.cancel()
        lost = None
        tries = Tries(self.engine)
        while True:  # returns, or raises once ``tries`` gives up
            # Lost with its server: what the caller heard of it is kept (the journal holds its
            # rows); a server that lost the conversation gets it with the restore.
            in_journal = turn is not None and turn.lost and self._turn_made == self._made
            if in_journal:
                heard, units = command.heard_frames, command.heard_units
                lost = self.journal.keep_lost(turn.turn_id, heard, units) or lost
            try:
                link = await self.open()
            except ServerUnavailableError as e:
                if not in_journal:
                    # A reply the server finished (the last, still playing; or one before the
                    # last, the newer lost and cut away: a back-to-back barge-in): the journal
                    # cuts it, if it is its last turn.
                    name = self._journal_reply(turn, turn_id)
                    if name is None:
                        raise
                    heard, units = command.heard_frames, command.heard_units
                    summary = self.journal.cut_last(name, heard, units)
                    self._hold_cut(command, name)
                    return summary
                # The cut is the journal's (no server holds the turn): nothing left to wait for.
                logger.warning(f"session {self.id!r}: turn {turn.turn_id} cut while no server: {e}")
                self._hold_cut(command, turn.turn_id)
                return lost
            if turn is not None and not turn.ended and self._turn_made != self._made:
                # Lost with its server: the one holding the conversation now has nothing of it to
                # cut, unless the restore made its heard part the last turn (then a later decision
                # that heard less cuts it there; one that ended before its server went, e.g. at a
                # ``goaway``, is cut in the journal).
                if self._lost_restored is not turn:
                    return lost
            fields = P.Interrupt.fields_of(command)
            if not self._names_a_turn_here(turn_id) or P.CUT_NAMES_TURN not in link.ready.features:
                fields.pop("turn_id", None)
            try:
                reply = await self._request(link, P.Interrupt, **fields)
                if reply.summary is None:
                    return lost
                return self._told(reply.summary.to_summary(), command)
            except ServerUnavailableError as e:
                if not await tries.again():
                    raise
                logger.info(f"conversation {self.id}: a cut lost with its connection ({e}): again")

    def _told(self: RemoteSession, summary: TurnSummary, command: Interrupt) -> TurnSummary:
        """A server's cut summary; one of a reply it restored says no words (it holds none of
        their times), so they are the journal's, by the same rule (its history delta, which
        came first, holds the cut turn)."""
        if not summary.spoken_text and summary.heard_frames:
            told = self.journal.spoken_text(summary.heard_frames, command.heard_units)
            summary.spoken_text = told or ""
        return summary

    def _hold_cut(self: RemoteSession, command: Interrupt, turn_id: int) -> None:
        """A cut made in the journal only, while no server answered: the server that held the
        turn may yet resume the call (it was unreachable, not gone) with its own copy, the
        turn as far as it sent it, and that copy then replaces the journal's. The cut is
        made there again first (``send_held_cuts``), named, so it cuts that turn or nothing."""
        named = Interrupt(command.heard_frames, command.heard_units, turn_id)
        self._held_cuts.append((named, self.server_id))

    async def send_held_cuts(self: RemoteSession, link: Link) -> None:
        """Makes the held cuts (``_hold_cut``) on the server that resumed the call, in the
        order they were made, before any other request. (They are dropped where the server
        holds the journal's copy, which has them: a restore, a replaced copy.)"""
        while self._held_cuts:
            command, server = self._held_cuts[0]
            here = server is not None and server == self.server_id
            named = self._names_a_turn_here(command.turn_id)
            if here and named and P.CUT_NAMES_TURN in link.ready.features:
                try:
                    await self._request(link, P.Interrupt, **P.Interrupt.fields_of(command))
                except ServerUnavailableError:
                    raise  # still held: the next connection makes it
                except MossError as e:
                    logger.warning(f"conversation {self.id}: a held cut refused: {e}")
            else:  # unnamed it could cut another turn: the server's copy stays as it is
                logger.warning(
                    f"conversation {self.id}: turn {command.turn_id}'s cut, made while no server"
                    f" answered, is not made on {self.server_id}"
                )
            self._held_cuts.pop(0)

    def _journal_reply(
        self: RemoteSession, turn: RemoteTurn | None, turn_id: int | None
    ) -> int | None:
        """The reply a cut while no server answers takes in the journal, if it is the
        journal's last turn: one the server finished (the last turn, still playing, or one
        before the last: ``turn`` None), opened on the server lost or unreachable."""
        name = turn_id if turn is None else turn.turn_id
        if name is None or self._turn_made != self._made or not self._names_a_turn_here(name):
            return None  # (a reply the journal knows from another server may have that id)
        if turn is not None and not turn.ended:
            return None
        return name if self.journal.ends_with_reply(name) else None

    def _names_a_turn_here(self: RemoteSession, turn_id: int | None) -> bool:
        """Whether ``turn_id`` names a turn this session opened lately on the server that holds
        the conversation now, and none it opened on another: ids are the server's, and one
        that restored the conversation may have given the same id to another turn (then the
        cut goes unnamed, as to a server that does not take the name)."""
        turn = self._turn
        if turn is not None and turn_id == turn.turn_id and self._turn_made == self._made:
            return True  # the last turn: what an unnamed cut would take anyway
        return {made for opened, made in self._opened if opened == turn_id} == {self._made}
