"""The uvicorn protocol classes ``moss-pipecat serve`` runs: every reach into uvicorn's
internals lives here (``app.EngineServer`` only picks them).

Both extend uvicorn's own classes (the websocket one tested with uvicorn 0.52.1, pyproject's
floor, to 0.55; the HTTP one written against 0.55) and lean on names that are not uvicorn's
public API, so each checks for them first and, on a uvicorn that lacks them, the server runs
uvicorn's stock protocol: it still works, only that hardening is off (and the log says so).
``http_protocol_problems`` lists what the HTTP one relies on; tests/server/test_idle_sockets.py
fails on an installed uvicorn that changed it.

* ``hardened_http_protocol``: idle sockets (connected, no request in flight) are bounded in
  number (``idle_sockets``: past the bound the oldest is closed) and in time (the handshake
  deadline), so a flood of them cannot lock out health probes or clients.
* ``abortable_websocket_protocol``: a peer that reads nothing can be dropped with a TCP reset,
  and an oversized frame gets its close frame; a text frame that is not UTF-8 is one warning
  line in the log, not a traceback (``BadTextIsOneLine``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from loguru import logger

from moss_pipecat.server.idle_sockets import IdleSockets
from moss_pipecat.server.transport import ABORT_EXTENSION, REFUSED_FRAME

# What the HTTP protocol relies on: its methods (extended through ``super()``), attributes its
# ``__init__`` sets (``cycle``: the request in flight, None until a whole request arrived), and
# that request's ``response_complete`` (set in ``RequestResponseCycle.__init__``).
HTTP_METHODS = ("connection_made", "connection_lost", "data_received", "on_response_complete")
HTTP_ATTRS = ("cycle", "transport", "loop")


def http_protocol_problems(base: type) -> list[str]:
    """What ``base`` (a uvicorn HTTP protocol class) lacks of what the hardened protocol
    relies on; empty when it has it all."""
    name = base.__name__
    found = [f"{name}.{m} is gone" for m in HTTP_METHODS if not callable(getattr(base, m, None))]
    init = _names_set(getattr(base, "__init__", None))
    found += [f"{name}.__init__ no longer sets self.{a}" for a in HTTP_ATTRS if a not in init]
    cycle = getattr(sys.modules.get(base.__module__), "RequestResponseCycle", None)
    if cycle is None:
        found.append(f"{base.__module__}.RequestResponseCycle is gone")
    elif "response_complete" not in _names_set(getattr(cycle, "__init__", None)):
        found.append("RequestResponseCycle.__init__ no longer sets self.response_complete")
    return found


def _names_set(func: Any) -> set[str]:
    """The attribute names a function's code uses (``self.x = ...`` among them)."""
    code = getattr(func, "__code__", None)
    return set(code.co_names) if code is not None else set()


def hardened_http_protocol(
    handshake_timeout: float,
    max_idle: int,
    on_closed: Callable[[str], None] = lambda reason: None,
    base: type | None = None,
) -> Any:
    """uvicorn's HTTP protocol (``base``: its ``AutoHTTPProtocol`` by default) with its idle
    sockets bounded; returns the class for ``uvicorn.Config(http=...)``.

    A socket is idle while it has no request in flight: from the moment it connects, and
    after each response on a kept-alive connection, until its next whole request arrives (a
    websocket upgrade ends it for good). ``max_idle`` idle sockets at most, per server (past
    it the oldest is closed: ``on_closed("evicted")``); one idle for ``handshake_timeout``
    seconds is closed (``on_closed("timeout")``), so a request trickled byte by byte, first
    or kept-alive, cannot hold its socket either. A request in flight is never cut by either.
    """
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base
    problems = http_protocol_problems(base)
    if problems:
        logger.warning(
            "this uvicorn's HTTP protocol lacks what the server extends ("
            + "; ".join(problems)
            + "): running its stock protocol, idle sockets are not bounded"
        )
        return base
    pool = IdleSockets(max_idle, on_evict=lambda: on_closed("evicted"))

    class HardenedHTTPProtocol(base):  # type: ignore[misc, valid-type]
        _idle_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._now_idle()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._is_idle():
                self._now_busy()  # a whole request arrived (or the socket was upgraded)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._is_idle() and not self.transport.is_closing():
                self._now_idle()  # kept alive, waiting for its next request

        def connection_lost(self, exc: Exception | None) -> None:
            self._now_busy()
            super().connection_lost(exc)

        def _is_idle(self) -> bool:
            if self.transport.get_protocol() is not self:  # upgraded: a websocket's now
                return False
            cycle = self.cycle  # uvicorn's request in flight (None before the first one)
            return cycle is None or bool(cycle.response_complete)

        def _now_idle(self) -> None:
            self._cancel_timer()
            pool.idle(self, self.transport.close)
            self._idle_timer = self.loop.call_later(handshake_timeout, self._idle_too_long)

        def _now_busy(self) -> None:
            self._cancel_timer()
            pool.busy(self)

        def _cancel_timer(self) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

        def _idle_too_long(self) -> None:
            self._idle_timer = None
            if self._is_idle() and not self.transport.is_closing():
                pool.busy(self)
                self.transport.close()
                on_closed("timeout")

    return HardenedHTTPProtocol


