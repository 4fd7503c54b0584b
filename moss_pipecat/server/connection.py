"""One client connection: serialised sends, each with a deadline; abort and close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.server.budget import Admission
from moss_pipecat.server.transport import Transport, TransportClosed

if TYPE_CHECKING:
    from moss_pipecat.server.conversation import Conversation


@dataclass(eq=False)
class Connection:
    """One client connection (serialises sends; several tasks write to it).

    Every send waits at most ``write_timeout`` seconds (for the send lock and the socket
    together); past it the peer is taken to be reading nothing and the connection is dropped.
    """

    transport: Transport
    write_timeout: float | None = None
    on_slow: Callable[[], None] | None = None  # called when a send times out
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conversation: Conversation | None = None
    closed: bool = False
    aborted: bool = False
    admission: Admission | None = None  # its slot in the connection budget
    ready: bool = False  # ``ready`` went out: the client reads server messages from here on
    moving: bool = False  # told to move (``goaway``)
    history: bool = False  # the client keeps a journal: send it ``history`` deltas
    # A message that came where an upload's binary frame was due: the upload is refused, and
    # this is the next message read (a request is never swallowed by a header before it).
    unread: str | None = None
    # Set while no request of this connection is being handled (``serve_requests`` handles
    # them one at a time): a connection that takes its conversation over waits for it.
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    async def requests_done(self, timeout: float) -> None:
        """Returns once no request of this connection is being handled (or after
        ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout)

    async def recv(self) -> str | bytes:
        """The client's next message (``TransportClosed`` once it is gone)."""
        if self.unread is not None:
            msg, self.unread = self.unread, None
            return msg
        return await self.transport.recv()

    async def send_message(self, msg: P.ServerMessage) -> None:
        await self._send(self.transport.send_text, msg.to_json())

    async def send_bytes(self, data: bytes) -> None:
        await self._send(self.transport.send_bytes, data)

    async def _send(self, send: Callable[[Any], Awaitable[None]], data: str | bytes) -> None:
        if self.aborted:
            raise TransportClosed("connection dropped")
        try:
            await asyncio.wait_for(self._locked_send(send, data), self.write_timeout)
        except TimeoutError:
            logger.warning(f"dropping a client that read nothing for {self.write_timeout} s")
            if self.on_slow is not None and not self.aborted:
                self.on_slow()
            self.abort()
            raise TransportClosed("write timeout") from None

    async def _locked_send(self, send: Callable[[Any], Awaitable[None]], data: Any) -> None:
        async with self.send_lock:
            await send(data)

    def abort(self) -> None:
        """Drops the connection now (no closing handshake); never blocks."""
        if self.aborted:
            return
        self.aborted = self.closed = True
        try:
            self.transport.abort()
        except Exception as e:  # already gone
            logger.debug(f"abort: {e!r}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closing handshake, bounded by the write timeout (then the connection is dropped)."""
        if self.aborted:
            return
        self.closed = True
        try:
            await asyncio.wait_for(self.transport.close(code, reason), self.write_timeout)
        except TimeoutError:
            self.abort()
        except TransportClosed:
            pass
