"""A barge-in's cut whose connection is lost before its reply: the server made it and kept the
conversation, or the connection went first (the server then cuts the turn at the frames it
had sent, more than were heard), or the server lost the conversation with it. The client
makes the cut once more after the reconnect (from its journal when the turn was lost with its
connection), so the history keeps what was heard and the caller gets the cut's summary, as
if the cut had been made once on a clean connection. Before, the call raised (an
``ErrorFrame`` and no ``on_reply_interrupted``), and in the second case the history kept the
frames sent past what was heard."""

from __future__ import annotations

import asyncio

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.engine.session import Session

from .conftest import GREEDY, TOKEN, eventually
from .turns import LONG_TEXT, back_to_back, read_chunks, same_next_reply, say, speak


async def _cut_call(remote, cid: str, heard: int):
    """A turn, then a long reply cut at ``heard`` frames once 8 came: the cut's summary and
    the snapshot after it."""
    session = await remote.create_session(conversation_id=cid, sampling=GREEDY)
    await say(session, "Hello there.", 3)
    turn = await session.start_turn(max_frames=30)
    turn.push_text(LONG_TEXT)
    turn.end_text()
    await read_chunks(turn, 8)
    cut = await asyncio.wait_for(session.interrupt(heard, turn_id=turn.turn_id), 30)
    snap = await session.snapshot()
    await session.close()
    return cut, snap


@pytest.mark.parametrize("heard", [3, 0])
@pytest.mark.parametrize("case", ["applied-resumed", "dropped-resumed", "lost-restored"])
async def test_a_cut_lost_with_its_connection_is_made_once(
    make_tiny_engine, make_server, monkeypatch, case, heard
):
    """(Nothing heard: the cut takes the whole reply away; it names its turn, as the service's
    cuts do, so sent again it does not cut the turn before it, now the last:
    ``Interrupt.turn_id``.)"""
    engine = make_tiny_engine(eos_min_frames=60)
    keep = case != "lost-restored"
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60 if keep else 0)
    remote = RemoteEngine(server.url, token=TOKEN)
    want_cut, want = await _cut_call(remote, "clean", heard)

    calls, interrupt = [], Session.interrupt

    async def dropping(self, *args, **kwargs):  # the server's engine call of the cut
        if self.id != "lost":
            return await interrupt(self, *args, **kwargs)
        calls.append(args)
        if len(calls) > 1:
            return await interrupt(self, *args, **kwargs)
        conn = server.hub.conversations["lost"].conn
        if case == "applied-resumed":
            await interrupt(self, *args, **kwargs)
        conn.abort()  # no history delta, no reply, no turn end
        if case == "lost-restored":
            await self.close()  # as a server that died with it: the conversation is gone
        return None

    monkeypatch.setattr(Session, "interrupt", dropping)
    cut, snap = await _cut_call(remote, "lost", heard)
    assert snap["turn_frames"] == want["turn_frames"] == [3, heard][: 2 if heard else 1]
    assert torch.equal(snap["rows"], want["rows"])
    assert (cut.stop, cut.heard_frames) == (want_cut.stop, want_cut.heard_frames)
    assert cut.spoken_text == want_cut.spoken_text and bool(cut.spoken_text) == bool(heard)
    await remote.aclose()


async def test_a_cut_of_a_turn_its_lost_connection_took_away_leaves_the_turn_before(
    make_tiny_engine, make_server
):
    """A reply's connection is lost before its first frame: the server cuts the turn when the
    connection departs (nothing of it was sent: it is gone), and the barge-in that follows
    cuts it to 0 frames. That cut names its turn (as the service's cuts do), so it cuts
    nothing on the server: unnamed, it cuts the turn before it, now the last (the whole of
    the first reply was lost)."""
    engine = make_tiny_engine(eos_min_frames=60)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="gone-turn", sampling=GREEDY)
    await say(session, "Hello there.", 3)
    before = await session.snapshot()
    turn = await session.start_turn(max_frames=30)  # no text yet: no frame comes
    session._link.ws.transport.abort()
    await eventually(lambda: turn.lost, what="the turn to be lost")
    cut = await asyncio.wait_for(session.interrupt(0, turn_id=turn.turn_id), 30)
    assert cut is not None and (cut.stop, cut.heard_frames) == ("interrupted", 0)
    after = await session.snapshot()
    assert session.resumed and after["turn_frames"] == [3]
    assert torch.equal(after["rows"], before["rows"])
    await session.close()
    await remote.aclose()


