"""Each client message of the wire protocol becomes exactly its engine command(s).

The server is a thin translator: what a message asks of a conversation is one engine command
(``moss_pipecat.engine.commands``), so the remote session behaves as the local one. Recorded at
``MossEngine.submit``, message by message, over a real websocket. For a client that keeps a
journal (``hello.history``), a message that changes the history (or the seed of the sampling
noise, which the journal restores too) is followed by the ``HistoryDelta`` that tells it what
changed (issue #24).
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from websockets.asyncio.client import connect

from moss_pipecat import protocol as P
from moss_pipecat.client import codes_bytes
from moss_pipecat.engine import (
    AddUserTurn,
    Close,
    CreateSession,
    EndText,
    HistoryDelta,
    Interrupt,
    PushText,
    Reset,
    RestoreHistory,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
)

from .conftest import eventually

GREEDY_WIRE = {"greedy": True}


async def _recv_json(ws, timeout: float = 20.0) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


async def _reply(ws, want: str) -> dict:
    while True:
        msg = await _recv_json(ws)
        assert msg["type"] != "error", msg
        if msg["type"] == want:
            return msg


@pytest.mark.parametrize("history", [False, True])
async def test_each_client_message_is_its_engine_command(make_tiny_engine, make_server, history):
    engine = make_tiny_engine()
    seen: list[tuple[str, type]] = []
    submit = engine.submit

    def recording(session_id, command):
        seen.append((session_id, type(command)))
        return submit(session_id, command)

    engine.submit = recording  # instance attribute: every path into the engine passes here
    server = await make_server(engine)
    rvq = engine.layout.rvq
    frames = torch.randint(
        0, engine.layout.audio_pad, (6, rvq), generator=torch.Generator().manual_seed(0)
    )
    codes, _ = codes_bytes(frames, rvq)

    async def sent(messages: list, expected: list[type], reply: str | None = None) -> None:
        """Sends ``messages`` (dicts as JSON, bytes as binary frames); the engine must receive
        exactly ``expected`` for this conversation (after ``reply``, if one comes)."""
        start = len(seen)
        for m in messages:
            await ws.send(m if isinstance(m, bytes) else json.dumps(m))
        if reply is not None:
            await _reply(ws, reply)
        await eventually(lambda: len(seen) - start >= len(expected), what=f"{expected}")
        await asyncio.sleep(0)  # nothing more arrives for a message already handled
        assert [c for sid, c in seen[start:]] == expected, messages
        assert {sid for sid, _ in seen[start:]} <= {"map-1"}

    ws = await connect(server.url, compression=None, max_size=None)
    hello = {"type": "hello", "conversation_id": "map-1", "sampling": GREEDY_WIRE}
    if history:
        hello["history"] = True
    told = [HistoryDelta] if history else []  # what changed, to a client keeping a journal
    await sent([hello], [CreateSession], reply="ready")

    await sent([{"type": "turn.start", "req": 1, "max_frames": 4}], [StartTurn], "turn.started")
    tid = 0
    await sent([{"type": "turn.text", "turn_id": tid, "text": "Hello there, "}], [PushText])
    await sent([{"type": "turn.ids", "turn_id": tid, "ids": [], "text": ""}], [PushText])
    await sent([{"type": "turn.end", "turn_id": tid}], [EndText, *told], "turn.end")
    await sent([{"type": "interrupt", "req": 2, "heard_frames": 1}], [Interrupt, *told], "result")

    user = {"type": "user_turn", "req": 3, "text": "yes please", "format": "codes"}
    await sent([{**user, "bytes": len(codes)}, codes], [AddUserTurn, *told], "result")
    voice = {"type": "voice", "req": 4, "format": "codes", "bytes": len(codes)}
    await sent([voice, codes], [SetVoice, *told], "result")
    await sent([{"type": "voice", "req": 5, "format": "none"}], [SetVoice, *told], "result")

    sampling = {"type": "settings", "req": 6, "sampling": {"temperature": 0.8}, "seed": 3}
    await sent([sampling], [SetSampling, *told], "result")  # a new seed: the noise's place
    limits = {"type": "settings", "req": 7, "limits": {"lookahead_s": 2.0}}
    await sent([limits], [SetLimits], "result")
    both = {**sampling, "req": 8, "limits": {"unlimited_lookahead": True}}
    await sent([both], [SetSampling, SetLimits, *told], "result")

    # A settings message whose limits the engine refuses changes nothing, not even sampling.
    start = len(seen)
    budget = engine.config.max_context + 1
    bad = {**sampling, "req": 12, "limits": {"context_budget": budget}}
    await ws.send(json.dumps(bad))
    reply = await _recv_json(ws)
    assert reply["type"] == "error" and reply["code"] == "invalid_input", reply
    assert seen[start:] == []

    await sent([{"type": "reset", "req": 9}], [Reset, *told], "result")
    fields, data = P.pack_restore(None, [("user", 0, [5, 6], frames.numpy())])
    restore = {"type": "restore", "req": 13, **fields}
    await sent([restore, data], [RestoreHistory, *told], "result")
    await sent([{"type": "snapshot", "req": 10}], [Snapshot], "result")
    await sent([{"type": "close", "req": 11}], [Close], "result")
    await ws.close()
