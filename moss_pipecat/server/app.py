"""The engine server: one ASGI app (FastAPI) for ``moss-pipecat serve`` and Ray Serve alike.

``create_app(hub)`` serves ``/v1/ws`` (the conversation protocol, handled by the hub), and
``/healthz``, ``/readyz``, ``/metrics``. ``EngineServer`` runs it with uvicorn in-process;
``ray_app`` mounts the very same app with ``serve.ingress``.

At the websocket upgrade, before anything is accepted: a browser (``Origin`` header) gets 403,
a wrong ``Authorization: Bearer`` token 401, a server that is draining or over its connection
budget 503 (see ``budget``). Under Ray Serve, whose proxy may not carry HTTP denial responses,
the refusal is a close code instead (4401 unauthorized, 1013 busy, 1008 origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Request, WebSocket  # module level: FastAPI resolves annotations here
from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.server.config import ServerConfig
from moss_pipecat.server.core import ConversationHub
from moss_pipecat.server.transport import AsgiTransport
from moss_pipecat.server.uvicorn_protocols import (
    abortable_websocket_protocol,
    hardened_http_protocol,
)

_DENIAL_EXTENSION = "websocket.http.response"
_CLOSE_FOR_STATUS = {401: P.CLOSE_UNAUTHORIZED, 403: 1008, 503: 1013}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value (None if absent/other)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _deny(ws: Any, status: int, text: str, headers: dict[str, str] | None = None) -> None:
    """Refuses a websocket upgrade with an HTTP status (or, where the server cannot send one,
    a close code before the accept)."""
    from starlette.responses import PlainTextResponse

    if _DENIAL_EXTENSION in (ws.scope.get("extensions") or {}):
        await ws.send_denial_response(PlainTextResponse(text, status, headers=headers))
    else:
        await ws.close(code=_CLOSE_FOR_STATUS.get(status, 1008))


def create_app(hub: ConversationHub) -> Any:
    """The server's ASGI app around ``hub`` (FastAPI; no docs or OpenAPI routes).

    Its lifespan starts the hub (the expiry reaper) and drains it at shutdown.
    """
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse, Response

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(
        title="moss-pipecat engine",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.hub = hub
    metrics = hub.metrics

    @app.websocket(P.WS_PATH)
    async def conversation(ws: WebSocket) -> None:
        if ws.headers.get("origin") is not None:
            # Browsers send Origin: a web page must not drive a server on the user's machine.
            metrics.refused.inc(reason="origin")
            await _deny(ws, 403, "browsers are not allowed\n")
            return
        authorized = not hub.config.token
        auth = ws.headers.get("authorization")
        if auth is not None:
            if not hub.check_token(bearer_token(auth)):
                metrics.refused.inc(reason="unauthorized")
                metrics.errors.inc(code="unauthorized")
                await _deny(ws, 401, "unauthorized\n", {"WWW-Authenticate": "Bearer"})
                return
            authorized = True
        if hub.draining:  # a deploy: the client should go to another server
            metrics.refused.inc(reason="draining")
            await _deny(ws, 503, "draining: this server is shutting down\n", {"Retry-After": "1"})
            return
        if not hub.ready:
            metrics.refused.inc(reason="not_ready")
            await _deny(ws, 503, "not ready\n")
            return
        hub.start()  # idempotent (the lifespan started it where the host runs lifespans)
        admission = hub.budget.admit(authorized)
        if admission is None:
            metrics.refused.inc(reason="busy" if authorized else "pending_busy")
            await _deny(ws, 503, "busy\n", {"Retry-After": "1"})
            return
        try:
            await ws.accept()
        except Exception:
            admission.release()
            return
        await hub.serve(AsgiTransport(ws, header_authorized=authorized), admission)

    # async routes: they run on the event loop, which owns the hub's state (no thread pool).
    # HEAD as well as GET (HTTP requires it; health checkers and load balancers send it).
    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz() -> PlainTextResponse:
        ok = hub.ready
        text = "ready\n" if ok else "draining\n" if hub.draining else "not ready\n"
        return PlainTextResponse(text, 200 if ok else 503)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def prometheus(request: Request) -> Response:
        if not hub.check_token(bearer_token(request.headers.get("authorization"))):
            return PlainTextResponse("unauthorized\n", 401, headers={"WWW-Authenticate": "Bearer"})
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    return app


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class EngineServer:
    """Serves a ``MossEngine`` over websockets (``create_app`` under uvicorn, in-process).

    Usage::

        async with EngineServer(engine, ServerConfig(port=0)) as server:
            print(server.url)          # ws://127.0.0.1:PORT/v1/ws (wss:// with TLS)
            await server.serve_forever()

    Args:
        engine: a started engine (not shut down by the server unless ``own_engine``).
        config: bind address, token, TLS, limits.
        own_engine: shut the engine down in ``stop``.
    """

    def __init__(
        self, engine: MossEngine, config: ServerConfig | None = None, *, own_engine: bool = False
    ) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.hub = ConversationHub(engine, self.config)
        self.app = create_app(self.hub)
        self.own_engine = own_engine
        self.port: int | None = None
        self._uvicorn: Any = None
        self._sock: socket.socket | None = None
        self._main: asyncio.Task | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{self._host_for_url}:{self.port}{P.WS_PATH}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{self._host_for_url}:{self.port}"

    @property
    def _host_for_url(self) -> str:
        host = self.config.host
        return f"[{host}]" if ":" in host else host

    async def start(self) -> EngineServer:
        """Binds and starts accepting connections."""
        import uvicorn

        cfg = self.config
        self._sock = _bind(cfg.host, cfg.port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=cfg.host,
            port=self.port,
            lifespan="off",  # the hub is started and drained here, in order
            http=hardened_http_protocol(
                cfg.limits.handshake_timeout_s,
                cfg.limits.max_idle_sockets,
                lambda reason: self.hub.metrics.idle_closed.inc(reason=reason),
            ),
            ws=abortable_websocket_protocol(),
            ws_max_size=cfg.limits.max_frame_bytes,
            ws_ping_interval=cfg.ping_interval_s,
            ws_ping_timeout=cfg.ping_timeout_s,
            ws_per_message_deflate=False,  # PCM does not deflate; inflating is a memory hazard
            ssl_certfile=cfg.ssl_certfile,
            ssl_keyfile=cfg.ssl_keyfile,
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
            # No limit_concurrency: uvicorn counts every open socket against it, idle ones
            # included, and answers 503 to whatever request comes past it (health probes
            # too). What costs is bounded instead: websockets by the hub's budgets, idle
            # sockets by the HTTP protocol; the HTTP routes answer from memory at once.
        )
        config.load()
        self._uvicorn = uvicorn.Server(config)
        self._uvicorn.lifespan = config.lifespan_class(config)
        self.hub.start()
        try:
            await self._uvicorn.startup(sockets=[self._sock])
        except BaseException:
            self._sock.close()
            await self.hub.stop()
            raise
        self._main = asyncio.get_running_loop().create_task(self._uvicorn.main_loop())
        logger.info(f"moss engine server listening on {self.url}")
        return self

    async def drain(self, timeout: float | None = None) -> None:
        """Drains for a deploy (``ConversationHub.drain``: no new conversations, clients told
        to move, turns in flight end or are cut at ``timeout``), then ``stop``."""
        await self.hub.drain(timeout)
        await self.stop()

    async def stop(self) -> None:
        """Closes connections (1001) and conversations; stops listening."""
        if self._uvicorn is None:
            return
        server, self._uvicorn = self._uvicorn, None
        await self.hub.stop()  # not ready from here on: new upgrades get 503
        server.should_exit = True
        if self._main is not None:
            await self._main
        await server.shutdown(sockets=[self._sock] if self._sock else None)
        if self.own_engine:
            await asyncio.to_thread(self.engine.shutdown)

    async def serve_forever(self) -> None:
        """Waits until uvicorn's main loop ends (its ``should_exit``: a captured signal)."""
        if self._main is not None:
            await asyncio.shield(self._main)

    @contextlib.contextmanager
    def signals_cut_the_drain(self) -> Iterator[None]:
        """While the block runs (the drain), SIGTERM or SIGINT ends the drain's wait at once
        (``ConversationHub.hurry_drain``): a second Ctrl+C, or an orchestrator's second TERM,
        stops the server without waiting out ``drain_timeout_s``. Main thread only (elsewhere
        signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()

        def again(sig: int, frame: object) -> None:
            logger.info(f"signal {sig} while draining: cutting the drain short")
            loop.call_soon_threadsafe(self.hub.hurry_drain)

        before = {sig: signal.signal(sig, again) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        """uvicorn's signal handling (SIGINT/SIGTERM end ``serve_forever``), for a server
        run in the main thread; the caller drains within the block."""
        if self._uvicorn is None:
            raise RuntimeError("the server is not started")
        return self._uvicorn.capture_signals()

    async def __aenter__(self) -> EngineServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_server(engine: MossEngine, config: ServerConfig) -> None:
    """Serves until SIGTERM or SIGINT, then drains (``EngineServer.drain``) and returns.

    The signals are uvicorn's own handling (``capture_signals``: a signal ends its main
    loop); once drained, uvicorn raises the signal again for the handler that was in place
    before (the CLI's, which exits with status 0). A second signal during the drain cuts it
    short (``signals_cut_the_drain``). Cancelling the task stops at once.
    """
    server = EngineServer(engine, config, own_engine=True)
    await server.start()
    try:
        with server.capture_signals():
            await server.serve_forever()
            with server.signals_cut_the_drain():
                await server.drain()
    finally:
        await server.stop()
