"""The one thing the connection handler needs from a websocket: the ``Transport`` protocol, and
its implementation over an accepted ASGI (Starlette) websocket.

The same ASGI app runs under uvicorn (``moss-pipecat serve``) and under Ray Serve. Under our
own uvicorn the socket itself is reachable (``ABORT_EXTENSION`` in the ASGI scope, put there by
``app.AbortableWebSocketProtocol``), so a peer that reads nothing is dropped with a TCP reset;
elsewhere (Ray Serve's proxy) ``abort`` stops all use of the connection at once and leaves the
close to the server in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

ABORT_EXTENSION = "moss.socket"  # scope["extensions"][...] = {"abort": fn, "buffered": fn}
# In a ``websocket.disconnect`` message: the server closed because it refused the peer's frame.
REFUSED_FRAME = "moss.refused_frame"

_BACKGROUND: set[asyncio.Task] = set()  # fire-and-forget closes (kept referenced)


class TransportClosed(Exception):
    """The peer went away (or the connection was closed).

    ``refused``: the close code the server sent when it refused what the peer sent (a frame
    over the size cap 1009, text that is not UTF-8 1007, broken framing 1002), else None.
    """

    def __init__(self, why: str = "", refused: int | None = None) -> None:
        super().__init__(why)
        self.refused = refused

    @property
    def error_code(self) -> str | None:
        """The refusal as the protocol's error code (None: not a refusal)."""
        if self.refused is None:
            return None
        return "too_large" if self.refused == 1009 else "bad_message"


class Transport(Protocol):
    """A message-oriented, full-duplex connection."""

    headers: Mapping[str, str]  # upgrade request headers, lower-case names
    header_authorized: bool  # a valid bearer token came with the upgrade request

    async def recv(self) -> str | bytes:
        """Next message; raises ``TransportClosed`` once the peer is gone."""
        ...

    async def send_text(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def abort(self) -> None:
        """Drops the connection at once, without a closing handshake (never blocks); pending
        and later sends and receives raise ``TransportClosed``."""
        ...


class AsgiTransport:
    """``Transport`` over an accepted ``starlette.websockets.WebSocket``."""

    def __init__(self, ws: Any, header_authorized: bool) -> None:
        self._ws = ws
        self.headers = {k.lower(): v for k, v in ws.headers.items()}
        self.header_authorized = header_authorized
        self._closed = False
        self._aborted: asyncio.Future | None = None  # set by ``abort``: wakes a pending recv
        scope = getattr(ws, "scope", None) or {}
        ext = (scope.get("extensions") or {}).get(ABORT_EXTENSION) or {}
        self._reset: Callable[[], None] | None = ext.get("abort")
        self._buffered: Callable[[], int] | None = ext.get("buffered")

    def write_buffer_size(self) -> int | None:
        """Bytes queued in the server's socket buffer (None where the socket is not ours)."""
        return self._buffered() if self._buffered is not None else None

    async def recv(self) -> str | bytes:
        if self._closed:
            raise TransportClosed("closed")
        if self._aborted is None:
            self._aborted = asyncio.get_running_loop().create_future()
        receive = asyncio.ensure_future(self._ws.receive())
        try:
            await asyncio.wait((receive, self._aborted), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            receive.cancel()
            raise
        if not receive.done():  # aborted: stop waiting for the peer
            receive.cancel()
            raise TransportClosed("aborted")
        try:
            msg = receive.result()
        except (RuntimeError, OSError) as e:
            self._closed = True
            raise TransportClosed(str(e)) from None
        if msg["type"] == "websocket.disconnect":
            self._closed = True
            refused = msg.get("code") if msg.get(REFUSED_FRAME) else None
            raise TransportClosed(f"disconnected ({msg.get('code')})", refused)
        if msg.get("text") is not None:
            return msg["text"]
        return msg.get("bytes") or b""

    async def send_text(self, data: str) -> None:
        await self._send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: dict) -> None:
        if self._closed:
            raise TransportClosed("closed")
        try:
            await self._ws.send(message)
        except Exception as e:  # starlette/uvicorn raise several kinds once the peer is gone
            self._closed = True
            raise TransportClosed(str(e)) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._ws.close(code, reason[:120])
        except Exception:
            pass  # already closed by the peer

    def abort(self) -> None:
        if self._aborted is not None and not self._aborted.done():
            self._aborted.set_result(None)
        if self._reset is not None:
            self._closed = True
            self._reset()  # TCP reset: a send stuck on the full buffer fails at once
            return
        # No socket access (Ray Serve): refuse further use now, close in the background (it
        # may wait on the peer's full buffer, but nothing here waits for it).
        if self._closed:
            return
        self._closed = True
        task = asyncio.get_running_loop().create_task(self._close_quietly())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _close_quietly(self) -> None:
        try:
            await self._ws.close(1011, "write timeout")
        except Exception:
            pass
