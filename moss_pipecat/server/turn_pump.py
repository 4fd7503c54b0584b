"""A turn's way out: its frames to the client as they come, then its summary.

``pump`` runs as the conversation's task while a turn streams (``Conversation.pump``); a
client that leaves mid-turn stops receiving, and the turn is drained so it can end.
``cut_to_sent`` ends a turn at the frames its client received (a drain's deadline).
"""

from __future__ import annotations

import asyncio

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.engine.session import TurnStream
from moss_pipecat.errors import MossError
from moss_pipecat.server.conversation import Conversation
from moss_pipecat.server.history_feed import send_history
from moss_pipecat.server.metrics import ServerMetrics
from moss_pipecat.server.transport import TransportClosed


async def pump(
    conv: Conversation, turn: TurnStream, metrics: ServerMetrics, progress_s: float
) -> None:
    """Forwards a turn's frames as they come; then its summary. Until its first frame, a
    ``turn.progress`` every ``progress_s`` seconds in which its prefill advanced."""
    conn = conv.conn
    sent = 0
    keepalive = asyncio.get_running_loop().create_task(_keepalive(conv, turn, progress_s))
    try:
        async for chunk in turn:
            async with conv.out:
                keepalive.cancel()  # under ``out``: never mid-send; a frame is a sign of life
                if conv.held is turn or conn is None or conn.closed or conv.conn is not conn:
                    continue  # cut, or the client left: keep draining so the turn can end
                try:
                    if P.TurnWords.wanted(chunk):  # ahead of its frame, which it goes with
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
        if conv.held is turn and conv.held_cut is not None:
            # What the engine kept is the cut's: the client learns that one.
            summary = await conv.held_cut or summary
        await send_history(conv)  # the client's journal holds the turn before its end
        metrics.turns.inc(stop=summary.stop)
        if summary.ttfa_s is not None:
            metrics.ttfa.observe(summary.ttfa_s)
        async with conv.out:
            keepalive.cancel()
            if conn is not None and conv.conn is conn:
                msg = P.TurnEnded(turn_id=turn.turn_id, summary=P.WireSummary.of(summary))
                try:
                    await conn.send_message(msg)
                except TransportClosed:
                    pass
            if conv.turn is turn:
                conv.turn = None  # under ``out``: a cut finds no turn once its end went out
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception(f"conversation {conv.id}: audio pump failed")
    finally:
        keepalive.cancel()
        if conv.turn is turn:
            conv.turn = None


async def _keepalive(conv: Conversation, turn: TurnStream, every: float) -> None:
    """Tells the client the turn's prefill is moving: each ``every`` seconds in which it fed
    rows, a ``turn.progress``. A stuck engine feeds none, so its client's frame timeout still
    fails the turn; a keepalive, not a synchronization."""
    conn, told = conv.conn, 0
    while conn is not None:
        await asyncio.sleep(every)
        done, total = turn.prefilled  # advanced by the engine thread
        if done <= told:
            continue
        told = done
        msg = P.TurnProgress(turn_id=turn.turn_id, rows_done=done, rows_total=total)
        async with conv.out:  # held only to send, as for a frame
            if conv.held is turn or conn.closed or conv.conn is not conn:
                return
            try:
                await conn.send_message(msg)
            except TransportClosed:
                return


async def cut_to_sent(conv: Conversation) -> None:
    """Ends the conversation's turn in flight at the frames its client received: the pump
    sends no more of its frames, the engine keeps exactly those (``interrupt``), and the
    pump's ``turn.end`` tells the client that cut. Nothing to do once the turn's end went
    out."""
    async with conv.lock:  # the engine calls of attach/detach wait (one cut at a time)
        async with conv.out:
            turn = conv.turn
            if turn is None:
                return
            done: asyncio.Future = asyncio.get_running_loop().create_future()
            conv.held, conv.held_cut = turn, done
            heard = conv.frames_sent
        cut = None
        try:
            cut = await conv.session.interrupt(heard)  # None: it had ended, every frame sent
        except MossError as e:
            logger.warning(f"conversation {conv.id}: cut at the drain deadline failed: {e}")
        finally:
            done.set_result(cut)


async def await_pump(conv: Conversation, timeout: float | None) -> None:
    """Lets the turn's pump send what it has left (each send bounded by the write timeout)."""
    task = conv.pump
    if task is not None and not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
    conv.pump = None
