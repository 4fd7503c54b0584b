"""Values a client sends are checked at the protocol edge: a bad one gets an error reply and
the connection (and every later turn) goes on."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from moss_pipecat.protocol import unpack_audio


async def _recv_json(ws, timeout: float = 10.0) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


@pytest.fixture
async def server(make_tiny_engine, make_server):
    # eos_min_frames: "still works" turns speak their 2 frames, wherever EOS would be.
    return await make_server(make_tiny_engine(eos_min_frames=2))


async def _open(server, **hello) -> tuple:
    ws = await connect(server.url, compression=None)
    await ws.send(json.dumps({"type": "hello", **hello}))
    ready = await _recv_json(ws)
    assert ready["type"] == "ready", ready
    return ws, ready


async def _turn_works(ws, req: int) -> None:
    """A short turn on this connection still produces audio and ends without error."""
    await ws.send(json.dumps({"type": "turn.start", "req": req, "max_frames": 2}))
    started = await _recv_json(ws)
    assert started["type"] == "turn.started", started
    tid = started["turn_id"]
    await ws.send(json.dumps({"type": "turn.text", "turn_id": tid, "text": "Fine."}))
    await ws.send(json.dumps({"type": "turn.end", "turn_id": tid}))
    frames = 0
    while True:
        msg = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(msg, bytes):
            assert unpack_audio(msg)[0] == tid
            frames += 1
            continue
        msg = json.loads(msg)
        if msg["type"] == "turn.end":
            assert msg["summary"]["error"] is None, msg
            assert frames >= 1
            return


# A raw JSON string with a lone surrogate escape (valid JSON, not valid Unicode).
LONE = '"caf\\ud800e"'


async def test_a_lone_surrogate_is_a_bad_message_and_the_connection_stays(server):
    ws, _ = await _open(server, sampling=GREEDY_WIRE)
    await ws.send('{"type": "turn.start", "req": 1, "max_frames": 2}')
    tid = (await _recv_json(ws))["turn_id"]
    cases = [
        f'{{"type": "turn.text", "turn_id": {tid}, "text": {LONE}}}',
        f'{{"type": "turn.ids", "turn_id": {tid}, "ids": [1], "text": {LONE}}}',
        f'{{"type": "reset", "req": 2, "x": {LONE}}}',
        f'{{"type": {LONE}, "req": 3}}',
    ]
    for raw in cases:
        await ws.send(raw)
        reply = await _recv_json(ws)
        assert reply["type"] == "error" and reply["code"] == "bad_message", (raw, reply)
        assert not reply["fatal"] and "surrogate" in reply["message"]
    await ws.send(json.dumps({"type": "interrupt", "req": 4, "heard_frames": 0}))
    reply = await _recv_json(ws)
    if reply["type"] == "turn.end":  # the interrupted turn ends first
        reply = await _recv_json(ws)
    assert reply["type"] == "result" and reply["req"] == 4, reply
    # A proper pair of surrogate escapes is one valid character.
    await ws.send('{"type": "snapshot", "req": 5, "x": "\\ud83d\\ude00"}')
    assert (await _recv_json(ws))["code"] == "bad_message"  # extra field, not the pair
    await _turn_works(ws, 6)
    await ws.close()


async def test_a_lone_surrogate_in_hello_is_refused_cleanly(server):
    async with connect(server.url, compression=None) as ws:
        await ws.send(f'{{"type": "hello", "conversation_id": "a", "token": {LONE}}}')
        reply = await _recv_json(ws)
        assert reply["type"] == "error" and reply["code"] == "bad_message" and reply["fatal"]


GREEDY_WIRE = {"greedy": True, "temperature": 0.8, "top_k": 30, "top_p": 0.6}

OUT_OF_RANGE = [
    {"top_k": 10**19},
    {"top_k": 2**40},
    {"top_k": -1},
    {"temperature": 1e300},
    {"top_p": 1.5},
    {"top_p": 0.0},
    {"repetition_penalty": 1e9},
    {"repetition_penalty": 0.0},
    {"repetition_window": 10**9},
    {"repetition_window": 1000},  # within the wire's range, past the engine's window
    {"repetition_window": -1},
]


@pytest.mark.parametrize("where", ["settings", "hello"])
async def test_sampling_values_out_of_range_are_refused_and_later_turns_work(server, where):
    if where == "hello":
        for bad in OUT_OF_RANGE:
            async with connect(server.url, compression=None) as ws:
                await ws.send(json.dumps({"type": "hello", "sampling": {**GREEDY_WIRE, **bad}}))
                reply = await _recv_json(ws)
                assert reply["type"] == "error", (bad, reply)
                assert reply["code"] in ("bad_message", "invalid_input"), (bad, reply)
        ws, _ = await _open(server, sampling=GREEDY_WIRE)
    else:
        ws, _ = await _open(server, sampling=GREEDY_WIRE)
        for i, bad in enumerate(OUT_OF_RANGE):
            msg = {"type": "settings", "req": i, "sampling": {**GREEDY_WIRE, **bad}}
            await ws.send(json.dumps(msg))
            reply = await _recv_json(ws)
            assert reply["type"] == "error", (bad, reply)
            assert reply["code"] in ("bad_message", "invalid_input"), (bad, reply)
            assert reply["req"] == i and not reply["fatal"]
        for j, raw in enumerate(['{"temperature": NaN}', '{"top_p": Infinity}']):
            await ws.send(f'{{"type": "settings", "req": {50 + j}, "sampling": {raw}}}')
            reply = await _recv_json(ws)
            assert reply["type"] == "error" and reply["code"] == "bad_message", (raw, reply)
    await _turn_works(ws, 100)
    await _turn_works(ws, 101)
    await ws.close()
