"""A remote conversation through random network partitions longer than the client's
``reconnect_timeout`` holds what a local engine holds (remote == local): the partition comes
during a reply, after it (still playing), or during a back-to-back pair, closing the
connections or leaving them open (the ends find out by their keepalive), and the barge-in
(or the loss: what was played is what was heard) comes while no server answers, so the cut
is the journal's. The server, alive, keeps the conversation; when the network heals the
next call resumes it there, and the client makes its cuts again first. After every step the
server's rows equal the local engine's, and no history is lost or restored."""

from __future__ import annotations

import os
import random

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ServerUnavailableError

from .conftest import TOKEN
from .proxies import SeveringProxy
from .random_calls import (
    RULES,
    SAMPLED,
    assert_the_journal_holds_the_servers,
    reply_text,
    seed_step,
    user_step,
)

STEPS = ("speak", "cut", "cut", "two", "user", "seed")
SEEDS = [int(s) for s in os.environ.get("PARTITION_SEEDS", "0,1").split(",")]


async def _read(turn, stop: int | None, proxy: SeveringProxy | None, sever_at: int | None):
    """The reply's frames until ``stop`` (None: its end) or its connection is lost; the
    network is cut once ``sever_at`` frames came (0: before any)."""
    frames, lost = [], False
    if proxy is not None and sever_at == 0:
        proxy.sever()
    try:
        async for chunk in turn:
            frames.append(chunk.codes)
            if proxy is not None and len(frames) == sever_at:
                proxy.sever()
            if len(frames) == stop:
                break
    except ServerUnavailableError:
        lost = True
    return frames, lost


async def _local_reply(local, text: str, max_frames: int, heard: int | None):
    """The local twin of a reply, read to ``heard`` (None: whole) and cut there."""
    turn = await local.start_turn(max_frames=max_frames)
    turn.push_text(text)
    turn.end_text()
    mine, _ = await _read(turn, heard or None, None, None)
    return mine, (None if heard is None else await local.interrupt(heard))


async def _reply(rnd, remote, local, proxy, step: str) -> None:
    text, max_frames = reply_text(rnd), rnd.randint(2, 12)
    stop = rnd.randint(1, max_frames) if step == "cut" else None
    sever_at = rnd.choice([None, rnd.randint(0, max_frames)])
    turn = await remote.start_turn(max_frames=max_frames)
    turn.push_text(text)
    turn.end_text()
    got, lost = await _read(turn, stop, proxy, sever_at)
    if sever_at is not None:
        proxy.sever()  # after it all came, if not before: it still plays
    heard = cut = None
    if step == "cut" or lost:  # a barge-in, or the loss (all that came was played)
        heard = rnd.randint(0, len(got)) if step == "cut" else len(got)
        cut = await remote.interrupt(heard, turn_id=turn.turn_id)
    proxy.heal()
    mine, my_cut = await _local_reply(local, text, max_frames, heard)
    n = len(got) if heard is None else heard
    for a, b in zip(got[:n], mine[:n], strict=True):
        assert torch.equal(torch.as_tensor(a), b)
    if cut is not None and my_cut is not None:
        assert (cut.stop, cut.heard_frames) == (my_cut.stop, my_cut.heard_frames)


async def _back_to_back(rnd, remote, local, proxy) -> None:
    """A reply, the next one opened behind it while the first plays, the network cut (or
    not), then the barge-in: the second cut to nothing, then the first to what was heard."""
    text, max_frames = reply_text(rnd), rnd.randint(2, 12)
    first = await remote.start_turn(max_frames=max_frames)
    first.push_text(text)
    first.end_text()
    got, _ = await _read(first, None, None, None)
    second = await remote.start_turn(max_frames=rnd.randint(2, 12))
    second.push_text("And then.")
    second.end_text()
    sever_at = rnd.choice([None, rnd.randint(0, 3)])
    await _read(second, rnd.randint(1, 3), proxy, sever_at)
    if sever_at is not None:
        proxy.sever()
    heard = rnd.randint(0, len(got))
    assert (await remote.interrupt(0, turn_id=second.turn_id)).heard_frames == 0
    await remote.interrupt(heard, turn_id=first.turn_id)
    proxy.heal()
    mine, _ = await _local_reply(local, text, max_frames, heard)
    for a, b in zip(got[:heard], mine[:heard], strict=True):
        assert torch.equal(torch.as_tensor(a), b)


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_call_through_random_partitions_holds_what_a_local_engine_holds(
    make_tiny_engine, make_server, realtime_meta, seed
):
    rnd = random.Random(seed)
    server = await make_server(make_tiny_engine(**RULES), token=TOKEN, idle_expiry_s=60)
    proxy = SeveringProxy(server.port)
    # A silent partition is found by the keepalive (its close reaches the server on healing).
    keepalive = {"ping_interval": 0.2, "ping_timeout": 0.3}
    client = RemoteEngine(await proxy.start(), token=TOKEN, reconnect_timeout=0.3, **keepalive)
    remote = await client.create_session(sampling=SAMPLED, seed=1, conversation_id="partitions")
    local = make_tiny_engine(**RULES).create_session(sampling=SAMPLED, seed=1)
    done = []
    try:
        while len(done) < 12 or proxy.severed < 4:  # 12 steps, and on until 4 partitions
            assert len(done) < 60, "hardly a partition: the test exercises nothing"
            step = rnd.choice(STEPS)
            proxy.silent = rnd.random() < 0.5  # a partition the ends find out by themselves
            if step in ("speak", "cut"):
                await _reply(rnd, remote, local, proxy, step)
            elif step == "two":
                await _back_to_back(rnd, remote, local, proxy)
            elif step == "user":
                gen = torch.Generator().manual_seed(rnd.randrange(10**6))
                await user_step(rnd, gen, remote, local, realtime_meta)
            else:
                await seed_step(rnd, remote, local)
            done.append(step)
            theirs = await remote.snapshot()
            assert torch.equal(theirs["rows"], (await local.snapshot())["rows"]), done
            await assert_the_journal_holds_the_servers(remote, server)
        assert remote.resumed and remote.restored == 0 and remote.history_lost == 0
        await remote.close()
    finally:
        await client.aclose()
        await proxy.stop()
