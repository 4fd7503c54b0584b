"""A turn's way out: its frames to the client as they come, then its summary.

``pump`` runs as the conversation's task while a turn streams (``Conversation.pump``); a
client that leaves mid-turn stops receiving, and the turn is drained so it can end.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.engine.session import TurnStream
from moss_pipecat.server.conversation import Conversation
from moss_pipecat.server.history_feed import send_history
from moss_pipecat.server.metrics import ServerMetrics
from moss_pipecat.server.transport import TransportClosed


async def pump(conv: Conversation, turn: TurnStream, metrics: ServerMetrics) -> None:
    """Forwards a turn's frames as they come; then its summary."""
    conn = conv.conn
    sent = 0
    try:
        async for chunk in turn:
            if conn is None or conn.closed or conv.conn is not conn:
                continue  # the client left: keep draining so the turn can end
            try:
                if chunk.words:  # ahead of its frame: the client attaches them to it
                    await conn.send_message(P.TurnWords.of(chunk))
                data = P.pack_audio(chunk.turn_id, chunk.index, chunk.codes.tolist(), chunk.pcm)
                await conn.send_bytes(data)
                sent += 1
                if conv.turn is turn:  # a newer turn may have started meanwhile
                    conv.frames_sent = sent
                metrics.frames.inc()
            except TransportClosed:
                conn = None
        summary = turn.summary
        await send_history(conv)  # the client's journal holds the turn before its end
        metrics.turns.inc(stop=summary.stop)
        if summary.ttfa_s is not None:
            metrics.ttfa.observe(summary.ttfa_s)
        if conn is not None and conv.conn is conn:
            try:
                await conn.send_message(
                    P.TurnEnded(turn_id=turn.turn_id, summary=P.WireSummary.of(summary))
                )
            except TransportClosed:
                pass
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception(f"conversation {conv.id}: audio pump failed")
    finally:
        if conv.turn is turn:
            conv.turn = None


async def await_pump(conv: Conversation, timeout: float | None) -> None:
    """Lets the turn's pump send what it has left (each send bounded by the write timeout)."""
    task = conv.pump
    if task is not None and not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
    conv.pump = None
