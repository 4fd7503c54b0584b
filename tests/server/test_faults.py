"""Faults: dropped clients, expiry, a killed and restarted server, a failing session, takeover."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import SamplingParams
from moss_pipecat.server import ServerUnavailableError

from ..fixture_facts import frame_pcm_bytes
from .conftest import GREEDY, eventually
from .processes import ServerProcess
from .scripts import make_script, run_script
from .turns import LONG_TEXT, read_chunks, say, speak


async def test_client_disconnect_mid_stream_frees_the_turn_and_reconnect_resumes(
    make_tiny_engine, make_server
):
    # Paced, and no turn ends before 60 frames: the turn is still running when we drop.
    engine = make_tiny_engine(lookahead_s=0.4, eos_min_frames=60)
    server = await make_server(engine)
    client = RemoteEngine(server.url)
    session = await client.create_session(conversation_id="drop-1", sampling=GREEDY)
    turn = await speak(session, LONG_TEXT, 60)
    assert len(await read_chunks(turn, 3)) == 3
    session._link.ws.transport.abort()  # TCP reset: no close handshake

    with pytest.raises(ServerUnavailableError):
        await asyncio.wait_for(turn.wait(), 10)
    conv = server.hub.conversations["drop-1"]
    await eventually(lambda: conv.conn is None and conv.turn is None, what="the turn to be freed")
    snap = await conv.session.snapshot()
    assert snap["phase"] == "idle"
    assert [role for role, _ in snap["turns"]] == ["assistant"]  # cut to what was sent

    # The next call reconnects and finds the conversation with its history.
    turn2 = await session.start_turn(max_frames=5)
    assert session.resumed and session.reconnects == 1 and session.history_lost == 0
    turn2.push_text("And more.")
    turn2.end_text()
    assert len([c async for c in turn2]) == 5
    assert [r for r, _ in (await session.snapshot())["turns"]] == ["assistant", "assistant"]
    await session.close()
    assert engine.session_ids == []


async def test_conversation_expires_after_idle_timeout(make_tiny_engine, make_server, voice_codes):
    engine = make_tiny_engine(eos_min_frames=4)  # every turn here speaks its 4 frames
    server = await make_server(engine, idle_expiry_s=0.3, reap_interval_s=0.05)
    client = RemoteEngine(server.url, journal=False)  # a client that keeps no history
    voice = voice_codes
    session = await client.create_session(conversation_id="exp-1", sampling=GREEDY, voice=voice)
    system = (await session.snapshot())["rows"]
    await say(session, "Hi.", 4)
    session._link.ws.transport.abort()
    await eventually(lambda: engine.session_ids == [], what="the idle session to expire")
    assert server.hub.metrics.expired.value() == 1

    # The client comes back: a fresh conversation under the same id, and it says so.
    turn = await session.start_turn(max_frames=4)
    assert not session.resumed and session.history_lost == 1
    turn.push_text("Hi again.")
    turn.end_text()
    assert (await turn.wait()).audio_frames == 4
    snap = await session.snapshot()
    assert [r for r, _ in snap["turns"]] == ["assistant"]
    # The voice was re-applied to the fresh conversation.
    assert snap["system_rows"] == system.shape[0] > voice.shape[0]
    assert torch.equal(snap["rows"][: system.shape[0]], system)
    await session.close()


@pytest.mark.parametrize(
    ("journal", "voiced", "lost", "restored"),
    [(True, False, 0, 0), (False, False, 1, 0), (True, True, 0, 1), (False, True, 1, 0)],
    ids=["journal-empty", "no-journal", "journal-voice", "no-journal-voice"],
)
async def test_a_conversation_lost_with_nothing_in_it_is_not_counted_lost(
    make_tiny_engine, make_server, voice_codes, journal, voiced, lost, restored
):
    """``history_lost`` counts conversations that lost something: one whose journal holds no
    turn and no voice lost nothing (it was counted lost, with a warning, for an operator to
    chase); without a journal nothing says so, and a voice is history (restored, or lost)."""
    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, idle_expiry_s=0)  # a detached conversation ends at once
    client = RemoteEngine(server.url, journal=journal)
    voice = voice_codes if voiced else None
    session = await client.create_session(conversation_id="c", sampling=GREEDY, voice=voice)
    system = (await session.snapshot())["rows"]
    session._link.ws.transport.abort()
    await eventually(lambda: "c" not in server.hub.conversations, what="'c' to end")
    assert await say(session, "Hello again.", 3) == 3  # reconnects: made anew
    assert not session.resumed
    assert (session.history_lost, session.restored) == (lost, restored)
    snap = await session.snapshot()
    assert [r for r, _ in snap["turns"]] == ["assistant"]
    assert torch.equal(snap["rows"][: system.shape[0]], system)  # the voice is back either way
    await session.close()


@pytest.mark.parametrize("then", ["reset", "reseed"])
async def test_seeded_replies_go_on_as_they_would_have_after_the_conversation_is_lost(
    make_tiny_engine, make_server, then
):
    """A conversation whose turns were reset holds no history, but its sampling noise has
    moved on: a server that lost it gets that place back (an empty ``restore``), so the next
    seeded reply is the one the lost server would have drawn. A new seed changes no turn, yet
    the journal restores it too: the server sends a history delta for it (before, a restore
    brought back the seed and noise of the last turn)."""
    sampling = SamplingParams(temperature=0.9, top_k=20, top_p=0.9)
    engine = make_tiny_engine(eos_min_frames=6)
    server = await make_server(engine, idle_expiry_s=0)  # a detached conversation ends at once
    here = engine.create_session(sampling=sampling, seed=5)  # the same, never lost
    session = await RemoteEngine(server.url).create_session(
        conversation_id="n", sampling=sampling, seed=5
    )
    for s in (here, session):
        assert await say(s, "One.", 6) == 6
        await (s.reset() if then == "reset" else s.set_sampling(sampling, seed=9))
    session._link.ws.transport.abort()
    await eventually(lambda: "n" not in server.hub.conversations, what="'n' to end")
    replies = []
    for s in (here, session):  # the second reconnects and finds its conversation gone
        turn = await speak(s, "Two.", 6)
        replies.append([c.codes.tolist() async for c in turn])
    assert replies[0] == replies[1] and len(replies[0]) == 6
    assert (session.restored, session.history_lost) == (1, 0)
    await session.close()


async def test_server_killed_then_restarted_clear_error_then_recovery(fixtures_dir, tmp_path):
    async with ServerProcess(fixtures_dir, tmp_path / "server.log") as server:
        client = RemoteEngine(
            server.url,
            reconnect_timeout=1.0,
            ping_interval=1.0,
            ping_timeout=2.0,
            journal=False,  # a client that keeps no history (tests/server/test_restore_*)
        )
        session = await client.create_session(conversation_id="kill-1", sampling=GREEDY)
        assert await say(session, "Before the crash.", 6) == 6

        turn = await speak(session, LONG_TEXT, 80)  # ~6 s of paced audio
        await read_chunks(turn, 2)
        server.kill()
        with pytest.raises(ServerUnavailableError):
            await asyncio.wait_for(turn.wait(), 10)  # a hang guard
        # While the server is down every call fails clearly, after retrying (with backoff)
        # for the client's reconnect_timeout and no longer: it gives up, saying why.
        with pytest.raises(ServerUnavailableError, match="cannot reach") as info:
            await asyncio.wait_for(session.start_turn(max_frames=4), 10)  # a hang guard
        retried = re.fullmatch(
            rf"cannot reach {re.escape(client.url)} after (\d+) attempts: connection refused .*",
            str(info.value),
        )
        assert retried is not None and int(retried[1]) > 1, str(info.value)

        await server.start()
        turn = await session.start_turn(max_frames=4)  # reconnects
        assert not session.resumed and session.history_lost == 1
        turn.push_text("After the restart.")
        turn.end_text()
        chunks = [c async for c in turn]
        frame_bytes = frame_pcm_bytes(fixtures_dir / "codec")
        assert len(chunks) == 4 and all(len(c.pcm) == frame_bytes for c in chunks)
        await session.close()
    assert server.procs[1].returncode == 0, (tmp_path / "server.log").read_text()[-2000:]


async def test_a_frozen_server_fails_the_call_clearly_and_it_goes_on_once_thawed(
    fixtures_dir, tmp_path
):
    """``kill -STOP`` of the server (a VM paused, a process stuck in the kernel): its socket
    stays open and answers nothing. The reply in flight fails once its text has ended and
    ``frame_timeout`` passed, a new start fails after ``connect_timeout`` (no hang); once the
    server runs again (``kill -CONT``) the call resumes there with its whole history, the
    reply cut by the freeze kept as far as it had come."""
    async with ServerProcess(fixtures_dir, tmp_path / "server.log") as server:
        client = RemoteEngine(
            server.url,
            connect_timeout=2.0,
            reconnect_timeout=1.0,
            ping_interval=1.0,
            ping_timeout=2.0,
            frame_timeout=3.0,
        )
        session = await client.create_session(conversation_id="frozen-1", sampling=GREEDY)
        assert await say(session, "Before the freeze.", 6) == 6
        before = await session.snapshot()
        turn = await speak(session, LONG_TEXT, 80)
        await read_chunks(turn, 2)
        pid = server.procs[-1].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ServerUnavailableError):
                await asyncio.wait_for(turn.wait(), 15)  # a hang guard
            with pytest.raises(ServerUnavailableError, match="no answer within connect_timeout"):
                await asyncio.wait_for(session.start_turn(max_frames=4), 15)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await say(session, "After the thaw.", 6) == 6
        assert session.resumed and session.history_lost == 0
        after = await session.snapshot()
        await session.close()
    roles = [r for r, _ in after["turns"]]
    assert roles == ["assistant"] * 3, roles  # before, the cut reply, after
    n = before["rows"].shape[0]
    assert torch.equal(after["rows"][:n], before["rows"])
    assert server.procs[0].returncode == 0, (tmp_path / "server.log").read_text()[-2000:]


async def test_a_failing_session_does_not_affect_the_others(
    make_tiny_engine, make_server, realtime_meta
):
    scripts = [make_script(77 + i, realtime_meta, turns=2) for i in range(3)]
    local_engine = make_tiny_engine(max_sessions=4, eos_min_frames=3)
    local = []
    for script in scripts:
        s = local_engine.create_session(sampling=GREEDY)
        local.append(await run_script(s, script))
        await s.close()
    local_engine.shutdown()

    engine = make_tiny_engine(max_sessions=4, eos_min_frames=3)  # "fine" speaks its 3 frames
    server = await make_server(engine)
    client = RemoteEngine(server.url)
    vocab = engine.model.cfg.language.vocab_size

    async def bad():
        session = await client.create_session(sampling=GREEDY)
        outcomes = []
        for _ in range(3):
            turn = await session.start_turn(max_frames=8)
            turn.push_ids([1, 2, vocab + 5])  # outside the model's vocabulary
            turn.end_text()
            outcomes.append(await turn.wait())
            await asyncio.sleep(0.01)
        turn = await speak(session, "fine", 3)  # and the session still works
        outcomes.append(await turn.wait())
        await session.close()
        return outcomes

    async def good(script):
        session = await client.create_session(sampling=GREEDY)
        try:
            return await run_script(session, script)
        finally:
            await session.close()

    results = await asyncio.gather(bad(), *(good(sc) for sc in scripts))
    for summary in results[0][:3]:
        assert summary.stop == "error" and isinstance(summary.error, InvalidInputError)
    assert results[0][3].stop == "max_frames"
    for a, b in zip(local, results[1:], strict=True):
        for (ca, sa, ha, _), (cb, sb, hb, _) in zip(a, b, strict=True):
            assert (sa, ha) == (sb, hb) and torch.equal(ca, cb)
    await eventually(lambda: engine.session_ids == [], what="sessions to close")


async def test_a_second_connection_takes_over_the_conversation(make_tiny_engine, make_server):
    engine = make_tiny_engine(eos_min_frames=3)  # the first turn has audio, wherever EOS is
    server = await make_server(engine)
    first = await RemoteEngine(server.url).create_session(conversation_id="twin", sampling=GREEDY)
    await say(first, "One.", 3)
    second = await RemoteEngine(server.url).create_session(
        conversation_id="twin", resume_secret=first.resume_secret
    )
    assert second.resumed
    assert [r for r, _ in (await second.snapshot())["turns"]] == ["assistant"]
    await eventually(lambda: not first._link.alive, what="the first link to be dropped")
    assert "took over" in str(first._link.failure)
    assert len(server.hub.conversations) == 1 and len(engine.session_ids) == 1
    await second.close()
    await first.close()
    assert engine.session_ids == []


async def test_capacity_refuses_then_evicts_idle_conversations(make_tiny_engine, make_server):
    from moss_pipecat.errors import CapacityError

    engine = make_tiny_engine(max_sessions=2)
    server = await make_server(engine, max_connections=3)
    client = RemoteEngine(server.url, reconnect_timeout=0.5)
    a = await client.create_session(conversation_id="cap-a")
    b = await client.create_session(conversation_id="cap-b")
    with pytest.raises(CapacityError):  # both sessions are in use: refused, not retried
        await asyncio.wait_for(client.create_session(conversation_id="cap-c"), 5)
    a._link.ws.transport.abort()
    await eventually(lambda: server.hub.conversations["cap-a"].conn is None, what="detach")
    c = await client.create_session(conversation_id="cap-c")  # evicts the idle "cap-a"
    assert sorted(engine.session_ids) == ["cap-b", "cap-c"]
    # Over max_connections the upgrade is refused (503) until a slot frees up.
    holder = await connect_raw(server.url)  # the third connection (no hello yet)
    with pytest.raises(ServerUnavailableError, match="cannot reach"):
        await asyncio.wait_for(client.create_session(conversation_id="cap-d"), 5)
    await holder.close()
    for s in (b, c):
        await s.close()
    await a.close()
    await eventually(lambda: engine.session_ids == [], what="sessions to close")


async def connect_raw(url):
    from websockets.asyncio.client import connect

    return await connect(url, compression=None)


async def test_a_stuck_engine_fails_the_turn_instead_of_hanging(make_tiny_engine, make_server):
    import threading

    # Paced and no EOS before 60 frames: the turn needs the engine to go on.
    engine = make_tiny_engine(lookahead_s=0.3, eos_min_frames=60)
    server = await make_server(engine)
    client = RemoteEngine(server.url, frame_timeout=1.0)
    session = await client.create_session(conversation_id="stuck", sampling=GREEDY)
    turn = await speak(session, LONG_TEXT, 60)
    await read_chunks(turn, 1)
    release = threading.Event()
    stuck = engine.call(lambda: release.wait(60))  # the engine stops stepping (pings go on)
    try:
        # The client's frame_timeout fails the turn while the engine is still stuck (not the
        # server's pings, not the engine coming back).
        with pytest.raises(ServerUnavailableError, match="^no audio from the server for 1.0 s$"):
            await asyncio.wait_for(turn.wait(), 30)  # a hang guard
        assert not stuck.done()
    finally:
        release.set()
    turn = await session.start_turn(max_frames=3)  # reconnects; the conversation is there
    assert session.resumed
    turn.push_text("Back.")
    turn.end_text()
    assert (await turn.wait()).audio_frames == 3
    await session.close()
