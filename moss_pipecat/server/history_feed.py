"""The conversation's history to its client, and back (issue #24).

After every change to a conversation's history a client that keeps a journal (its ``hello``
said ``history``) gets a ``history`` delta (what changed since the last one), before the reply
of what changed it, so its journal always holds what the server holds; a ``ready`` that
resumed is followed by a full one. A client whose
server was lost sends its journal back with ``restore`` to the conversation the next server
made anew; it is checked like any input (the frame's sizes, then the engine's
``RestoreHistory`` checks) and refused with nothing changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.engine.records import HistoryChange, HistoryCursor, TurnRecord
from moss_pipecat.errors import MossError
from moss_pipecat.server.conversation import Conversation
from moss_pipecat.server.transport import TransportClosed

if TYPE_CHECKING:
    from moss_pipecat.server.connection import Connection
    from moss_pipecat.server.message_handlers import Request


async def send_history(conv: Conversation, full: bool = False) -> None:
    """Sends the conversation's client what changed in its history (nothing when it has no
    client, or one that keeps no journal). A connection still in its handshake gets nothing:
    ``greet`` sends it a full delta right after its ``ready``, taken after this change, so a
    delta never reaches a client before its ``ready``. Deltas go out in the order they were
    taken (one at a time, under the conversation's ``history_lock``)."""
    async with conv.history_lock:
        conn = conv.conn
        if conn is None or not conn.history or not conn.ready:
            return
        await _send_delta(conv, conn, full)


async def greet(
    conv: Conversation, conn: Connection, ready: P.Ready, since: int | None
) -> str | None:
    """The handshake's last step: ``ready``, then (a resumed conversation whose client keeps a
    journal, which may have missed deltas while it was away) its history. Where the journal
    holds this server's delta ``since`` (``hello.history_at``) and the conversation still
    keeps the deltas taken after it (``Conversation.deltas_after``: those sent to a connection
    that departed), they are sent again, then what changed since the last; else the full
    history. No delta can come between them (``history_lock``), and the connection is ready
    after them. Returns which history it sent ("delta", "full"), if any."""
    sent = None
    async with conv.history_lock:
        await conn.send_message(ready)
        if ready.resumed and conn.history:
            missed = conv.deltas_after(since)
            for msg in missed or ():  # with a good ticket (the one it had may be old)
                await conn.send_message(
                    msg.model_copy(update={"resume_ticket": ready.resume_ticket})
                )
            await _send_delta(conv, conn, full=missed is None)
            sent = "full" if missed is None else "delta"
        conn.ready = True
    return sent


async def _send_delta(conv: Conversation, conn: Connection, full: bool) -> None:
    """(``history_lock`` held)"""
    try:
        change = await conv.session.history_delta(conv.cursor, full)
    except Exception as e:  # never the turn's or the request's failure
        if not isinstance(e, MossError):  # MossError: the conversation ended meanwhile
            logger.exception(f"conversation {conv.id}: history delta failed")
        conv.cursor = HistoryCursor()  # the next delta is a full one: nothing is missed
        return
    conv.history_rev += 1
    msg = history_message(change, conv.history_rev, conv.resume_ticket())
    conv.delta_taken(msg)  # also one its connection departed before: sent again on a resume
    if conn.closed or conv.conn is not conn:
        return
    try:
        await conn.send_message(msg)
    except TransportClosed:
        pass


def history_message(change: HistoryChange, rev: int, ticket: str | None = None) -> P.History:
    voice = change.voice
    return P.History(
        rev=rev,
        full=change.full,
        drop=change.drop,
        keep=change.keep,
        turns=[
            P.HistoryTurn(
                role=t.role, ids=list(t.text_ids), lead=t.lead, codes=P.codes_b64(t.frames.numpy())
            )
            for t in change.turns
        ],
        voice_changed=change.voice_changed,
        voice=None if voice is None else P.codes_b64(voice.numpy()),
        seed=change.seed,
        noise=change.noise_counter,
        turn_noise=change.turn_noise,
        resume_ticket=ticket,
    )


def restore_limit(r: Request) -> int:
    """The largest ``restore`` frame: a turn table row, a text id and a frame per context
    row, and the longest voice upload."""
    cfg, rvq = r.hub.engine.config, r.hub.engine.layout.rvq
    return cfg.max_context * (16 + 4 + 2 * rvq) + r.hub.limits.max_code_bytes(rvq)


async def handle_restore(r: Request, msg: P.Restore) -> Any:
    """``restore``: the journal's binary frame read, unpacked and applied (``RestoreHistory``),
    then the full history the client now holds."""
    conv, rvq = r.conv, r.hub.engine.layout.rvq
    data = await r.hub.uploads.receive(r.conn, msg.bytes, restore_limit(r))
    voice, records = P.unpack_restore(msg, data, rvq)
    turns = [
        TurnRecord(role, tuple(ids.tolist()), torch.from_numpy(frames), lead)
        for role, lead, ids, frames in records
    ]
    voice_t = None if voice is None else torch.from_numpy(voice)
    r.check_held()
    await conv.session.restore(turns, voice_t, msg.seed, msg.noise, msg.turn_noise)
    await send_history(conv, full=True)
    return P.Result(req=msg.req)
