"""A conversation the server lost comes back from the client's journal (issue #24), and a
restore is checked like any input: oversized, out of vocabulary, a bad layout, onto a
conversation that has turns, or someone else's conversation without its secret is refused with a
clear error, and no conversation changes."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine

from ..engine.helpers import random_frames
from .conftest import GREEDY, TOKEN, eventually
from .turns import LONG_TEXT, read_chunks, say, speak
from .wire import answer, raw_hello, refused_hello


async def _talk(session, voice, meta: dict) -> None:
    """A call with a voice, a user turn, a capped turn, a barge-in and a dropped turn."""
    await session.set_voice(voice)
    await say(session, "Hello there.", 5)
    lo = meta["text_ids_drawn_from"][0]
    frames = random_frames(torch.Generator().manual_seed(2), 6, meta)
    await session.add_user_turn(list(range(lo, lo + 4)), frames)
    turn = await speak(session, LONG_TEXT, 30)
    n = 0
    async for _ in turn:
        n += 1
        if n == 6:
            await session.interrupt(4)
            break
    await turn.wait()
    turn = await speak(session, "Nobody hears this one.", 30)
    async for _ in turn:
        await session.interrupt(0)
        break
    await turn.wait()


async def test_a_lost_conversation_is_restored_from_the_journal(
    make_tiny_engine, make_server, voice_codes, realtime_meta
):
    # Paced, no EOS before 30 frames: the barge-in comes while the turn is streaming.
    engine = make_tiny_engine(lookahead_s=0.4, eos_min_frames=30)
    server = await make_server(engine, idle_expiry_s=0)  # a detached conversation ends at once
    session = await RemoteEngine(server.url).create_session(conversation_id="r-1", sampling=GREEDY)
    await _talk(session, voice_codes, realtime_meta)
    before = await session.snapshot()
    assert [r for r, _ in before["turns"]] == ["assistant", "user", "assistant"]
    assert session.journal.rev > 0 and len(session.journal.turns) == 3
    assert session.journal.nbytes < 4096

    session._link.ws.transport.abort()  # the server loses the conversation with its client
    await eventually(lambda: "r-1" not in server.hub.conversations, what="'r-1' to end")
    after = await session.snapshot()  # reconnects, finds it gone, restores it
    assert not session.resumed and session.restored == 1 and session.history_lost == 0
    assert torch.equal(after["rows"], before["rows"])
    assert after["system_rows"] == before["system_rows"] > voice_codes.shape[0]
    assert after["turn_frames"] == before["turn_frames"]
    # And the call goes on, its journal whole.
    assert await say(session, "Still here.", 3) == 3
    assert len(session.journal.turns) == 4 and session.journal.valid
    await session.close()
    assert session.journal.turns == [] and engine.session_ids == []


async def test_hostile_restores_are_refused_and_touch_nothing(
    make_tiny_engine, make_server, realtime_meta
):
    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, token=TOKEN)

    layout = engine.layout
    rvq, vocab = layout.rvq, engine.model.cfg.language.vocab_size
    other = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="victim", sampling=GREEDY
    )
    await say(other, "Mine.", 3)
    victim = await other.snapshot()
    good = other.journal.restore_request()
    records = [(t.role, t.lead, t.ids, t.frames) for t in other.journal.turns]
    (role, lead, ids, frames) = records[0]

    ws = await raw_hello(server, conversation_id="h-1")
    assert json.loads(await ws.recv())["type"] == "ready"
    req = iter(range(1, 1000))

    async def restore(fields: dict, data: bytes, code: str) -> None:
        r = next(req)
        await ws.send(json.dumps({"type": "restore", "req": r, **fields}))
        await ws.send(data)
        reply = await answer(ws, r)
        assert (reply["type"], reply["code"]) == ("error", code), reply
        assert not reply["fatal"]

    def packed(recs, voice=None) -> tuple[dict, bytes]:
        return P.pack_restore(voice, recs)

    big = frames.astype(np.int64).copy()
    big[0, 0] = layout.audio_eos + 1  # out of the audio vocabulary
    cases = [
        (packed([(role, lead, ids, big)]), "invalid_input"),
        (packed([(role, lead, np.array([vocab, *ids[1:]]), frames)]), "invalid_input"),
        (packed([(role, 0, ids, frames)]), "invalid_input"),  # no prompt
        (packed([(role, lead, ids[:-1], frames)]), "invalid_input"),  # ids and frames disagree
        (packed([("user", 0, ids, frames[:0])]), "invalid_input"),  # a user turn without audio
        (packed([], voice=np.full((2, rvq), 4000)), "invalid_input"),
    ]
    for (fields, data), code in cases:
        await restore(fields, data, code)
    # Sizes that do not add up, a role that is none, and more than the context holds.
    fields, data = good
    await restore(fields, data + b"\0\0", "bad_message")
    await restore(fields, data[:-2], "bad_message")
    bad_role = bytearray(data)
    bad_role[0] = 7
    await restore(fields, bytes(bad_role), "bad_message")
    n = engine.config.max_context * 200  # over a context's worth of rows and the voice
    await restore({**fields, "bytes": n}, b"\0" * n, "too_large")
    many = [("user", 0, ids[:2], frames[:1].repeat(8, 0))] * (engine.config.max_context // 8)
    await restore(*packed(many), "invalid_input")
    # Nothing changed: the conversation has no turns, and it can still be restored once.
    r = next(req)
    await ws.send(json.dumps({"type": "snapshot", "req": r}))
    assert (await answer(ws, r))["snapshot"]["turns"] == []
    r = next(req)
    await ws.send(json.dumps({"type": "restore", "req": r, **good[0]}))
    await ws.send(good[1])
    assert (await answer(ws, r))["type"] == "result"
    await restore(*good, "turn_state")  # not over a history it has
    await ws.close()

    # Someone else's conversation without its secret: refused at the hello, before the restore
    # sent right behind it is read.
    restore = [{"type": "restore", "req": 1, **good[0]}, good[1]]
    reply, rest = await refused_hello(server, conversation_id="victim", after=restore)
    assert (reply["type"], reply["code"], rest) == ("error", "forbidden", [])

    after = await other.snapshot()
    assert torch.equal(after["rows"], victim["rows"]) and other.reconnects == 0
    await other.close()


async def test_a_resuming_client_hears_ready_before_any_history(
    make_tiny_engine, make_server, monkeypatch
):
    # The race CI met: a connection that takes over a conversation mid-turn cuts that turn, and
    # the turn's end makes a history delta; the new connection must get its ``ready`` first,
    # then one full delta that holds the cut turn.
    from moss_pipecat.server import handshake

    engine = make_tiny_engine(lookahead_s=0.4, eos_min_frames=30)
    server = await make_server(engine, token=TOKEN)
    session = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="r-2", sampling=GREEDY
    )
    await read_chunks(await speak(session, LONG_TEXT, 30), 1)  # streaming now
    conv = server.hub.conversations["r-2"]
    real_greet = handshake.greet

    async def late_greet(conv, conn, ready, since):
        # The taken-over turn ends (and its pump asks for a delta) before the ready goes out.
        await eventually(lambda: conv.turn is None, what="the cut turn to end")
        return await real_greet(conv, conn, ready, since)

    monkeypatch.setattr(handshake, "greet", late_greet)
    ws = await raw_hello(
        server, conversation_id="r-2", resume_secret=session.resume_secret, history=True
    )
    ready = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert (ready["type"], ready["resumed"]) == ("ready", True)
    first = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert (first["type"], first["full"]) == ("history", True)
    assert [t["role"] for t in first["turns"]] == ["assistant"]
    assert conv.conn is not None and conv.conn.ready
    await ws.close()