@pytest.mark.parametrize("features", [True, False], ids=["named", "older-server"])
async def test_a_cut_names_its_turn_only_to_a_server_that_takes_it(
    make_tiny_engine, make_server, monkeypatch, features
):
    """``turn_id`` is an optional field of ``interrupt``: a client sends it only where the
    server's ``ready`` lists the feature (a server older than it refuses fields it does not
    know, and every cut would fail)."""
    from moss_pipecat import protocol as P

    if not features:
        monkeypatch.setattr(P, "FEATURES", ())
    engine = make_tiny_engine(eos_min_frames=60)
    server = await make_server(engine, token=TOKEN)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="named", sampling=GREEDY)
    turn = await session.start_turn(max_frames=30)
    turn.push_text(LONG_TEXT)
    await read_chunks(turn, 2)
    named, interrupt = [], Session.interrupt

    async def recorded(self, heard_frames, heard_units=None, turn_id=None):
        named.append(turn_id)
        return await interrupt(self, heard_frames, heard_units, turn_id)

    monkeypatch.setattr(Session, "interrupt", recorded)
    assert (await session.interrupt(1, turn_id=turn.turn_id)).heard_frames == 1
    assert named == [turn.turn_id if features else None]
    await session.close()
    await remote.aclose()


async def test_a_lost_cut_of_the_turn_before_the_last_leaves_the_turn_before_that(
    make_tiny_engine, make_server, monkeypatch
):
    """A barge-in over back-to-back replies: the next reply's turn was already opened behind
    the one playing, so the service cuts that newer turn to 0 frames, then the playing one.
    The second cut's reply is lost after the server made it, to 0 frames as well. Sent again,
    it names its turn, though it is not the session's last (its id is one this server gave),
    so it cuts nothing more and answers as the first time; unnamed, it cut the reply before
    them, the last turn by then."""
    engine = make_tiny_engine(eos_min_frames=60)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="two", sampling=GREEDY)
    await say(session, "Hello there.", 3)
    before = await session.snapshot()
    playing = await speak(session, "How are you?", 4)
    await playing.wait()
    newer = await session.start_turn(max_frames=30)
    newer.push_text(LONG_TEXT)
    await read_chunks(newer, 2)
    assert (await session.interrupt(0, turn_id=newer.turn_id)).heard_frames == 0
    calls, interrupt = [], Session.interrupt

    async def dropping(self, heard_frames, heard_units=None, turn_id=None):
        calls.append(turn_id)
        if len(calls) == 1:
            server.hub.conversations["two"].conn.abort()  # made, its reply lost
        return await interrupt(self, heard_frames, heard_units, turn_id)

    monkeypatch.setattr(Session, "interrupt", dropping)
    cut = await asyncio.wait_for(session.interrupt(0, turn_id=playing.turn_id), 30)
    after = await session.snapshot()
    assert after["turn_frames"] == [3] and torch.equal(after["rows"], before["rows"])
    assert (cut.turn_id, cut.stop, cut.heard_frames) == (playing.turn_id, "interrupted", 0)
    assert calls == [playing.turn_id, playing.turn_id] and session.resumed
    await session.close()
    await remote.aclose()


