"""A cut whose connection is lost again and again before its reply (the server answers; no
connection lives long enough): it is sent again on each new connection, as a lost connection
is retried, until ``reconnect_timeout``. Before, it gave up after three tries and raised: the
history kept the whole reply while the service said what was heard (found by the random
drops test, seed 25: three connections cut within 7 ms)."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.model import SamplingParams
from moss_pipecat.server import message_handlers as handlers

from .conftest import TOKEN
from .random_calls import assert_the_journal_holds_the_servers
from .turns import LONG_TEXT, read_chunks, same_next_reply, say, speak

LOST = 5  # more than the three tries a cut had


@pytest.mark.parametrize("made", [False, True], ids=["never-made", "made-reply-lost"])
async def test_a_cut_lost_with_connection_after_connection_is_made_once(
    make_tiny_engine, make_server, monkeypatch, made
):
    """The server drops the first ``LOST`` connections that bring the cut, having made it or
    not (then its reply is what is lost, and the cut sent again names its turn, so it answers
    as the first did). The cut's summary, the rows and the next seeded reply are a local
    engine's after the same cut; the journal holds the server's copy."""
    sampled, rules = SamplingParams(), {"eos_min_frames": 60}
    server = await make_server(make_tiny_engine(**rules), token=TOKEN, idle_expiry_s=60)
    client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=10)
    session = await client.create_session(conversation_id="tries", sampling=sampled, seed=5)
    local = make_tiny_engine(**rules).create_session(sampling=sampled, seed=5)
    real, dropped = handlers.HANDLERS[P.Interrupt], []

    async def dropping(r, msg):
        if len(dropped) == LOST:
            return await real(r, msg)
        dropped.append(msg.turn_id)
        if made:
            await real(r, msg)
        r.conn.abort()
        return handlers.FATAL

    for s in (session, local):
        await say(s, "Hello there.", 3)
    turn = await speak(session, LONG_TEXT, 30)
    mine = await speak(local, LONG_TEXT, 30)
    for t in (turn, mine):
        await read_chunks(t, 6)
    monkeypatch.setitem(handlers.HANDLERS, P.Interrupt, dropping)
    cut = await session.interrupt(4, turn_id=turn.turn_id)
    my_cut = await local.interrupt(4)
    assert dropped == [turn.turn_id] * LOST
    assert (cut.stop, cut.heard_frames, cut.spoken_text) == (
        my_cut.stop,
        my_cut.heard_frames,
        my_cut.spoken_text,
    )
    assert session.resumed and session.restored == 0 and session.reconnects == LOST
    assert torch.equal((await session.snapshot())["rows"], (await local.snapshot())["rows"])
    await assert_the_journal_holds_the_servers(session, server)
    assert await same_next_reply(session, local)
    await session.close()
    await client.aclose()


async def test_tries_are_sends_at_once_then_the_reconnect_backoff_until_its_timeout(monkeypatch):
    """``SENDS`` tries at once; then each after the engine's backoff (doubling from
    ``backoff_initial`` to ``backoff_max``) while ``reconnect_timeout`` since the first try
    allows; none past it (on a clock of its own here)."""
    from moss_pipecat.client import tries as tries_module
    from moss_pipecat.client.tries import SENDS, Tries

    now, slept = [0.0], []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(tries_module, "monotonic", lambda: now[0])
    monkeypatch.setattr(tries_module, "sleep", sleep)
    engine = RemoteEngine("ws://127.0.0.1:1", reconnect_timeout=10, backoff_initial=0.05)
    tries = Tries(engine)
    while await tries.again():
        pass
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]  # 9.15 s; 2 more: past 10
    assert tries.sent == SENDS + len(slept)
    none = Tries(RemoteEngine("ws://127.0.0.1:1", reconnect_timeout=0))
    assert [await none.again() for _ in range(SENDS)] == [True] * (SENDS - 1) + [False]
