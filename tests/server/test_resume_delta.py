"""A call resumed on the server that holds it gets what changed in its history since the
journal's last delta (``hello.history_at``), not the whole history again: a 32K-row call's
full history is ~1.4 MB, sent on every reconnect before, so on a link that drops every few
MB a call could spend its connections on history. The journal must end up holding exactly
the server's copy either way; where it cannot say which copy it holds (a cut made here, a
restore due, another server, a missed delta) the server sends the full one as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.client.journal import Journal
from moss_pipecat.model import SamplingParams
from moss_pipecat.protocol.errors import ProtocolError
from moss_pipecat.protocol.history import codes_b64

from .conftest import TOKEN, eventually
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


# (server: this one's id or another's, rev: past the server's last by this much) -> full
CASES = [("this", 0, False), ("this", -1, True), ("this", 1, True), ("other", 0, True)]


@pytest.mark.parametrize(("server_is", "off", "full"), CASES)
async def test_history_at_gets_a_delta_only_at_this_servers_last_rev(
    make_tiny_engine, make_server, server_is, off, full
):
    """A rev behind the server's (a delta sent to a connection that departed first), ahead of
    it, or another server's (the same conversation id elsewhere counts its own revs) gets the
    full history; this server's last rev gets what changed since: nothing, here."""
    server = await make_server(make_tiny_engine(eos_min_frames=3), token=TOKEN)
    client = RemoteEngine(server.url, token=TOKEN)
    session = await client.create_session(conversation_id="at", sampling=SAMPLED, seed=3)
    await say(session, "One.", 3)
    await say(session, "Two.", 3)
    rev = session.journal.rev
    assert rev == server.hub.conversations["at"].history_rev
    at = {"server": session.server_id if server_is == "this" else "elsewhere", "rev": rev + off}
    ws = await raw_hello(
        server, conversation_id="at", resume_secret=session.resume_secret, history=True,
        history_at=at,
    )  # fmt: skip
    ready = json.loads(await ws.recv())
    assert (ready["type"], ready["resumed"]) == ("ready", True)
    assert P.HELLO_HISTORY_AT in ready["features"]
    first = json.loads(await ws.recv())
    assert (first["type"], first.get("full", False), first["rev"]) == ("history", full, rev + 1)
    if full:
        assert len(first["turns"]) == 2
    else:
        assert (first.get("drop", 0), first["keep"], first.get("turns", [])) == (0, 2, [])
    await ws.close()
    await client.aclose()


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
