"""A call that went on elsewhere while its first server was unreachable but alive: when that
server resumes it again (the second one lost), its copy of the history is older than what was
said meanwhile. The client checks a resumed history against its journal whenever another server
than the last one resumes the conversation, and replaces an older copy: nothing said on the
second server is lost. (Before, the older copy was taken as it was, in silence.)"""

from __future__ import annotations

import os
import signal

import numpy as np
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.client.journal import Journal
from moss_pipecat.protocol.history import codes_b64
from moss_pipecat.server import ServerUnavailableError

from .conftest import GREEDY
from .processes import ServerProcess
from .turns import say


async def say_after_loss(session, text: str, frames: int) -> int:
    """``say``, once more if the first try met the link of a server just lost (the call in
    flight at a loss fails: ``test_faults``); the second reconnects."""
    try:
        return await say(session, text, frames)
    except ServerUnavailableError:
        return await say(session, text, frames)


async def test_a_server_that_resumes_an_older_copy_gets_the_history_said_elsewhere(
    fixtures_dir, tmp_path
):
    async with (
        ServerProcess(fixtures_dir, tmp_path / "a.log") as a,
        ServerProcess(fixtures_dir, tmp_path / "b.log") as b,
    ):
        client = RemoteEngine(
            [a.url, b.url],
            connect_timeout=1.5,
            reconnect_timeout=6.0,
            ping_interval=1.0,
            ping_timeout=1.0,
            frame_timeout=3.0,
        )
        session = await client.create_session(conversation_id="elsewhere-1", sampling=GREEDY)
        assert await say(session, "One.", 4) == 4
        on_a = session.server_id
        os.kill(a.procs[-1].pid, signal.SIGSTOP)  # unreachable, not gone: it keeps its copy
        try:
            assert await say_after_loss(session, "Two.", 4) == 4
            assert session.server_id != on_a and session.restored == 1
            on_b = await session.snapshot()
        finally:
            os.kill(a.procs[-1].pid, signal.SIGCONT)
        b.kill()
        assert await say_after_loss(session, "Three.", 4) == 4
        assert session.server_id == on_a and session.resumed  # A's older copy, resumed ...
        assert session.restored == 2 and session.history_lost == 0  # ... and replaced
        after = await session.snapshot()
        await session.close()
    assert [r for r, _ in on_b["turns"]] == ["assistant"] * 2
    assert [r for r, _ in after["turns"]] == ["assistant"] * 3, after["turns"]
    n = on_b["rows"].shape[0]
    assert torch.equal(after["rows"][:n], on_b["rows"])  # One and Two, as B held them


# ---- the journal's rule, message by message ----------------------------------------------------
RVQ = 2


def _turn(ids: list[int], frames: int) -> P.HistoryTurn:
    codes = np.arange(frames * RVQ, dtype=np.uint16).reshape(frames, RVQ) + ids[0]
    return P.HistoryTurn(role="assistant", ids=ids, lead=1, codes=codes_b64(codes))


def _journal(*turns: P.HistoryTurn) -> Journal:
    journal = Journal(rvq=RVQ)
    journal.apply(P.History(rev=1, full=True, turns=list(turns)))
    return journal


def test_a_resumed_copy_that_is_the_journals_is_taken():
    one, two = _turn([5, 6], 2), _turn([7], 1)
    journal = _journal(one, two)
    journal.verify_due = True
    journal.apply(P.History(rev=9, full=True, turns=[one, two]))
    assert not (journal.verify_due or journal.stale or journal.restore_due)
    journal.apply(P.History(rev=10, keep=2, turns=[_turn([8], 1)]))  # later deltas as ever
    assert [t.ids.tolist() for t in journal.turns] == [[5, 6], [7], [8]]


def test_an_older_resumed_copy_is_stale_and_the_journal_keeps_its_own_until_restored():
    one, two = _turn([5, 6], 2), _turn([7], 1)
    journal = _journal(one, two)
    journal.verify_due = True
    journal.apply(P.History(rev=4, full=True, turns=[one]))  # the server's older copy
    assert journal.stale and journal.restore_due and not journal.verify_due
    journal.apply(P.History(rev=5, drop=1))  # its reset: a delta of the copy being replaced
    assert [t.ids.tolist() for t in journal.turns] == [[5, 6], [7]]
    fields, _ = journal.restore_request()
    assert fields["turns"] == 2
    journal.apply(P.History(rev=6, full=True, turns=[one, two]))  # the restore landed
    assert not journal.restore_due and len(journal.turns) == 2


def test_a_copy_with_another_voice_is_not_the_journals():
    one = _turn([5], 1)
    journal = _journal(one)
    journal.verify_due = True
    voice = codes_b64(np.ones((3, RVQ), dtype=np.uint16))
    journal.apply(P.History(rev=2, full=True, turns=[one], voice=voice, voice_changed=True))
    assert journal.stale


def test_a_turn_lost_with_the_last_server_is_not_in_another_servers_copy():
    one = _turn([5], 1)
    journal = _journal(one)
    journal.turn_started(3)
    journal.turn_text(
        P.TurnWords(turn_id=3, index=0, words=[], text_ids=[9, 10], lead=1, text_pad=0)
    )
    journal.turn_frame(3, 0, [1, 2])
    journal.keep_lost(3, heard=1)  # the reply in flight when that server was lost
    journal.verify_due = True
    journal.apply(P.History(rev=7, full=True, turns=[one]))
    assert journal.stale and journal.restore_request()[0]["turns"] == 2
