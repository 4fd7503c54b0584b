"""``Journal``: the client's copy of its conversation's history, kept from the server's
``history`` deltas, to give a server that lost the conversation its history back (``restore``).

It holds what the server's history holds, turn by turn (``engine.records.TurnRecord`` as
numpy arrays): bounded as that is by the conversation's context budget (the server's trims
arrive as deltas too), and dropped with the conversation. Pure Python and numpy (no torch).

It also holds the assistant turn in flight (one turn at most: ``InflightTurn``), from the
codes of its frames and the text ids that come with them (``turn.words``) or as the server
takes them (``turn.text_ids``), until its end reaches the history. When its server is lost
the caller says how much of it was heard (``keep_lost``: the service's decision, as for an
interruption), and the restore carries it, cut there exactly as the engine's interruption
cuts a turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.client.journal_turns import InflightTurn, JournalTurn
from moss_pipecat.speech.events import TurnSummary


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
        self.turn_noise: int | None = None  # the counter at the last turn's frame 0 (``history``)
        self.valid = True  # False after a missed delta, until the next full one
        self.deltas = 0
        self.copies = 0  # of them full
        # The rev of the last delta, while the journal holds its copy with nothing changed
        # here since (``at``): a resume on its server then needs only what changed since.
        self._at: int | None = None
        # Set while a server that made the conversation anew may not hold this history yet
        # (its ``restore`` is due, or was sent and no reply came): see ``apply``.
        self.restore_due = False
        # Set when another server than the one this history came from resumed the
        # conversation: its copy may be older (the call went on elsewhere meanwhile, e.g. while
        # it was unreachable). Its full history is then checked against this one (``apply``):
        # ``stale`` if it differs, and the session replaces it from here.
        self.verify_due = False
        self.stale = False
        self.inflight: InflightTurn | None = None  # the assistant turn being generated
        # The turn in flight when its server was lost, cut at what was heard (``keep_lost``):
        # restored after the history, until a server reports holding it.
        self.lost: JournalTurn | None = None
        self._lost_from: InflightTurn | None = None  # what ``lost`` was cut from
        self._lost_heard = 0

    @property
    def restorable(self) -> bool:
        """Whether there is a history to restore (a voice, a turn, or only the place of the
        sampling noise, e.g. after a reset) and it is whole."""
        has = bool(self.turns) or self.voice is not None or self.lost is not None
        return self.valid and (has or self.noise > 0)

    @property
    def at(self) -> int | None:
        """The rev of the server's delta whose copy the journal holds (``hello.history_at``);
        None where it holds another: a cut made here, a restore due, a copy to check or
        replace, a delta missed. (A turn lost here is not in the copy: a server that holds
        the call sends it as it kept it.)"""
        due = self.restore_due or self.verify_due or self.stale
        return None if due or not self.valid else self._at

    def unsync(self) -> None:
        """Its copy is no longer a server's to resume (``at``): another server answered, or
        one made the conversation anew."""
        self._at = None

    @property
    def empty(self) -> bool:
        """Whether the history is known to hold nothing (no turn, no voice, no turn lost with
        its server): a server that lost it lost nothing."""
        return self.valid and not self.turns and self.voice is None and self.lost is None

    @property
    def nbytes(self) -> int:
        """The journal's size: its ids and codes."""
        voice = 0 if self.voice is None else self.voice.nbytes
        extra = sum(t.nbytes for t in (self.inflight, self.lost) if t is not None)
        return voice + extra + sum(t.nbytes for t in self.turns)

    # ---- the turn in flight (filled by the link's reader) ----------------------------------
    def turn_started(self, turn_id: int) -> None:
        self.inflight = InflightTurn(turn_id, noise=self.noise)

    def turn_text(self, msg: P.TurnWords) -> None:
        """Takes a ``turn.words`` message's text ids (one without any changes nothing)."""
        t = self.inflight
        if t is not None and t.turn_id == msg.turn_id:
            t.add_text(msg)

    def turn_ids(self, turn_id: int, start: int, ids: Sequence[int]) -> None:
        """Takes a ``turn.text_ids`` message's ids."""
        t = self.inflight
        if t is not None and t.turn_id == turn_id:
            t.add_ids(start, ids)

    def turn_frame(self, turn_id: int, index: int, codes: Sequence[int]) -> None:
        t = self.inflight
        if t is not None and t.turn_id == turn_id:
            t.add_frame(index, np.asarray(codes, dtype=np.uint16))

    def turn_ended(self, turn_id: int) -> None:
        """Its end came (the history delta before it holds the turn)."""
        if self.inflight is not None and self.inflight.turn_id == turn_id:
            self.inflight = None

    def keep_lost(self, turn_id: int, heard: int, units: int | None = None) -> TurnSummary | None:
        """Turn ``turn_id`` was lost with its server after ``heard`` of its frames (``units``
        of its units, if counted) were heard (the caller's decision): the next restore carries
        it, cut there. Returns the interruption's summary, as the engine's cut would say it;
        None when it is not the turn in flight, or an earlier decision kept no more."""
        t = self.inflight
        if t is None or t.turn_id != turn_id:
            t = self._lost_from  # decided again before the restore (a barge-in on its audio)
            if t is None or t.turn_id != turn_id or heard >= self._lost_heard:
                return None  # what was heard never grows back
        self.inflight, self._lost_from, self._lost_heard = None, t, heard
        self.lost = t.cut(heard)
        if self.lost is not None:  # restored as the last turn: the same reply, its words known
            self.lost = replace(self.lost, reply=t.kept())
        kept = 0 if self.lost is None else len(self.lost.frames)  # none if it can't be rebuilt
        logger.info(f"turn {turn_id} lost with its server: {kept} heard frames kept")
        return t.summary(kept, units)

    @property
    def last_reply(self) -> InflightTurn | None:
        """The history's last turn as it was in flight here, if it is a reply that was (None
        where that is not known: a full copy, a user turn)."""
        return self.turns[-1].reply if self.turns else None

    def ends_with_reply(self, turn_id: int) -> bool:
        """Whether the history's last turn is reply ``turn_id`` as it was in flight here, and
        nothing follows it (no turn in flight, none lost), in a whole history."""
        t, last = self.last_reply, self.last_turn()
        if t is None or t.turn_id != turn_id or last is None or last.role != "assistant":
            return False
        return self.lost is None and self.inflight is None and self.valid

    def cut_last(self, turn_id: int, heard: int, units: int | None = None) -> TurnSummary | None:
        """Cuts the history's last turn, reply ``turn_id``, to its first ``heard`` frames, as
        the engine's cut would (``AssistantTurn.close``), while no server answers: the restore
        carries it (a reply the server finished, still playing; in a back-to-back barge-in,
        after the newer reply, lost with its server or finished, was cut to nothing; only where
        ``ends_with_reply``). Returns the interruption's summary; None when all of it was
        heard (nothing to cut)."""
        t, last = self.last_reply, self.last_turn()
        if t is None or last is None or not self.ends_with_reply(turn_id):
            raise ValueError(f"turn {turn_id} is not the journal's last reply")
        k = max(0, min(heard, len(last.frames)))
        if k == len(last.frames):
            return None  # heard whole: nothing to cut
        ids, frames = last.ids[: last.lead + k + 1], last.frames[:k]
        self.turns[-1:] = [JournalTurn("assistant", ids, last.lead, frames, t)] if k else []
        mark = self.turn_noise
        if mark is not None:  # as the engine's cut: the draws past the heard never were
            self.noise = max(0, mark + k)
        t.drawn = None if mark is None else self.noise - mark
        if k == 0:  # gone: the turn before it is the last; its noise began its draws before
            before = self.last_reply
            known = mark is not None and before is not None and before.drawn is not None
            self.turn_noise = mark - before.drawn if known else None
        self._lost_from = None  # the lost reply after it was cut to nothing: the noise goes on here
        self._at = None
        logger.info(f"turn {turn_id} cut while no server answers: {k} heard frames kept")
        return TurnSummary(
            turn_id,
            "interrupted",
            audio_frames=len(last.frames),
            heard_frames=k,
            text_ids=list(t.ids),
            spoken_text=t.spoken(k, units),
        )

    def apply(self, msg: P.History) -> None:
        """Takes one ``history`` delta (see ``protocol.History``)."""
        self.deltas += 1
        self.copies += msg.full
        self._at = None  # until it is taken whole (below)
        if msg.full and self.verify_due:
            self.verify_due = False
            if self.valid and not self._holds(msg):
                logger.warning(f"history {msg.rev}: the server's copy is older than the journal's")
                self.stale = self.restore_due = True
                self.rev = msg.rev
                return
        if self.restore_due and not msg.full:
            self.rev = msg.rev  # of the copy the restore replaces: the journal keeps its own
            return
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
        # The last turn replaced by one (a cut of it on the server): the same turn.
        recut = not msg.full and len(msg.turns) == 1 and msg.keep == len(self.turns) - msg.drop - 1
        turns = [] if msg.full else self.turns[msg.drop :][: msg.keep]
        new = self._turns_of(msg)
        ended = None
        if any(t.role == "assistant" for t in msg.turns):
            # It ended: it is in the history now (as its server kept it, if lost here)
            ended = self.inflight if self.inflight is not None else self._lost_from
            self.inflight = None
        elif self.inflight is not None:
            self.inflight.noise = None  # the counter moved under it (a reseed, a resume)
        # The reply the last new turn is, where known: the one in flight that landed (also in a
        # full copy: the first one after a connection may come after it), or the last turn the
        # server cut (a recut: the same turn).
        reply = self.last_reply if recut else None  # (the turns before this delta)
        if ended is not None and new and ended.made(new[-1]):
            reply = ended.kept()
        if reply is not None:
            new[-1] = replace(new[-1], reply=reply)
        if msg.full:
            self._known_replies(new)
        turns += new
        self.turns = turns
        last = self.last_reply
        if last is not None and msg.turn_noise is not None and self.inflight is None:
            last.drawn = msg.noise - msg.turn_noise  # (a turn in flight draws on the counter)
        self.lost = self._lost_from = None  # a server holds the history: with it, or not
        if msg.full or msg.voice_changed:
            self.voice = None if msg.voice is None else P.codes_from_b64(msg.voice, self.rvq)
        self.seed, self.noise, self.rev = msg.seed, msg.noise, msg.rev
        self.turn_noise = msg.turn_noise
        self.valid = self.valid or msg.full
        self._at = msg.rev

    def _known_replies(self, new: list[JournalTurn]) -> None:
        """A full copy's last turns that are this journal's (a restore that landed, a resumed
        copy): the replies among them keep what the journal knew of them (their words)."""
        old = self.turns if self.lost is None else [*self.turns, self.lost]
        for i in range(1, min(len(old), len(new)) + 1):
            if not old[-i].same(new[-i]):
                return
            if new[-i].reply is None:
                new[-i] = replace(new[-i], reply=old[-i].reply)

    def spoken_text(self, heard: int, units: int | None = None) -> str | None:
        """What the last turn, a reply cut at ``heard`` frames, said in them, from the words the
        journal holds of it (None where it holds none: a reply it did not see in flight)."""
        last = self.last_turn()
        if last is None or last.reply is None or len(last.frames) != heard:
            return None
        return last.reply.spoken(heard, units)

    def _turns_of(self, msg: P.History) -> list[JournalTurn]:
        return [
            JournalTurn(
                t.role,
                np.asarray(t.ids, dtype=np.uint32),
                t.lead,
                P.codes_from_b64(t.codes, self.rvq),
            )
            for t in msg.turns
        ]

    def _holds(self, msg: P.History) -> bool:
        """Whether a full history is the one this journal holds (turns and voice; a turn lost
        with another server is one this server never saw)."""
        if self.lost is not None:
            return False
        theirs = self._turns_of(msg)
        voice = None if msg.voice is None else P.codes_from_b64(msg.voice, self.rvq)
        same_voice = (voice is None) == (self.voice is None) and (
            voice is None or np.array_equal(voice, self.voice)
        )
        return (
            same_voice
            and len(theirs) == len(self.turns)
            and all(a.same(b) for a, b in zip(theirs, self.turns, strict=True))
        )

    def last_turn(self) -> JournalTurn | None:
        return self.turns[-1] if self.turns else None

    def ends_with_user_turn_after(self, before: JournalTurn | None) -> bool:
        """Whether the history ends with a user turn that is not ``before`` (its last turn
        when a user turn was sent): that user turn landed."""
        last = self.last_turn()
        new = last is not None and (before is None or not last.same(before))
        return new and last.role == "user"

    def restore_request(self, seed: int | None = None) -> tuple[dict, bytes]:
        """The ``restore`` message's fields and its binary frame; ``seed``: the one the
        conversation was made with, for a journal that has not heard it (no delta came before
        its server was lost: the noise's place goes with it). ``turn_noise`` where known: the
        last turn's noise start, so a cut of that reply on the new server rolls back as on
        the lost one."""
        turns = self.turns if self.lost is None else [*self.turns, self.lost]
        records = [(t.role, t.lead, t.ids, t.frames) for t in turns]
        fields, data = P.pack_restore(self.voice, records)
        noise, turn_noise, lost = self.noise, self.turn_noise, self._lost_from
        if lost is not None and lost.noise is not None:
            # As the engine's cut: the frames past what was heard were never drawn.
            noise = lost.noise + (0 if self.lost is None else len(self.lost.frames))
        if self.lost is not None:  # its heard part is the last turn
            turn_noise = lost.noise
        fields = {**fields, "seed": seed if self.seed is None else self.seed, "noise": noise}
        if turn_noise is not None:
            fields["turn_noise"] = turn_noise
        return fields, data
