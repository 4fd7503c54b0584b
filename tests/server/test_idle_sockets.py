"""Idle TCP sockets (connected, no request in flight) cannot lock out health probes or clients:
uvicorn's per-socket ``limit_concurrency``, which answered 503 to every request once enough
sockets were open (idle ones included), is gone; idle sockets are bounded by their own pool
(``max_idle_sockets``: past it the oldest is closed) and by the handshake deadline, websockets
by the connection budgets."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlparse

import pytest
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol

from moss_pipecat.client import RemoteEngine
from moss_pipecat.server.idle_sockets import IdleSockets
from moss_pipecat.server.uvicorn_protocols import hardened_http_protocol, http_protocol_problems

from .conftest import TOKEN, eventually
from .rawws import RawWebsocket

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_CONNECTIONS, MAX_PENDING = 2, 1
# The open-socket limit the server used to give uvicorn (max_connections + pending + 64).
OLD_LIMIT = MAX_CONNECTIONS + MAX_PENDING + 64


def _connect(server, n: int) -> list[socket.socket]:
    """``n`` TCP connections that send nothing. Each is connected (the kernel's accept queue
    holds it) when this returns; the server accepts in order, so it has seen them all before
    it sees any connection made after."""
    u = urlparse(server.http_url)
    return [socket.create_connection((u.hostname, u.port), timeout=10) for _ in range(n)]


class _PlainServer:
    """uvicorn with the hardened HTTP protocol over ``base`` and an app that answers 200 to any
    request: the protocol alone, on either of uvicorn's HTTP implementations."""

    def __init__(self, base: type, handshake_timeout: float, max_idle: int) -> None:
        self.closed: list[str] = []
        http = hardened_http_protocol(handshake_timeout, max_idle, self.closed.append, base=base)
        config = uvicorn.Config(_ok, http=http, lifespan="off", log_config=None, access_log=False)
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.http_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    async def __aenter__(self) -> _PlainServer:
        await self.server.startup(sockets=[self.sock])
        self.main = asyncio.get_running_loop().create_task(self.server.main_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.main
        await self.server.shutdown(sockets=[self.sock])


async def _ok(scope, receive, send) -> None:
    headers = [(b"content-length", b"3")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok\n"})


def _read_response(sock: socket.socket, method: str) -> tuple[int, bytes]:
    """One HTTP response (status, body) from ``sock``, framed by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = 0 if method == "HEAD" else int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return int(lines[0].split()[1]), body


def _request(sock: socket.socket, method: str, path: str, keep_alive: bool = False) -> int:
    """Sends one request at once on ``sock`` (a probe's way); returns the response status."""
    extra = "" if keep_alive else "Connection: close\r\n"
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n".encode())
    return _read_response(sock, method)[0]


def _probe(server, method: str, path: str) -> int:
    """A health check's request on a new connection."""
    (sock,) = _connect(server, 1)
    with sock:
        return _request(sock, method, path)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (waits up to its 10 s timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_probes_and_clients_get_through_more_idle_sockets_than_the_old_limit(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine(eos_min_frames=2)
    server = await make_server(
        engine, token=TOKEN, max_connections=MAX_CONNECTIONS, max_pending_connections=MAX_PENDING
    )
    metrics = server.hub.metrics
    flood = await asyncio.to_thread(_connect, server, 2 * OLD_LIMIT)
    peers: list[RawWebsocket] = []
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            for method in ("GET", "HEAD"):
                assert await asyncio.to_thread(_probe, server, method, path) == 200, (method, path)
        # A conversation opens and speaks.
        client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=0.5)
        session = await asyncio.wait_for(client.create_session(), 10)
        turn = await session.start_turn(max_frames=2)
        turn.push_text("Still served.")
        turn.end_text()
        assert (await asyncio.wait_for(turn.wait(), 10)).audio_frames == 2
        # The websocket budgets still refuse past max_connections + max_pending_connections.
        for headers in (AUTH, AUTH, None, None):
            peers.append(await asyncio.to_thread(RawWebsocket, server.url, None, headers))
        assert [p.status for p in peers] == [101, 503, 101, 503]
        assert metrics.refused.value(reason="busy") == 1
        assert metrics.refused.value(reason="pending_busy") == 1
        await session.close()
        # The flood is under the idle bound (its default): none of it was closed.
        assert metrics.idle_closed.value(reason="evicted") == 0
    finally:
        for peer in peers:
            peer.close()
        for sock in flood:
            sock.close()


async def test_past_the_idle_bound_the_oldest_idle_socket_is_closed(make_tiny_engine, make_server):
    engine = make_tiny_engine()
    # A long handshake deadline: on a loaded box too, only the bound closes sockets here.
    server = await make_server(engine, token=TOKEN, max_idle_sockets=4, handshake_timeout_s=60)
    evicted = lambda: server.hub.metrics.idle_closed.value(reason="evicted")  # noqa: E731
    # Upgraded sockets are websockets, on the connection budgets: never idle HTTP sockets.
    peers = [await asyncio.to_thread(RawWebsocket, server.url, None, AUTH) for _ in range(2)]
    first = await asyncio.to_thread(_connect, server, 4)  # the pool is full
    socks = list(first)
    try:
        socks += await asyncio.to_thread(_connect, server, 1)
        assert await asyncio.to_thread(_closed_by_server, first[0])  # the oldest made room
        await eventually(lambda: evicted() == 1, what="the eviction to be counted")
        # The others were not closed: one sends its request and is answered.
        assert await asyncio.to_thread(_request, first[1], "GET", "/healthz") == 200
        # A flood of three times the bound: the three idle ones left, then its own oldest go.
        later = await asyncio.to_thread(_connect, server, 12)
        socks += later
        await eventually(lambda: evicted() == 1 + 3 + 8, what="the flood's evictions")
        for sock in (*first[2:], socks[4], *later[:8]):
            assert await asyncio.to_thread(_closed_by_server, sock)
        # A probe into the full pool is answered: the oldest idle socket makes room for it.
        assert await asyncio.to_thread(_probe, server, "GET", "/readyz") == 200
        assert evicted() == 13 and await asyncio.to_thread(_closed_by_server, later[8])
        for sock in later[9:]:  # the newest are served
            assert await asyncio.to_thread(_request, sock, "HEAD", "/healthz") == 200
        for peer in peers:  # the websockets were untouched
            peer.send_json({"type": "hello"})
            assert (await asyncio.to_thread(peer.recv_json))["type"] == "ready"
        assert server.hub.metrics.idle_closed.value(reason="timeout") == 0
    finally:
        for peer in peers:
            peer.close()
        for sock in socks:
            sock.close()


async def test_a_kept_alive_socket_that_trickles_its_next_request_is_closed(
    make_tiny_engine, make_server
):
    # uvicorn's keep-alive timer stops at the first byte of the next request: without a
    # deadline of its own, a socket trickling that request stays open for as long as it likes.
    engine = make_tiny_engine()
    server = await make_server(engine, token=TOKEN, handshake_timeout_s=0.5)
    (sock,) = await asyncio.to_thread(_connect, server, 1)
    with sock:
        assert await asyncio.to_thread(_request, sock, "GET", "/healthz", True) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert await asyncio.to_thread(_closed_by_server, sock)
    await eventually(
        lambda: server.hub.metrics.idle_closed.value(reason="timeout") == 1,
        what="the deadline's close to be counted",
    )


@pytest.mark.parametrize("base", [AutoHTTPProtocol, H11Protocol], ids=["auto", "h11"])
async def test_either_of_uvicorns_http_protocols_bounds_its_idle_sockets(base):
    # uvicorn's AutoHTTPProtocol is httptools' when httptools is installed, else h11's.
    async with _PlainServer(base, handshake_timeout=0.5, max_idle=2) as server:
        socks = await asyncio.to_thread(_connect, server, 3)
        try:
            assert await asyncio.to_thread(_closed_by_server, socks[0])  # evicted
            assert await asyncio.to_thread(_request, socks[1], "GET", "/", True) == 200
            socks[1].sendall(b"GET / HTTP/1.1\r\nHo")  # the next request, trickled
            assert await asyncio.to_thread(_closed_by_server, socks[1])  # at the deadline
            assert await asyncio.to_thread(_probe, server, "HEAD", "/") == 200
            assert await asyncio.to_thread(_closed_by_server, socks[2])  # idle: the deadline
            await eventually(lambda: len(server.closed) == 3, what="the closes to be counted")
            assert sorted(server.closed) == ["evicted", "timeout", "timeout"]
        finally:
            for sock in socks:
                sock.close()


def test_idle_sockets_are_evicted_oldest_idle_first():
    closed: list[str] = []
    pool = IdleSockets(2, on_evict=lambda: closed.append("evict"))
    for name in "abc":
        pool.idle(name, lambda name=name: closed.append(name))
    assert closed == ["a", "evict"] and len(pool) == 2
    pool.busy("b")  # a request in flight: not idle, never evicted
    pool.idle("d", lambda: closed.append("d"))
    pool.idle("b", lambda: closed.append("b"))  # kept alive after its response: the newest
    assert closed == ["a", "evict", "c", "evict"]
    pool.idle("e", lambda: closed.append("e"))
    assert closed[-2:] == ["d", "evict"] and len(pool) == 2
    with pytest.raises(ValueError):
        IdleSockets(0)


@pytest.mark.parametrize("base", [AutoHTTPProtocol, H11Protocol])
def test_the_installed_uvicorn_has_what_the_http_protocol_extends(base):
    """Fails on a uvicorn that renamed what ``uvicorn_protocols`` relies on."""
    assert http_protocol_problems(base) == []
    assert issubclass(hardened_http_protocol(1.0, 8, base=base), base)


def test_a_uvicorn_without_those_names_is_reported_and_runs_its_stock_protocol():
    class Changed(asyncio.Protocol):  # stands in for a uvicorn that renamed them
        def __init__(self) -> None:
            self.transport = self.loop = None
            self.request = None  # was ``cycle``

        def data_received(self, data: bytes) -> None: ...

    assert http_protocol_problems(Changed) == [
        "Changed.on_response_complete is gone",
        "Changed.__init__ no longer sets self.cycle",
        f"{__name__}.RequestResponseCycle is gone",
    ]
    assert hardened_http_protocol(1.0, 8, base=Changed) is Changed
