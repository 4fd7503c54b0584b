"""A remote conversation through random connection drops holds what a local engine holds
(remote == local): random replies, barge-ins, user turns, voices, resets and seeds, through a
proxy that cuts each connection after a random number of bytes, so drops fall in the middle of
requests, replies, handshakes and resumes. The server keeps the conversation (it is the
client's link that fails), and the client resends what was lost with its connection (a cut
naming its turn, as the service's do). After every step the server's rows equal the local
engine's. Found: a turn's start lost with a takeover left an undriven turn open; an unnamed cut
of a reply its connection had taken away cut the reply before it; with back-to-back replies,
a cut of the first kept its noise past the heard, and one sent again unnamed cut the reply
before them."""

from __future__ import annotations

import os
import random

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ServerUnavailableError

from ..engine.helpers import random_frames
from .conftest import TOKEN
from .proxies import DroppingProxy
from .random_calls import (
    RULES,
    SAMPLED,
    assert_the_journal_holds_the_servers,
    reply_text,
    seed_step,
    user_step,
)

STEPS = ("speak", "speak", "cut", "user", "user", "voice", "reset", "seed", "speak_cut", "two")
SEEDS = [int(s) for s in os.environ.get("BLIP_SEEDS", "0,1,2").split(",")]


async def _say(session, text: str, max_frames: int, stop: int | None):
    """A reply, read until ``stop`` frames (None: its end) or its connection is lost."""
    turn = await session.start_turn(max_frames=max_frames)
    turn.push_text(text)
    turn.end_text()
    frames = []
    try:
        async for chunk in turn:
            frames.append(chunk.codes)
            if len(frames) == stop:
                break
    except ServerUnavailableError:
        return turn, frames, True
    return turn, frames, False


async def _reply(rnd, remote, local, step: str) -> None:
    text = reply_text(rnd)
    max_frames = rnd.randint(2, 12)
    stop = None if step == "speak" else rnd.randint(1, max_frames)
    turn, got, lost = await _say(remote, text, max_frames, stop)
    heard = cut = None
    if step != "speak" or lost:  # a barge-in (or a reply its connection cut: what was heard)
        heard = rnd.randint(0, len(got))
        cut = await remote.interrupt(heard, turn_id=turn.turn_id)
    mine = (await _say(local, text, max_frames, heard or None))[1]
    my_cut = None if heard is None else await local.interrupt(heard)
    n = len(got) if heard is None else heard
    for a, b in zip(got[:n], mine[:n], strict=True):
        assert torch.equal(torch.as_tensor(a), b)
    if cut is not None and my_cut is not None:
        assert (cut.stop, cut.heard_frames) == (my_cut.stop, my_cut.heard_frames)


async def _back_to_back(rnd, remote, local) -> None:
    """A reply, the next one opened behind it, then a barge-in while the first plays: as the
    service cuts them, the second to nothing, then the first to what was heard."""
    text = reply_text(rnd)
    max_frames = rnd.randint(2, 12)
    first, got, lost = await _say(remote, text, max_frames, None)
    second = (await _say(remote, "And then.", rnd.randint(2, 12), rnd.randint(1, 3)))[0]
    heard = rnd.randint(0, len(got))
    assert (await remote.interrupt(0, turn_id=second.turn_id)).heard_frames == 0
    cut = await remote.interrupt(heard, turn_id=first.turn_id)
    mine = (await _say(local, text, max_frames, heard or None))[1]
    my_cut = await local.interrupt(heard)
    for a, b in zip(got[:heard], mine[:heard], strict=True):
        assert torch.equal(torch.as_tensor(a), b)
    if not lost:  # (lost: its connection's departure may have taken it away already)
        assert (cut is None) == (my_cut is None)  # None: all of it was heard, nothing to cut
    if cut is not None and my_cut is not None:
        assert (cut.stop, cut.heard_frames) == (my_cut.stop, my_cut.heard_frames)


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_call_through_random_connection_drops_holds_what_a_local_engine_holds(
    make_tiny_engine, make_server, realtime_meta, seed
):
    rnd = random.Random(seed)
    server = await make_server(make_tiny_engine(**RULES), token=TOKEN, idle_expiry_s=60)
    proxy = DroppingProxy(server.port, rnd, mean=20_000)
    url = f"ws://127.0.0.1:{await proxy.start()}/v1/ws"
    client = RemoteEngine(url, token=TOKEN, reconnect_timeout=20)
    remote = await client.create_session(sampling=SAMPLED, seed=1, conversation_id="blips")
    local = make_tiny_engine(**RULES).create_session(sampling=SAMPLED, seed=1)
    done = []
    while len(done) < 25 or proxy.drops < 3:  # 25 steps, and on until 3 drops came
        assert len(done) < 100, "the proxy hardly drops: the test exercises nothing"
        step = rnd.choice(STEPS)
        gen = torch.Generator().manual_seed(rnd.randrange(10**6))
        if step in ("speak", "cut", "speak_cut"):
            await _reply(rnd, remote, local, step)
        elif step == "two":
            await _back_to_back(rnd, remote, local)
        elif step == "user":
            await user_step(rnd, gen, remote, local, realtime_meta)
        elif step == "voice":
            voice = random_frames(gen, rnd.randint(1, 6), realtime_meta)
            voice = None if rnd.random() < 0.2 else voice
            await remote.set_voice(voice)
            await local.set_voice(voice)
        elif step == "reset":
            await remote.reset()
            await local.reset()
        else:
            await seed_step(rnd, remote, local)
        done.append(step)
        proxy.paused = True  # the comparison's own snapshot is not a fault
        theirs = await remote.snapshot()
        proxy.paused = False
        assert torch.equal(theirs["rows"], (await local.snapshot())["rows"]), done
        await assert_the_journal_holds_the_servers(remote, server)
    assert proxy.drops >= 3 and remote.reconnects >= 3 and remote.history_lost == 0
    print(
        "RESUMES",
        remote.reconnects,
        "copies",
        remote.journal.copies,
        "deltas",
        remote.journal.deltas,
    )
    await client.aclose()
