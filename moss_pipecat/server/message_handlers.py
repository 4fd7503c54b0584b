"""A connection's requests after the handshake: each client message to its handler.

``serve_requests`` reads the connection's messages and sends their replies; ``handle`` picks
the handler of a message from ``HANDLERS``, one per client message type, keyed by its class.
A handler gets the ``Request`` (hub, connection, conversation) and the message, and returns
the reply to send (None: nothing to send now; ``FATAL``: the connection is done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.engine.commands import SetLimits, SetSampling
from moss_pipecat.engine.session import TurnStream
from moss_pipecat.errors import InvalidInputError, MossError, SessionClosedError
from moss_pipecat.server.connection import Connection
from moss_pipecat.server.conversation import Conversation
from moss_pipecat.server.history_feed import handle_restore, send_history
from moss_pipecat.server.transport import TransportClosed
from moss_pipecat.server.turn_pump import await_pump, pump

if TYPE_CHECKING:
    from moss_pipecat.server.core import ConversationHub

FATAL = object()  # marker: close the connection after the error reply


@dataclass(frozen=True)
class Request:
    """What a handler works with: the hub, the connection, and the conversation it holds."""

    hub: ConversationHub
    conn: Connection
    conv: Conversation

    def check_held(self) -> None:
        """Raises if another connection took the conversation over while this request waited
        (an upload, an encode): what it asked is not applied then, so its client, resuming
        on the other connection, decides alone whether to send it again (the history it is
        told there says what landed)."""
        if self.conn.conversation is not self.conv:
            raise SessionClosedError("this connection lost its conversation to a newer one")


async def serve_requests(hub: ConversationHub, conn: Connection) -> None:
    """Handles the connection's messages until it closes (raises ``TransportClosed`` when the
    client is gone)."""
    while not conn.closed:
        raw = await conn.recv()
        if isinstance(raw, bytes):
            await hub.send_error(conn, "bad_message", "unexpected binary message")
            continue
        if len(raw.encode()) > hub.limits.max_message_bytes:
            await hub.send_error(
                conn, "too_large", f"message over {hub.limits.max_message_bytes} bytes"
            )
            continue
        req = None
        try:
            msg = P.parse_client_message(raw)
            req = getattr(msg, "req", None)
            conn.idle.clear()
            try:
                reply = await handle(hub, conn, msg)
            finally:
                conn.idle.set()
            if reply is FATAL:
                return
            if reply is not None:
                await conn.send_message(reply)
        except P.MessageError as e:
            await hub.send_error(conn, e.code, str(e), req=e.req if e.req is not None else req)
            continue
        except TransportClosed:
            raise
        except MossError as e:
            await hub.send_error(conn, **P.error_fields(e), req=req)
            continue
        except Exception as e:  # a bug: report it, keep serving
            logger.exception("request failed")
            await hub.send_error(conn, "internal", f"{type(e).__name__}: {e}", req=req)
            continue


async def handle(hub: ConversationHub, conn: Connection, msg: Any) -> Any:
    """The reply to one client message (see ``HANDLERS``)."""
    conv = conn.conversation
    if conv is None:  # taken over by a newer connection, or closed
        raise SessionClosedError("this connection no longer holds a conversation")
    return await HANDLERS[type(msg)](Request(hub, conn, conv), msg)


# ================================================================== handlers
async def _hello(r: Request, msg: P.Hello) -> Any:
    raise P.MessageError("bad_message", "hello was already sent")


async def _turn_start(r: Request, msg: P.TurnStart) -> Any:
    conv = r.conv
    turn = await conv.session.start_turn(**msg.command_fields())
    if r.conn.conversation is not conv:
        # Taken over while the engine opened it: nobody hears it, and left open it would
        # refuse every later turn (the client starts its turn again on the new connection).
        await conv.session.interrupt(0, turn_id=turn.turn_id)
        r.check_held()
    conv.turn, conv.frames_sent = turn, 0
    conv.turn_ids = conv.turn_chars = conv.ids_told = 0
    await r.conn.send_message(P.TurnStarted(req=msg.req, turn_id=turn.turn_id))
    every = r.hub.limits.progress_interval_s
    conv.pump = asyncio.get_running_loop().create_task(pump(conv, turn, r.hub.metrics, every))
    return None


async def _turn_text(r: Request, msg: P.TurnText) -> Any:
    await _turn_input(r, msg, lambda turn: turn.push_text(msg.text))
    return None


async def _turn_ids(r: Request, msg: P.TurnIds) -> Any:
    conv, hub, limits = r.conv, r.hub, r.hub.limits

    def push(turn: TurnStream) -> None:
        if len(msg.ids) > limits.max_ids_per_message:
            raise InvalidInputError(f"more than {limits.max_ids_per_message} ids in one message")
        n_ids, n_chars = conv.turn_ids + len(msg.ids), conv.turn_chars + len(msg.text)
        if n_ids > limits.max_ids_per_turn:
            raise P.MessageError("too_large", f"more than {limits.max_ids_per_turn} ids per turn")
        if n_chars > hub.engine.config.max_text_chars:
            raise P.MessageError(
                "too_large", f"turn text over {hub.engine.config.max_text_chars} characters"
            )
        conv.turn_ids, conv.turn_chars = n_ids, n_chars
        turn.push_ids(msg.ids, msg.text)

    await _turn_input(r, msg, push)
    return None


async def _turn_end(r: Request, msg: P.TurnEnd) -> Any:
    await _turn_input(r, msg, lambda turn: turn.end_text())
    return None


async def _turn_input(
    r: Request, msg: P.TurnText | P.TurnIds | P.TurnEnd, push: Callable[[TurnStream], None]
) -> None:
    """Feeds the open turn (no reply; a refusal is an ``error`` naming the turn)."""
    turn = r.conv.turn
    if turn is None or turn.turn_id != msg.turn_id or turn.summary is not None:
        return  # the turn already ended (EOS, cap, interruption): late input is dropped
    try:
        push(turn)
    except MossError as e:
        await r.hub.send_error(r.conn, **P.error_fields(e), turn_id=msg.turn_id)
    except P.MessageError as e:  # refused: the turn goes on with what it had
        await r.hub.send_error(r.conn, e.code, str(e), turn_id=msg.turn_id)
    await _tell_text_ids(r, turn)


async def _tell_text_ids(r: Request, turn: TurnStream) -> None:
    """The ids the turn took since the client was last told, to a client keeping a journal:
    its turn in flight holds every id, also those no frame it received came with."""
    conv, start = r.conv, r.conv.ids_told
    if not r.conn.history or len(turn.ids_sent) == start:
        return
    conv.ids_told = len(turn.ids_sent)
    ids = turn.ids_sent[start:]
    await r.conn.send_message(P.TurnTextIds(turn_id=turn.turn_id, text_from=start, text_ids=ids))


async def _interrupt(r: Request, msg: P.Interrupt) -> Any:
    conv = r.conv
    summary = await conv.session.interrupt(msg.heard_frames, msg.heard_units, msg.turn_id)
    cut = (msg.turn_id, msg.heard_frames, msg.heard_units)
    if summary is not None:
        conv.last_cut = ((summary.turn_id, *cut[1:]), summary)
    elif cut[0] is not None and conv.last_cut is not None and conv.last_cut[0] == cut:
        summary = conv.last_cut[1]  # the same cut sent again (its reply was lost): its answer
    await send_history(conv)
    wire = None if summary is None else P.WireSummary.of(summary)
    return P.Result(req=msg.req, summary=wire)  # null: there was nothing to cut


async def _user_turn(r: Request, msg: P.UserTurn) -> Any:
    conv, limits = r.conv, r.hub.limits
    frames = await r.hub.uploads.decode(r.conn, msg.format, msg.bytes, msg.sample_rate)
    if (msg.text is None) == (msg.text_ids is None):
        raise InvalidInputError("a user turn needs exactly one of text and text_ids")
    if msg.text is not None:
        if len(msg.text) > limits.max_transcript_chars:
            raise InvalidInputError(f"transcript over {limits.max_transcript_chars} chars")
        ids = conv.session.user_text_ids(msg.text)
    else:
        if len(msg.text_ids) > limits.max_ids_per_message:
            raise InvalidInputError("too many transcript ids")
        ids = msg.text_ids
    if frames.shape[0] == 0:
        raise InvalidInputError("the user audio is shorter than one frame (80 ms)")
    r.check_held()
    await conv.session.add_user_turn(ids, frames)
    await send_history(conv)
    return P.Result(req=msg.req)


async def _voice(r: Request, msg: P.Voice) -> Any:
    session = r.conv.session
    if msg.format == "none":
        await session.set_voice(None)
        await send_history(r.conv)
        return P.Result(req=msg.req)
    frames = await r.hub.uploads.decode(r.conn, msg.format, msg.bytes, msg.sample_rate)
    if frames.shape[0] == 0:
        raise InvalidInputError("the voice reference is shorter than one frame (80 ms)")
    r.check_held()
    await session.set_voice(frames)
    await send_history(r.conv)
    return P.Result(req=msg.req)


async def _settings(r: Request, msg: P.Settings) -> Any:
    """``SetSampling`` for new sampling or a seed, ``SetLimits`` for limits: both checked
    before either is applied, so a bad half changes nothing."""
    conv = r.conv
    s = conv.session
    commands: list[SetSampling | SetLimits] = []
    sampling = conv.sampling
    if msg.sampling is not None or msg.seed is not None:
        if msg.sampling is not None:
            sampling = msg.sampling.to_params()
        commands.append(SetSampling(sampling, msg.seed))
    if msg.limits is not None:
        commands.append(msg.limits.command())
    for command in commands:
        command.checked(s.engine.facts)
    for command in commands:
        await s.request(command)
    conv.sampling = sampling
    if msg.seed is not None:
        await send_history(conv)  # the journal restores the noise from the new seed
    return P.Result(req=msg.req)


async def _reset(r: Request, msg: P.Reset) -> Any:
    await r.conv.session.reset()
    await send_history(r.conv)
    return P.Result(req=msg.req)


async def _snapshot(r: Request, msg: P.Snapshot) -> Any:
    snap = await r.conv.session.snapshot()
    return P.Result(req=msg.req, snapshot=P.WireSnapshot.of(snap))


async def _close(r: Request, msg: P.Close) -> Any:
    conv, conn = r.conv, r.conn
    await r.hub.end_conversation(conv, conn)
    # Its turn.end reaches this client before the result.
    await await_pump(conv, r.hub.limits.write_timeout_s)
    conv.conn, conn.conversation = None, None
    await conn.send_message(P.Result(req=msg.req))
    await conn.close(1000, "conversation closed")
    return FATAL


Handler = Callable[[Request, Any], Awaitable[Any]]

# One handler per client message type (``protocol.CLIENT_MESSAGES``).
HANDLERS: dict[type, Handler] = {
    P.Hello: _hello,
    P.TurnStart: _turn_start,
    P.TurnText: _turn_text,
    P.TurnIds: _turn_ids,
    P.TurnEnd: _turn_end,
    P.Interrupt: _interrupt,
    P.UserTurn: _user_turn,
    P.Voice: _voice,
    P.Settings: _settings,
    P.Reset: _reset,
    P.Snapshot: _snapshot,
    P.Restore: handle_restore,
    P.Close: _close,
}
