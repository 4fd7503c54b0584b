"""Token ids a client streams are capped per turn, and a conversation holds only what its turns
fed (a client cannot make the server buffer ids without bound)."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

GREEDY_WIRE = {"greedy": True}


async def _recv_json(ws, timeout: float = 10.0) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


async def _reply(ws) -> dict:
    """The next message that is not the turn's progress (its first frames' words may come
    before a reply: the engine speaks while the server reads the client's messages)."""
    while (msg := await _recv_json(ws))["type"] in ("turn.words", "turn.progress"):
        pass
    return msg


async def _open(server, cid: str):
    ws = await connect(server.url, compression=None, max_size=None)
    await ws.send(json.dumps({"type": "hello", "conversation_id": cid, "sampling": GREEDY_WIRE}))
    assert (await _recv_json(ws))["type"] == "ready"
    return ws


async def _start(ws, req: int, max_frames: int) -> int:
    await ws.send(json.dumps({"type": "turn.start", "req": req, "max_frames": max_frames}))
    reply = await _recv_json(ws)
    assert reply["type"] == "turn.started", reply
    return reply["turn_id"]


async def _until_end(ws, tid: int) -> dict:
    while True:
        msg = await _recv_json(ws)
        if msg["type"] == "turn.end" and msg["turn_id"] == tid:
            return msg["summary"]
        assert msg["type"] != "error", msg


async def test_ids_and_their_text_are_capped_per_turn(make_tiny_engine, make_server, realtime_meta):
    lo, _ = realtime_meta["text_ids_drawn_from"]
    # Paced, no EOS before its cap: the turn is still open for the refusals below (at 2 frames,
    # unpaced, it could end first on a loaded box: the text's refusal then met an ended turn).
    engine = make_tiny_engine(max_text_chars=500, lookahead_s=0.4, eos_min_frames=12)
    server = await make_server(engine, max_ids_per_turn=1000, max_ids_per_message=600)
    assert server.hub.limits.max_ids_per_turn == 1000
    ws = await _open(server, "cap-turn")
    tid = await _start(ws, 1, max_frames=12)
    ids = [lo + i % 50 for i in range(600)]
    await ws.send(json.dumps({"type": "turn.ids", "turn_id": tid, "ids": ids}))
    await ws.send(json.dumps({"type": "turn.ids", "turn_id": tid, "ids": ids}))  # 1200 > 1000
    reply = await _reply(ws)
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    assert reply["turn_id"] == tid and not reply["fatal"] and "per turn" in reply["message"]
    # Text that comes with ids counts against the turn's max_text_chars.
    await ws.send(json.dumps({"type": "turn.ids", "turn_id": tid, "ids": [], "text": "x" * 501}))
    reply = await _reply(ws)
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    await ws.send(json.dumps({"type": "turn.end", "turn_id": tid}))
    summary = await _until_end(ws, tid)
    assert summary["error"] is None and len(summary["text_ids"]) == 600  # the refused part: gone
    # The next turn has its own allowance.
    tid = await _start(ws, 2, max_frames=1)
    await ws.send(json.dumps({"type": "turn.ids", "turn_id": tid, "ids": ids}))
    await ws.send(json.dumps({"type": "turn.end", "turn_id": tid}))
    assert len((await _until_end(ws, tid))["text_ids"]) == 600
    await ws.close()


async def test_a_conversation_keeps_only_the_ids_its_turns_fed(
    make_tiny_engine, make_server, realtime_meta
):
    lo, _ = realtime_meta["text_ids_drawn_from"]
    engine = make_tiny_engine()
    server = await make_server(engine)
    ws = await _open(server, "cap-conv")
    ids = [lo + i % 50 for i in range(4000)]
    turns = 6
    for k in range(turns):
        tid = await _start(ws, k, max_frames=1)  # speaks one frame of 4000 ids
        await ws.send(json.dumps({"type": "turn.ids", "turn_id": tid, "ids": ids}))
        await ws.send(json.dumps({"type": "turn.end", "turn_id": tid}))
        summary = await _until_end(ws, tid)
        assert len(summary["text_ids"]) == 4000  # the summary still says what was asked

    def held() -> int:
        state = engine.core.sessions["cap-conv"]
        return sum(len(t.text_ids) for t in state.history.turns)

    held_ids = await asyncio.to_thread(lambda: engine.call(held).result(5))
    # Each kept turn holds the ids its rows fed (+1 for its closing row), not 4000.
    assert 0 < held_ids <= turns * 20, held_ids
    await ws.send(json.dumps({"type": "close", "req": 99}))
    while (await _recv_json(ws))["type"] != "result":
        pass
    assert "cap-conv" not in engine.session_ids
