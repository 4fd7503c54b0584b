"""A long prefill (a restored long call, a long user turn) is not a stuck server: while a turn
sends no frame its pump tells the client how far the prefill got (``turn.progress``), which
keeps the client's ``frame_timeout`` from failing it; a stuck engine advances nothing, so it
sends none, and the client still fails the turn."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.server import ServerUnavailableError

from .conftest import GREEDY, eventually

FRAME_TIMEOUT = 1.0  # the client's
INTERVAL = 0.2  # the server's progress_interval_s
USER_FRAMES = 600  # a user turn the next turn's prefill feeds, a few rows per tick


async def _long_prefill(make_tiny_engine, make_server, realtime_meta, cid: str):
    """A session whose next turn prefills a long user turn a row per tick; returns the
    engine, the client's turn (text ended, read by a task) and the server's stream of it."""
    engine = make_tiny_engine(prefill_chunk=1, eos_min_frames=3)  # 3 frames, wherever EOS is
    server = await make_server(engine, progress_interval_s=INTERVAL)
    # A first turn warms the engine (its first calls are slow) under the default timeout.
    warm = await RemoteEngine(server.url).create_session(conversation_id="warm", sampling=GREEDY)
    turn = await warm.start_turn(max_frames=2)
    turn.push_text("Hi.")
    turn.end_text()
    await turn.wait()
    await warm.close()
    client = RemoteEngine(server.url, frame_timeout=FRAME_TIMEOUT)
    session = await client.create_session(conversation_id=cid, sampling=GREEDY)
    layout = engine.layout
    shape = (USER_FRAMES, layout.rvq)
    frames = torch.randint(0, layout.audio_pad, shape, generator=torch.Generator().manual_seed(3))
    lo = realtime_meta["text_ids_drawn_from"][0]
    await session.add_user_turn(list(range(lo, lo + 4)), frames)
    turn = await session.start_turn(max_frames=3)
    stream = server.hub.conversations[cid].turn  # the server's side of the turn
    turn.push_text("Hello.")
    turn.end_text()
    return engine, turn, stream, asyncio.create_task(turn.wait())


async def _hold(engine, stream, gate: threading.Event) -> tuple[int, int]:
    """Stops the engine thread between ticks until ``gate`` is set; returns the prefill's
    progress there (nothing advances it while held)."""
    at: list[tuple[int, int]] = []

    def hold() -> None:
        at.append(stream.prefilled)
        gate.wait(30)

    engine.call(hold)
    await eventually(lambda: at, what="the engine to stop")
    return at[0]


async def test_a_prefill_longer_than_the_frame_timeout_completes_with_progress(
    make_tiny_engine, make_server, realtime_meta
):
    engine, turn, stream, reading = await _long_prefill(
        make_tiny_engine, make_server, realtime_meta, "long-prefill"
    )
    # The keepalive sends at most one progress per interval: hearing this many distinct ones
    # means the prefill ran longer than the client's frame timeout.
    wanted = math.ceil(FRAME_TIMEOUT / INTERVAL) + 2
    heard: list[tuple[int, int]] = []
    await eventually(lambda: stream.prefilled[0] > 0, what="the prefill to start")
    while len(heard) < wanted:
        gate = threading.Event()
        try:
            done, total = await _hold(engine, stream, gate)
            assert 0 < done < total, "the prefill ended too soon for this test"
            # Held at ``done``: the client hears it (no frame came, nothing else would tell).
            await eventually(lambda d=done: turn.prefilled[0] == d, what="progress")
            assert turn.prefilled == (done, total) and not reading.done()
            if not heard or heard[-1][0] < done:
                heard.append(turn.prefilled)
        finally:
            gate.set()
        await eventually(lambda d=done: stream.prefilled[0] > d, what="the prefill to go on")
    summary = await asyncio.wait_for(reading, 60)
    assert summary.stop == "max_frames" and summary.audio_frames == 3
    totals = {t for _, t in heard}
    assert len(totals) == 1 and totals.pop() > USER_FRAMES  # one prefill: the user turn's rows
    assert [d for d, _ in heard] == sorted({d for d, _ in heard})  # strictly advancing
    assert stream.prefilled[0] == stream.prefilled[1]  # the whole prefill was fed


async def test_a_stuck_prefill_sends_no_progress_and_fails_the_turn(
    make_tiny_engine, make_server, realtime_meta
):
    engine, turn, stream, reading = await _long_prefill(
        make_tiny_engine, make_server, realtime_meta, "stuck-prefill"
    )
    gate = threading.Event()
    try:
        await eventually(lambda: stream.prefilled[0] > 0, what="the prefill to start")
        done, _ = await _hold(engine, stream, gate)  # stuck mid-prefill (pings go on)
        with pytest.raises(ServerUnavailableError, match="no audio"):
            await asyncio.wait_for(reading, 15)
        assert turn.prefilled[0] <= done  # nothing claimed progress past where it stuck
    finally:
        gate.set()
