"""The client's side of the handshake against a server that answers its hello with a
``ready`` of another protocol version: a ``ProtocolError`` at once (its messages would mean
other things; no retry can change that), and nothing sent after the hello."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.server import serve

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol import PROTOCOL_VERSION
from moss_pipecat.protocol.errors import ProtocolError


def ready(v: int) -> dict:
    return {
        "type": "ready",
        "v": v,
        "conversation_id": "c1",
        "resumed": False,
        "resume_secret": "s" * 22,
        "audio": {"sample_rate": 24000, "frame_samples": 1920, "rvq": 16, "pcm": False},
        "limits": {},
    }


@pytest.mark.parametrize("v", [PROTOCOL_VERSION, PROTOCOL_VERSION + 1])
async def test_a_ready_of_another_protocol_version_is_refused(v):
    received: list[dict] = []

    async def handler(ws):
        received.append(json.loads(await ws.recv()))  # the hello
        await ws.send(json.dumps(ready(v)))
        async for message in ws:  # anything the client sends after ready (its close ends it)
            received.append(json.loads(message))
            return

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        engine = RemoteEngine(f"ws://127.0.0.1:{port}/v1/ws", reconnect_timeout=2)
        try:
            if v == PROTOCOL_VERSION:  # the same fake server speaks: the check is the version
                session = await engine.create_session()
                assert session.id == "c1"
                await session.close()
            else:
                with pytest.raises(ProtocolError, match=f"speaks protocol v{v}"):
                    await engine.create_session()
                assert [m["type"] for m in received] == ["hello"]  # one attempt, no retry
        finally:
            await engine.aclose()


async def test_a_proxy_named_in_the_environment_is_not_used(monkeypatch):
    """The client connects straight to the server (websockets >= 15 would go through the
    proxy HTTP(S)_PROXY names: here a port nobody listens on)."""
    from tests.server.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def handler(ws):
        await ws.recv()  # the hello
        await ws.send(json.dumps(ready(PROTOCOL_VERSION)))
        async for _ in ws:
            return

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        engine = RemoteEngine(f"ws://127.0.0.1:{port}/v1/ws", reconnect_timeout=2)
        try:
            session = await engine.create_session()
            assert session.id == "c1"
            await session.close()
        finally:
            await engine.aclose()
