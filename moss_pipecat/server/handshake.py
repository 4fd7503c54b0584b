"""The handshake: a connection's first message must be a ``hello``, answered by ``ready`` (or a
fatal ``error`` and a close code; see ``protocol``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from moss_pipecat import protocol as P
from moss_pipecat.errors import MossError
from moss_pipecat.protocol.errors import ForbiddenError
from moss_pipecat.server.connection import Connection
from moss_pipecat.server.history_feed import greet

if TYPE_CHECKING:
    from moss_pipecat.server.core import ConversationHub


async def run_handshake(hub: ConversationHub, conn: Connection) -> bool:
    """Runs the handshake of a new connection: its ``hello`` checked, its conversation
    attached (created or resumed) and ``ready`` sent; True then. On a refusal the client gets
    a fatal ``error`` and the connection is closed (False)."""
    t = conn.transport
    try:
        # Without a bearer header the socket is on the short pending budget.
        timeout = (
            hub.limits.hello_timeout_s
            if t.header_authorized
            else hub.limits.pending_hello_timeout_s
        )
        raw = await asyncio.wait_for(t.recv(), timeout)
    except TimeoutError:
        await hub.send_error(conn, "bad_message", "no hello in time", fatal=True)
        await conn.close(P.CLOSE_HELLO_TIMEOUT, "no hello")
        return False
    try:
        if isinstance(raw, bytes):
            raise P.MessageError("bad_message", "expected a hello message, got binary")
        if len(raw.encode()) > hub.limits.max_message_bytes:
            raise P.MessageError("too_large", "hello too large")
        hello = P.parse_client_message(raw)
        if not isinstance(hello, P.Hello):
            raise P.MessageError("bad_message", f"expected hello, got {hello.type!r}")
    except P.MessageError as e:
        await hub.send_error(conn, e.code, str(e), fatal=True)
        await conn.close(P.CLOSE_PROTOCOL, e.code)
        return False
    if not (t.header_authorized or hub.check_token(hello.token)):
        await hub.send_error(conn, "unauthorized", "missing or wrong bearer token", fatal=True)
        await conn.close(P.CLOSE_UNAUTHORIZED, "unauthorized")
        return False
    if conn.admission is not None and not conn.admission.promote():
        await hub.send_error(conn, "unavailable", "server at its connection limit", fatal=True)
        await conn.close(1013, "try again later")
        return False
    if hello.v != P.PROTOCOL_VERSION:
        await hub.send_error(
            conn, "unsupported_version", f"server speaks v{P.PROTOCOL_VERSION}", fatal=True
        )
        await conn.close(P.CLOSE_PROTOCOL, "version")
        return False
    misrouted = _misrouted(_routing_header(t.headers), hello.conversation_id)
    if misrouted is not None:
        hub.metrics.misrouted.inc()
        await hub.send_error(conn, "bad_message", misrouted, fatal=True)
        await conn.close(P.CLOSE_PROTOCOL, "bad_message")
        return False
    if hub.draining:
        await hub.send_error(conn, "unavailable", "server is shutting down", fatal=True)
        await conn.close(P.CLOSE_GOING_AWAY, "draining")
        return False
    conn.history = hello.history
    try:
        conv, resumed = await hub.attach(conn, hello)
    except MossError as e:
        fields = P.error_fields(e)
        await hub.send_error(conn, **fields, fatal=True)
        close = P.CLOSE_FORBIDDEN if isinstance(e, ForbiddenError) else P.CLOSE_PROTOCOL
        await conn.close(close, fields["code"])
        return False
    ready = P.Ready(
        v=P.PROTOCOL_VERSION,
        conversation_id=conv.id,
        resumed=resumed,
        resume_secret=conv.secret,
        resume_ticket=conv.resume_ticket(),
        server_id=hub.server_id,
        audio=hub.audio_info(),
        features=P.FEATURES,
        limits=P.ReadyLimits(
            max_message_bytes=hub.limits.max_message_bytes,
            max_audio_seconds=hub.limits.max_audio_seconds,
            max_text_chars=hub.engine.config.max_text_chars,
            max_ids_per_message=hub.limits.max_ids_per_message,
            max_ids_per_turn=hub.limits.max_ids_per_turn,
            idle_expiry_s=hub.limits.idle_expiry_s,
        ),
    )
    at = hello.history_at  # the journal's rev, if this server's (else a full history)
    since = at.rev if at is not None and at.server == hub.server_id else None
    history = await greet(conv, conn, ready, since)
    if history is not None:
        hub.metrics.resumes.inc(history=history)
    await hub.tell_to_move(conn)  # a drain that began during the handshake
    return True


def _routing_header(headers: Mapping[str, str]) -> str | None:
    """The ``x-session-id`` header as Ray Serve's proxy reads it to route: names (lower-case
    here) with ``-`` and ``_`` alike, the last one sent."""
    want = P.SESSION_HEADER.replace("-", "_")
    values = [v for k, v in headers.items() if k.replace("-", "_") == want]
    return values[-1] if values else None


def _misrouted(header: str | None, cid: str | None) -> str | None:
    """Why a hello whose conversation id is not its connection's routing header is refused
    (None: it is, or no header came). Ray Serve routes a connection by the header, so another
    id may have reached a replica that does not hold that conversation (and would make it
    anew there, beside the one that does); plain servers need no header."""
    if header is None or header == cid:
        return None
    return (
        f"the {P.SESSION_HEADER} header ({header[:128]!r}) must be the hello's "
        f"conversation_id ({cid!r}): it routes the connection to the server that holds "
        "the conversation"
    )