@pytest.mark.parametrize("features", [True, False], ids=["current", "older-server"])
async def test_a_back_to_back_barge_in_over_a_lost_server_keeps_what_was_heard(
    make_tiny_engine, make_server, monkeypatch, features
):
    """The server is lost while the reply after a first one draws (a back-to-back pair, the
    first playing), and the barge-in comes then: the second reply is cut to nothing in the
    journal, the first to what was heard on the server that restored the history (before,
    that cut was dropped: the lost second reply's state answered it). That history then
    holds what a local engine holds after the same cut, and with its noise's place
    (``restore.turn_noise``) the next seeded reply is the same. A server that does not list
    the field gets the restore without it (it would refuse the field, and the history)."""
    from moss_pipecat import protocol as P
    from moss_pipecat.model import SamplingParams

    if not features:
        monkeypatch.setattr(P, "FEATURES", (P.CUT_NAMES_TURN,))
    restored, restore = [], Session.restore

    async def recorded(self, turns, voice=None, seed=None, noise_counter=0, turn_noise=None):
        restored.append(turn_noise)
        return await restore(self, turns, voice, seed, noise_counter, turn_noise)

    monkeypatch.setattr(Session, "restore", recorded)
    sampled, rules = SamplingParams(), {"eos_min_frames": 60}
    server = await make_server(make_tiny_engine(**rules), token=TOKEN, idle_expiry_s=0)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="b2b", sampling=sampled, seed=5)
    local = make_tiny_engine(**rules).create_session(sampling=sampled, seed=5)
    first, second = await back_to_back(session, local)
    conv = server.hub.conversations["b2b"]
    conv.conn.abort()
    await conv.session.close()  # as a server that died with it: the conversation is gone
    await eventually(lambda: second.lost, what="the second reply to be lost")
    assert (await session.interrupt(0, turn_id=second.turn_id)).heard_frames == 0
    cut = await asyncio.wait_for(session.interrupt(2, turn_id=first.turn_id), 30)
    mine = await speak(local, "How are you?", 6)
    await mine.wait()
    my_cut = await local.interrupt(2)
    assert session.restored == 1 and len(restored) == 1
    assert (restored[0] is not None) == features  # the first reply's noise start, or none
    assert cut is not None and (cut.stop, cut.heard_frames) == (my_cut.stop, my_cut.heard_frames)
    # The restored reply's words are the journal's (the server holds none of their times).
    assert cut.spoken_text == my_cut.spoken_text and my_cut.spoken_text
    assert torch.equal((await session.snapshot())["rows"], (await local.snapshot())["rows"])
    assert await same_next_reply(session, local) or not features
    await session.close()
    await remote.aclose()


async def test_a_later_cut_of_a_restored_reply_says_its_words(make_tiny_engine, make_server):
    """A reply lost with its server (gone with the conversation) is cut in the journal at 6
    heard frames and restored as the last turn; a later decision that heard 3 cuts it on the
    server that restored it. That cut's summary says the words of those 3 frames, as a cut on
    a clean call would: they are the journal's (the server holds no word times of a restored
    reply; before, it said none)."""
    engine = make_tiny_engine(eos_min_frames=60)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=0)
    remote = RemoteEngine(server.url, token=TOKEN)
    want, _ = await _cut_call(remote, "clean", 3)
    session = await remote.create_session(conversation_id="restored", sampling=GREEDY)
    await say(session, "Hello there.", 3)
    turn = await session.start_turn(max_frames=30)
    turn.push_text(LONG_TEXT)
    turn.end_text()
    await read_chunks(turn, 8)
    conv = server.hub.conversations["restored"]
    conv.conn.abort()
    await conv.session.close()  # as a server that died with it: the conversation is gone
    await eventually(lambda: turn.lost, what="the reply to be lost")
    assert (await session.interrupt(6, turn_id=turn.turn_id)).heard_frames == 6
    assert session.restored == 1
    cut = await session.interrupt(3, turn_id=turn.turn_id)
    assert (cut.heard_frames, cut.spoken_text) == (want.heard_frames, want.spoken_text)
    assert cut.spoken_text and (await session.snapshot())["turn_frames"] == [3, 3]
    await session.close()
    await remote.aclose()
