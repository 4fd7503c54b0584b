"""A call resumed on the server that holds it gets what changed in its history since the
journal's last delta (``hello.history_at``), not the whole history again: a 32K-row call's
full history is ~1.4 MB, sent on every reconnect before, so on a link that drops every few
MB a call could spend its connections on history. The journal must end up holding exactly
the server's copy either way; where it cannot say which copy it holds (a cut made here, a
restore due, another server, a missed delta) the server sends the full one as before."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.client.journal import Journal
from moss_pipecat.model import SamplingParams
from moss_pipecat.protocol.errors import ProtocolError, ServerUnavailableError
from moss_pipecat.protocol.history import codes_b64
from moss_pipecat.server import conversation

from .conftest import TOKEN, eventually
from .proxies import SeveringProxy
from .random_calls import assert_the_journal_holds_the_servers
from .turns import LONG_TEXT, read_chunks, same_next_reply, say, speak
from .wire import raw_hello

SAMPLED = SamplingParams()
# Paced (the reply is still being made when its connection drops), no EOS before 30 frames.
RULES = {"lookahead_s": 0.4, "eos_min_frames": 30}


async def _drop(session) -> None:
    session._link.ws.transport.abort()  # the connection, not the server, is lost
    await eventually(lambda: session._link.failure is not None, what="the link to fail")


async def test_a_resume_on_the_same_server_gets_what_changed_not_the_whole_history(
    make_tiny_engine, make_server, voice_codes
):
    """Idle, and with a reply in flight (lost with its connection, then cut at what was heard,
    as the service does): each resume is one delta, the journal holds the server's copy, and
    the call is the one a local engine makes."""
    server = await make_server(make_tiny_engine(**RULES), token=TOKEN, idle_expiry_s=60)
    client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=10)
    session = await client.create_session(conversation_id="delta", sampling=SAMPLED, seed=3)
    local = make_tiny_engine(**RULES).create_session(sampling=SAMPLED, seed=3)
    for s in (session, local):
        await s.set_voice(voice_codes)
        await say(s, "Hello there.", 4)
        await say(s, "How are you?", 5)
    copies, rev = session.journal.copies, session.journal.rev
    assert copies == 1  # the first history of the conversation

    await _drop(session)
    assert await say(session, "Still here.", 3) == await say(local, "Still here.", 3)
    assert session.resumed and session.reconnects == 1 and session.restored == 0
    assert session.journal.copies == copies and session.journal.rev > rev
    await assert_the_journal_holds_the_servers(session, server)

    turn = await speak(session, LONG_TEXT, 30)
    await read_chunks(turn, 5)
    await _drop(session)
    assert turn.lost
    cut = await session.interrupt(3, turn_id=turn.turn_id)  # kept in the journal, then resumed
    mine = await speak(local, LONG_TEXT, 30)
    await read_chunks(mine, 3)
    my_cut = await local.interrupt(3)
    assert (cut.heard_frames, cut.spoken_text) == (my_cut.heard_frames, my_cut.spoken_text)
    assert session.resumed and session.reconnects == 2 and session.restored == 0
    assert session.journal.copies == copies  # the lost reply came as a delta too
    resumes = server.hub.metrics.resumes
    assert (resumes.value(history="delta"), resumes.value(history="full")) == (2, 0)
    await assert_the_journal_holds_the_servers(session, server)
    assert torch.equal((await session.snapshot())["rows"], (await local.snapshot())["rows"])
    assert await same_next_reply(session, local)
    await session.close()
    await client.aclose()


# (server: this one's id or another's, rev: past the server's last by this much, deltas a
# conversation keeps) -> the deltas sent again before what changed since, or None: the full
# history (with 1 kept: the one before the last is gone).
CASES = [
    ("this", 0, 8, 0),
    ("this", -1, 8, 1),
    ("this", -2, 8, 2),
    ("this", 1, 8, None),
    ("other", 0, 8, None),
    ("this", -1, 1, 1),
    ("this", -2, 1, None),
]


@pytest.mark.parametrize(("server_is", "off", "ring", "again"), CASES)
async def test_history_at_gets_the_deltas_it_missed_while_they_are_kept(
    make_tiny_engine, make_server, monkeypatch, server_is, off, ring, again
):
    """A rev behind the server's (deltas sent to a connection that departed first) gets those
    deltas again as they were taken, then what changed since (nothing, here), so a journal at
    that rev takes them in order; this server's last rev gets only what changed since. A rev
    ahead of the server's, another server's (the same conversation id elsewhere counts its
    own revs), or one from before the deltas kept gets the full history."""
    monkeypatch.setattr(conversation, "RESENDABLE_DELTAS", ring)
    server = await make_server(make_tiny_engine(eos_min_frames=3), token=TOKEN)
    client = RemoteEngine(server.url, token=TOKEN)
    session = await client.create_session(conversation_id="at", sampling=SAMPLED, seed=3)
    for text in ("One.", "Two.", "Three."):
        await say(session, text, 3)
    rev = session.journal.rev
    conv = server.hub.conversations["at"]
    kept = [m.model_dump(exclude={"resume_ticket"}) for m in conv.recent_deltas]
    assert rev == conv.history_rev == 3 and len(kept) == min(2, ring)  # (the first is full)
    at = {"server": session.server_id if server_is == "this" else "elsewhere", "rev": rev + off}
    ws = await raw_hello(
        server, conversation_id="at", resume_secret=session.resume_secret, history=True,
        history_at=at,
    )  # fmt: skip
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert (ready["type"], ready["resumed"]) == ("ready", True)
    assert P.HELLO_HISTORY_AT in ready["features"]
    got = [await asyncio.wait_for(ws.recv(), 5) for _ in range((again or 0) + 1)]
    *resent, last = [P.parse_server_message(m) for m in got]
    assert [m.rev for m in resent] == list(range(rev + 1 - (again or 0), rev + 1))
    assert [m.model_dump(exclude={"resume_ticket"}) for m in resent] == kept[
        len(kept) - len(resent) :
    ]
    assert all(m.resume_ticket == ready.get("resume_ticket") for m in resent)  # a fresh one
    assert (last.type, last.full, last.rev) == ("history", again is None, rev + 1)
    if again is None:
        assert len(last.turns) == 3
    else:
        assert (last.drop, last.keep, last.turns) == (0, 3, [])
    assert server.hub.metrics.resumes.value(history="full" if again is None else "delta") == 1
    await ws.close()
    await client.aclose()


async def test_a_reply_that_ended_in_a_partition_comes_as_the_delta_it_missed(
    make_tiny_engine, make_server
):
    """A reply whose end (and its history delta) went into a silent partition: the client
    finds the connection dead, and on the next call resumes the conversation at its last
    delta; the server sends the missed ones again (before: the full history), and the
    journal holds the server's copy: the whole reply, as a local engine has it."""
    server = await make_server(make_tiny_engine(**RULES), token=TOKEN, idle_expiry_s=60)
    proxy = SeveringProxy(server.port)
    keepalive = {"ping_interval": 0.2, "ping_timeout": 0.3}
    client = RemoteEngine(await proxy.start(), token=TOKEN, reconnect_timeout=10, **keepalive)
    session = await client.create_session(conversation_id="missed", sampling=SAMPLED, seed=3)
    local = make_tiny_engine(**RULES).create_session(sampling=SAMPLED, seed=3)
    try:
        for s in (session, local):
            await say(s, "Hello there.", 4)
        copies, rev = session.journal.copies, session.journal.rev
        conv = server.hub.conversations["missed"]
        turn = await speak(session, "Short one.", 6)
        await read_chunks(turn, 1)
        proxy.sever(silent=True)  # the server sends on: the reply's end and its delta are lost
        await eventually(lambda: conv.turn is None and conv.history_rev > rev, what="its end")
        with pytest.raises(ServerUnavailableError):
            await turn.wait()
        proxy.heal()
        await say(local, "Short one.", 6)
        assert await say(session, "And on.", 3) == await say(local, "And on.", 3)
        assert session.resumed and session.restored == 0
        assert session.journal.copies == copies  # the missed deltas, not a full history
        resumes = server.hub.metrics.resumes
        assert (resumes.value(history="delta"), resumes.value(history="full")) == (1, 0)
        await assert_the_journal_holds_the_servers(session, server)
        assert torch.equal((await session.snapshot())["rows"], (await local.snapshot())["rows"])
        await session.close()
    finally:
        await client.aclose()
        await proxy.stop()


