"""Connection budgets: sockets that came without a bearer header (and may never say hello) are
held on a small, short-lived budget of their own, so they cannot lock authenticated clients
out of ``max_connections``."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from urllib.parse import urlparse

from moss_pipecat.client import RemoteEngine

from .conftest import TOKEN, eventually
from .rawws import RawWebsocket


async def _raw(server, headers: dict | None = None) -> RawWebsocket:
    return await asyncio.to_thread(RawWebsocket, server.url, None, headers)


def _close_code(peer: RawWebsocket) -> int | None:
    """Reads frames until the server's close frame; returns its code (None if dropped)."""
    try:
        while True:
            op, payload = peer.recv()
            if op == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    except (ConnectionError, OSError):
        return None


async def test_idle_sockets_that_never_say_hello_do_not_lock_out_a_client(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine(eos_min_frames=2)
    server = await make_server(engine, token=TOKEN, max_connections=4)
    # Twice max_connections sockets, no Authorization header, never a hello.
    idle = [await _raw(server) for _ in range(8)]
    try:
        assert [p.status for p in idle] == [101] * 8  # all on the pending budget (16)
        assert server.hub.metrics.pending.value() == 8
        client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=0.5)
        session = await asyncio.wait_for(client.create_session(), 5)  # header: its own budget
        turn = await session.start_turn(max_frames=2)
        turn.push_text("Still served.")
        turn.end_text()
        assert (await asyncio.wait_for(turn.wait(), 10)).audio_frames == 2
        await session.close()
    finally:
        for peer in idle:
            peer.close()


async def test_the_pending_budget_is_small_and_short_lived(make_tiny_engine, make_server):
    engine = make_tiny_engine()
    server = await make_server(
        engine,
        token=TOKEN,
        max_connections=1,
        max_pending_connections=2,
        pending_hello_timeout_s=0.5,
    )
    hub = server.hub
    a, b = await _raw(server), await _raw(server)
    c = await _raw(server)
    try:
        assert (a.status, b.status, c.status) == (101, 101, 503)  # over the pending budget
        assert hub.metrics.refused.value(reason="pending_busy") == 1
        # Silent sockets are dropped after the short pending hello timeout (close 4408).
        codes = await asyncio.gather(
            asyncio.to_thread(_close_code, a), asyncio.to_thread(_close_code, b)
        )
        assert codes == [4408, 4408]
        await eventually(lambda: hub.budget.pending == 0, what="pending slots to free")
        # A client that cannot send headers authenticates in its hello and moves to the main
        # budget (freeing its pending slot)...
        d = await _raw(server)
        d.send_json({"type": "hello", "token": TOKEN})
        assert (await asyncio.to_thread(d.recv_json))["type"] == "ready"
        assert (hub.budget.active, hub.budget.pending) == (1, 0)
        # ...if there is room there: the main budget (1) is now full.
        e = await _raw(server)
        e.send_json({"type": "hello", "token": TOKEN})
        reply = await asyncio.to_thread(e.recv_json)
        assert (reply["code"], reply["fatal"]) == ("unavailable", True)
        assert await asyncio.to_thread(_close_code, e) == 1013
        # A wrong token at the upgrade is refused before the websocket exists.
        f = await _raw(server, {"Authorization": "Bearer wrong"})
        assert f.status == 401
        for peer in (d, e, f):
            peer.close()
        await eventually(
            lambda: (hub.budget.active, hub.budget.pending) == (0, 0), what="slots to free"
        )
    finally:
        for peer in (a, b, c):
            peer.close()


async def test_without_a_token_every_socket_is_on_the_main_budget(make_tiny_engine, make_server):
    engine = make_tiny_engine()
    server = await make_server(engine, max_connections=2, max_pending_connections=0)
    a, b = await _raw(server), await _raw(server)
    c = await _raw(server)
    try:
        assert (a.status, b.status, c.status) == (101, 101, 503)
        assert server.hub.metrics.refused.value(reason="busy") == 1
        a.send_json({"type": "hello"})
        assert (await asyncio.to_thread(a.recv_json))["type"] == "ready"
    finally:
        for peer in (a, b, c):
            peer.close()


async def test_sockets_that_never_finish_their_request_are_closed(make_tiny_engine, make_server):
    engine = make_tiny_engine()
    server = await make_server(engine, token=TOKEN, handshake_timeout_s=0.5)
    u = urlparse(server.url)

    def wait_closed(partial: bytes) -> float:
        with socket.create_connection((u.hostname, u.port), timeout=5) as s:
            t0 = time.monotonic()
            s.sendall(partial)
            assert s.recv(1024) == b""  # closed by the server, no response
            return time.monotonic() - t0

    silent, trickle = await asyncio.gather(
        asyncio.to_thread(wait_closed, b""),
        asyncio.to_thread(wait_closed, b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n"),
    )
    assert 0.4 < silent < 3 and 0.4 < trickle < 3
    # An upgraded websocket is not bound by that deadline.
    peer = await _raw(server, {"Authorization": f"Bearer {TOKEN}"})
    try:
        await asyncio.sleep(0.8)
        peer.send_json({"type": "hello"})
        assert (await asyncio.to_thread(peer.recv_json))["type"] == "ready"
    finally:
        peer.close()
