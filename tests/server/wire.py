"""A peer on the wire without the project's client: a websocket with the test token that has
said hello, a hello the server refuses, and the answer to one of its requests."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from moss_pipecat import protocol as P

from .conftest import TOKEN


async def raw_hello(server, **hello):
    """A websocket to ``server`` that sent ``{"type": "hello", **hello}`` (nothing read yet)."""
    ws = await connect(
        server.url,
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        compression=None,
        max_size=None,
    )
    await ws.send(json.dumps({"type": "hello", **hello}))
    return ws


async def refused_hello(server, close: int = P.CLOSE_FORBIDDEN, **hello) -> tuple[dict, list]:
    """Sends ``hello`` (then the messages ``after`` it, without waiting: dicts as JSON, bytes as
    binary frames) on a raw socket; returns the server's first reply and every message that
    came after it until the server closed (with the ``close`` code)."""
    after = hello.pop("after", [])
    ws = await raw_hello(server, **hello)
    for msg in after:
        await ws.send(msg if isinstance(msg, bytes) else json.dumps(msg))
    first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    rest = []
    with pytest.raises(ConnectionClosed):
        while True:
            rest.append(await asyncio.wait_for(ws.recv(), 5))
    assert ws.protocol.close_code == close  # (ws.close_code: websockets >= 15)
    return first, rest


async def answer(ws, req: int) -> dict:
    """The ``result`` or ``error`` answering ``req`` (history deltas and others skipped)."""
    while True:
        msg = await asyncio.wait_for(ws.recv(), 20)
        if isinstance(msg, str):
            data = json.loads(msg)
            if data.get("req") == req and data["type"] in ("result", "error"):
                return data