OLDER = "invalid 'hello' message: history_at: Extra inputs are not permitted"


@pytest.mark.parametrize("why", [OLDER, "invalid 'hello' message: some other fault"])
async def test_a_server_older_than_history_at_is_said_hello_again_without_it(
    make_tiny_engine, make_server, monkeypatch, why
):
    """A server that does not know the field (a rollback behind the same URL) refuses the
    hello as it refuses any unknown field; the client says hello again at once without it
    and takes the full history. A hello refused for another fault is that refusal."""
    server = await make_server(make_tiny_engine(eos_min_frames=3), token=TOKEN, idle_expiry_s=60)
    client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=10)
    session = await client.create_session(conversation_id="old", sampling=SAMPLED, seed=3)
    await say(session, "One.", 3)
    copies = session.journal.copies
    parse, refused = P.parse_client_message, []

    def older_server(raw):
        if '"history_at"' in raw:  # exactly an older server's refusal (or another fault)
            refused.append(raw)
            raise P.MessageError("bad_message", why)
        return parse(raw)

    monkeypatch.setattr(P, "parse_client_message", older_server)
    await _drop(session)
    if why != OLDER:
        with pytest.raises(ProtocolError, match="some other fault"):
            await say(session, "Two.", 3)
        assert len(refused) == 1
        await client.aclose()
        return
    assert await say(session, "Two.", 3) == 3
    assert len(refused) == 1 and session.resumed and session.restored == 0
    assert session.journal.copies == copies + 1
    assert server.hub.metrics.resumes.value(history="full") == 1
    await assert_the_journal_holds_the_servers(session, server)
    await session.close()
    await client.aclose()


