"""The standalone engine server: websockets at ``/v1/ws``, plus ``/healthz``, ``/readyz`` and
``/metrics`` over plain HTTP on the same port (library: ``websockets``)."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from loguru import logger

from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.server import protocol as P
from moss_pipecat.server.config import ServerConfig
from moss_pipecat.server.core import ConversationHub
from moss_pipecat.server.metrics import CONTENT_TYPE
from moss_pipecat.server.transport import WebsocketsTransport


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value (None if absent/other)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class EngineServer:
    """Serves a ``MossEngine`` over websockets.

    Usage::

        async with EngineServer(engine, ServerConfig(port=0)) as server:
            print(server.url)          # ws://127.0.0.1:PORT/v1/ws
            await server.serve_forever()

    Args:
        engine: a started engine (not shut down by the server unless ``own_engine``).
        config: bind address, token, limits.
        own_engine: shut the engine down in ``stop``.
    """

    def __init__(
        self, engine: MossEngine, config: ServerConfig | None = None, *, own_engine: bool = False
    ) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.hub = ConversationHub(engine, self.config)
        self.own_engine = own_engine
        self._server: Any = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{P.WS_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> EngineServer:
        """Binds and starts accepting connections."""
        from websockets.asyncio.server import serve

        cfg = self.config
        self.hub.start()
        self._server = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            max_size=cfg.limits.max_frame_bytes,
            compression=None,  # PCM does not deflate, and inflating is a memory hazard
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            origins=[None],  # no browser pages: a web page must not drive a local server
            open_timeout=10,
            close_timeout=5,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(f"moss engine server listening on {self.url}")
        return self

    async def stop(self) -> None:
        """Closes connections (1001) and conversations; stops listening."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        await self.hub.stop()
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        if self.own_engine:
            await asyncio.to_thread(self.engine.shutdown)

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    async def __aenter__(self) -> EngineServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- HTTP side ----------------------------------------------------------------------------
    def _authorized(self, request: Any) -> bool:
        return self.hub.check_token(bearer_token(request.headers.get("Authorization")))

    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        connection.moss_authorized = False
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.hub.ready:
                return connection.respond(HTTPStatus.OK, "ready\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        if path == "/metrics":
            if not self._authorized(request):
                return self._unauthorized(connection)
            response = connection.respond(HTTPStatus.OK, self.hub.metrics.render())
            del response.headers["Content-Type"]  # websockets' Headers appends on assignment
            response.headers["Content-Type"] = CONTENT_TYPE
            return response
        if path != P.WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") is not None:
            if not self._authorized(request):
                self.hub.metrics.errors.inc(code="unauthorized")
                return self._unauthorized(connection)
            connection.moss_authorized = True
        if len(self.hub.connections) >= self.config.limits.max_connections or not self.hub.ready:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    @staticmethod
    def _unauthorized(connection: Any) -> Any:
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def _handler(self, ws: Any) -> None:
        authorized = bool(getattr(ws, "moss_authorized", False)) or not self.config.token
        await self.hub.serve(WebsocketsTransport(ws, header_authorized=authorized))


async def run_server(engine: MossEngine, config: ServerConfig) -> None:
    """Serves until cancelled (SIGINT/SIGTERM in the CLI), then drains."""
    server = EngineServer(engine, config, own_engine=True)
    await server.start()
    try:
        await server.serve_forever()
    finally:
        await server.stop()
