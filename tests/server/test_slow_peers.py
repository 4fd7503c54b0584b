"""Slow and stuck peers: one connection's I/O never holds up the others.

A "stuck" peer stops reading with small OS buffers, so the server's sends to it block. It must
not delay anyone else's ``hello`` (not even while its conversation is being taken over), and
it is dropped once a send to it has waited ``write_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect

from moss_pipecat.client import RemoteEngine

from .conftest import eventually
from .rawws import RawWebsocket

WRITE_TIMEOUT = 3.0


async def _stuck_peer(server, conversation_id: str) -> tuple[RawWebsocket, str]:
    """A peer that said hello, then floods requests and never reads again, until the server's
    sends to it block (the server's write buffer is over its limit). Returns the peer and its
    conversation's resume secret."""
    peer = await asyncio.to_thread(RawWebsocket, server.url)
    peer.send_json({"type": "hello", "conversation_id": conversation_id})
    ready = await asyncio.to_thread(peer.recv_json)
    assert ready["type"] == "ready"
    conn = server.hub.conversations[conversation_id].conn

    def blocked() -> bool:
        buffered = conn.transport.write_buffer_size()  # the server's socket buffer
        return buffered >= 32 * 1024 and conn.send_lock.locked()

    deadline = time.monotonic() + 20
    while not blocked():
        assert time.monotonic() < deadline, "could not fill the server's send buffer"
        peer.flood({"type": "snapshot", "req": 1}, 0.05)
        await asyncio.sleep(0.05)
    return peer, ready["resume_secret"]


async def _hello_latency(server) -> float:
    """Seconds from sending ``hello`` to reading ``ready`` on a fresh connection."""
    async with connect(server.url, compression=None) as ws:
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "hello"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        dt = time.perf_counter() - t0
        assert reply["type"] == "ready", reply
        await ws.send(json.dumps({"type": "close", "req": 0}))
    return dt


async def test_a_stuck_peer_being_taken_over_delays_no_other_hello(make_tiny_engine, make_server):
    engine = make_tiny_engine(eos_min_frames=2)  # the turn after the takeover speaks
    server = await make_server(engine, write_timeout_s=WRITE_TIMEOUT)
    hub = server.hub
    peer, secret = await _stuck_peer(server, "stuck-1")
    old = hub.conversations["stuck-1"].conn
    try:
        # The project's own client reconnects with the id: a takeover of the stuck connection.
        t0 = time.monotonic()
        takeover = asyncio.ensure_future(
            RemoteEngine(server.url, reconnect_timeout=0.5).create_session(
                conversation_id="stuck-1", resume_secret=secret
            )
        )
        await eventually(lambda: len(hub.connections) == 2, what="the takeover to connect")
        latency = await asyncio.wait_for(_hello_latency(server), 8)
        print(f"hello -> ready beside a stuck peer being taken over: {latency * 1000:.1f} ms")
        assert latency < 0.2, f"hello -> ready took {latency:.3f} s beside a stuck peer"
        second = await asyncio.wait_for(takeover, 8)
        assert second.resumed
        assert hub.conversations["stuck-1"].conn is not old
        # The stuck peer is gone within the write timeout (its farewell could not be sent).
        await eventually(lambda: old not in hub.connections, timeout=WRITE_TIMEOUT + 2)
        assert time.monotonic() - t0 < WRITE_TIMEOUT + 1.0
        assert old.closed
        turn = await second.start_turn(max_frames=2)  # the conversation works on
        turn.push_text("Hello.")
        turn.end_text()
        summary = await asyncio.wait_for(turn.wait(), 10)
        assert summary.error is None and 1 <= summary.audio_frames <= 2
        await second.close()
    finally:
        peer.close()


async def test_a_takeover_does_not_wait_for_the_old_peer(make_tiny_engine, make_server):
    """An old peer that reads nothing (buffer not full) never answers the close handshake."""
    engine = make_tiny_engine()
    server = await make_server(engine, write_timeout_s=WRITE_TIMEOUT)
    peer = await asyncio.to_thread(RawWebsocket, server.url)
    try:
        peer.send_json({"type": "hello", "conversation_id": "quiet-1"})
        ready = await asyncio.to_thread(peer.recv_json)
        assert ready["type"] == "ready"
        t0 = time.perf_counter()
        second = await asyncio.wait_for(
            RemoteEngine(server.url).create_session(
                conversation_id="quiet-1", resume_secret=ready["resume_secret"]
            ),
            8,
        )
        took = time.perf_counter() - t0
        print(f"takeover of a peer that reads nothing: {took * 1000:.1f} ms")
        assert second.resumed and took < 0.5, f"the takeover took {took:.2f} s"
        await second.close()
    finally:
        peer.close()


async def test_a_peer_that_reads_nothing_is_dropped_and_its_conversation_kept(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine()
    server = await make_server(engine, write_timeout_s=WRITE_TIMEOUT)
    hub = server.hub
    peer, _ = await _stuck_peer(server, "stuck-2")
    conn = hub.conversations["stuck-2"].conn
    try:
        t0 = time.monotonic()
        await eventually(lambda: conn not in hub.connections, timeout=WRITE_TIMEOUT + 2)
        print(f"stuck peer dropped after {time.monotonic() - t0:.2f} s")
        assert time.monotonic() - t0 <= WRITE_TIMEOUT + 0.5
        conv = hub.conversations["stuck-2"]  # detached, kept for a resume
        assert conv.conn is None and conv.detached_at is not None
        assert hub.metrics.slow_peers.value() == 1
        assert (await asyncio.wait_for(_hello_latency(server), 8)) < 0.2
    finally:
        peer.close()


async def test_asgi_transport_abort_without_the_socket_wakes_a_receive_and_refuses_sends():
    """The Ray path: the app cannot reach the socket to reset it, but abort stops all waiting."""
    from moss_pipecat.server.transport import AsgiTransport, TransportClosed

    class NeverWs:
        def __init__(self) -> None:
            self.headers: dict = {}
            self.closed_with = None

        async def receive(self):
            await asyncio.Event().wait()

        async def send(self, message):
            await asyncio.Event().wait()

        async def close(self, code, reason=""):
            self.closed_with = code

    ws = NeverWs()
    t = AsgiTransport(ws, header_authorized=True)
    recv = asyncio.ensure_future(t.recv())
    await asyncio.sleep(0)
    t.abort()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(recv, 1)
    with pytest.raises(TransportClosed):
        await t.send_text("x")
    await eventually(lambda: ws.closed_with == 1011, what="the background close")