# ---- the journal's rule, message by message ----------------------------------------------------
RVQ = 2


def _turn(ids: list[int], frames: int) -> P.HistoryTurn:
    codes = np.arange(frames * RVQ, dtype=np.uint16).reshape(frames, RVQ) + ids[0]
    return P.HistoryTurn(role="assistant", ids=ids, lead=1, codes=codes_b64(codes))


def test_the_journal_names_a_servers_copy_only_while_it_holds_it_untouched():
    journal = Journal(rvq=RVQ)
    assert journal.at is None  # nothing yet
    journal.apply(P.History(rev=1, full=True, turns=[_turn([5], 2)], turn_noise=0, noise=2))
    six = _turn([6], 3)
    journal.turn_started(6)  # a reply seen in flight, then landed
    for i, codes in enumerate(P.codes_from_b64(six.codes, RVQ)):
        journal.turn_frame(6, i, codes.tolist())
    journal.apply(P.History(rev=2, keep=1, turns=[six], turn_noise=2, noise=5))
    assert journal.at == 2
    journal.cut_last(6, 1)  # made here: the server may not make it (then its copy differs)
    assert journal.at is None
    journal.apply(P.History(rev=3, keep=1, turns=[_turn([6], 1)], turn_noise=2, noise=3))
    assert journal.at == 3  # the server's cut: its copy again
    # A turn lost here is not in the copy: still the server's (it sends the turn as it kept it).
    journal.turn_started(7)
    journal.keep_lost(7, 0)
    assert journal.at == 3
    journal.apply(P.History(rev=5, keep=2))  # a delta missed
    assert journal.at is None
    journal.apply(P.History(rev=6, full=True, turns=[_turn([5], 2)]))
    assert journal.at == 6
    journal.unsync()  # another server answered
    assert journal.at is None


def test_a_reply_lost_here_that_a_resumed_delta_brings_is_known_as_the_reply_it_was():
    """The delta brings the reply as its server kept it (cut where its connection departed);
    the journal knows it as the one it saw in flight, lost: a later cut of it made here, while
    no server answers, needs its words (``Journal.cut_last``)."""
    journal = Journal(rvq=RVQ)
    journal.apply(P.History(rev=1, full=True, turns=[_turn([5], 2)], turn_noise=0, noise=2))
    seven = _turn([7], 4)
    journal.turn_started(7)
    for i, codes in enumerate(P.codes_from_b64(seven.codes, RVQ)):
        journal.turn_frame(7, i, codes.tolist())
    journal.keep_lost(7, 1)  # lost with its connection, 1 frame heard
    assert journal.at == 1
    kept = _turn([7], 3)  # the server sent 3 frames when the connection departed
    journal.apply(P.History(rev=2, keep=1, turns=[kept], turn_noise=2, noise=5))
    assert journal.lost is None and journal.ends_with_reply(7)
    assert journal.cut_last(7, 1).heard_frames == 1


def test_a_conversation_sends_again_only_the_deltas_it_kept_since_its_last_full_history():
    conv = conversation.Conversation("c", session=None, sampling=None)
    assert conv.deltas_after(1) is None  # nothing told yet
    conv.cursor.started = True
    for rev, full in enumerate([True, False, False, True, False, False], start=1):
        conv.history_rev = rev
        conv.delta_taken(P.History(rev=rev, full=full))
    assert [m.rev for m in conv.deltas_after(4)] == [5, 6]
    assert [m.rev for m in conv.deltas_after(5)] == [6] and conv.deltas_after(6) == []
    assert conv.deltas_after(3) is None  # before the full history of rev 4
    assert conv.deltas_after(7) is None and conv.deltas_after(None) is None
    conv.recent_deltas.popleft()  # out of the ring
    assert conv.deltas_after(4) is None and [m.rev for m in conv.deltas_after(5)] == [6]