class BadTextIsOneLine(logging.Filter):
    """uvicorn logs each websocket text frame that is not UTF-8 as an ERROR with a traceback
    (``logger.exception`` on ``uvicorn.error``). It is the client's fault, refused with close
    1007 and counted (``moss_server_errors_total{code="bad_message"}``): one WARNING line.
    A filter on that logger, so public logging API: it sees the records logged there."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UnicodeDecodeError):
            message = f"{record.getMessage()} ({exc.reason}): closed with 1007"
            record.msg, record.args = message, ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


_BAD_TEXT_FILTER = BadTextIsOneLine()


def abortable_websocket_protocol() -> Any:
    """uvicorn's websocket protocol, also giving the app its socket (``ABORT_EXTENSION``): a
    peer that reads nothing is then dropped with a TCP reset, not a close that waits on it.
    Also quiets uvicorn's traceback for text that is not UTF-8 (``BadTextIsOneLine``)."""
    logging.getLogger("uvicorn.error").addFilter(_BAD_TEXT_FILTER)  # once: a set, in effect
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        logger.warning(
            "this uvicorn has no sans-I/O websocket protocol: stalled peers are "
            "closed, not aborted, and oversized frames get no close frame"
        )
        return "auto"
    methods = ("handle_connect", "handle_parser_exception")
    if not all(callable(getattr(WebSocketsSansIOProtocol, m, None)) for m in methods):
        logger.warning(
            "this uvicorn's websocket protocol lacks the hooks the server extends: "
            "running its stock protocol"
        )
        return WebSocketsSansIOProtocol

    class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
        _failed = False

        def handle_parser_exception(self) -> None:
            # A frame over the size cap (or broken framing): send the close frame (1009, ...)
            # and half-close, then discard what the peer still sends for a moment instead of
            # closing at once: unread data would turn the close into a TCP reset that can
            # destroy the close frame, and the client would never learn why.
            if self._failed:
                return
            if not _has_attrs(self, "conn", "queue", "transport", "loop", "read_paused"):
                super().handle_parser_exception()
                return
            self._failed = True
            close = self.conn.close_sent
            code, reason = (close.code, close.reason) if close is not None else (1011, "")
            gone = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.queue.put_nowait({**gone, REFUSED_FRAME: True})  # counted by the hub
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.close_timer = self.loop.call_later(2.0, self.transport.close)

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)  # absent when the upgrade was malformed
            if scope is not None and isinstance(scope.get("extensions"), dict):
                transport = self.transport
                scope["extensions"][ABORT_EXTENSION] = {
                    "abort": transport.abort,
                    "buffered": transport.get_write_buffer_size,
                }

    return AbortableWebSocketProtocol


def _has_attrs(obj: Any, *names: str) -> bool:
    return all(hasattr(obj, n) for n in names)
