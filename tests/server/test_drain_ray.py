"""Calls move between the replicas of a real local Ray Serve app (tiny CPU replicas): from a
replica that is killed, and from replicas that Ray stops for a redeploy (they drain:
``goaway``, turns in flight end, the calls go on on the new replica). Slow (a Ray cluster and
replica starts): one app for both Ray modules (``ray_moss_app``). Opt-in by installation,
as ``test_ray``."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ServerUnavailableError

from .conftest import GREEDY, TOKEN, eventually

LONG_TEXT = "This is a rather long sentence that keeps the model talking for a while. " * 3


async def _calls_on_both_replicas(client, prefix: str):
    """Two conversations on different replicas (the hash ring places them by id; a replica
    that just started joins the proxy's ring a little after Ray calls it running)."""
    first = await client.create_session(conversation_id=f"{prefix}-0", sampling=GREEDY)
    deadline = asyncio.get_running_loop().time() + 180  # a hang guard
    k = 0
    while asyncio.get_running_loop().time() < deadline:
        k += 1
        other = await client.create_session(conversation_id=f"{prefix}-{k}", sampling=GREEDY)
        if other.server_id != first.server_id:
            return first, other
        await other.close()
    pytest.fail(f"{k} conversation ids all went to one replica")


async def _say(session, max_frames: int, text: str = "Hello there.") -> int:
    turn = await session.start_turn(max_frames=max_frames)
    turn.push_text(text)
    turn.end_text()
    return (await turn.wait()).audio_frames


async def _open_turn(session, max_frames: int):
    turn = await session.start_turn(max_frames=max_frames)
    turn.push_text(LONG_TEXT)
    turn.end_text()
    chunks = []
    async for chunk in turn:
        chunks.append(chunk)
        if len(chunks) == 2:
            break
    return turn, chunks


async def test_a_killed_replica_s_call_goes_on_on_the_other_replica(ray_moss_app):
    await ray_moss_app.ensure(2)
    client = RemoteEngine(ray_moss_app.url, TOKEN, reconnect_timeout=90, request_timeout=60)
    victim, witness = await _calls_on_both_replicas(client, "kill")
    assert await _say(victim, 4) == 4
    before = await victim.snapshot()
    killed = victim.server_id
    created = victim.resume_ticket.split(".")[1]  # when the call made its conversation
    turn, _ = await _open_turn(victim, 40)
    os.kill(int(killed.split(":")[1]), signal.SIGKILL)  # server_id: host:pid:nonce
    # Ray's controller sees the loss (its replacement starts: tens of seconds to be running),
    # so a later count of running replicas never counts the dead one.
    await eventually(lambda: ray_moss_app.running() < 2, 60, "Ray to see the killed replica")
    with pytest.raises(ServerUnavailableError):  # the turn in flight at the loss is lost
        await asyncio.wait_for(turn.wait(), 60)

    # The next call reconnects to another replica, which gets the history back from the
    # client's journal: the first turn, row for row (the turn cut by the kill is not in it).
    after = await victim.snapshot()
    assert victim.server_id != killed and victim.reconnects == 1
    assert (victim.restored, victim.history_lost) == (1, 0)
    assert torch.equal(after["rows"], before["rows"])
    # The replicas share the app's resume key: the other one honoured the lost one's ticket
    # (the conversation keeps its first creation time, its claim on the id).
    assert victim.resume_ticket.split(".")[1] == created
    assert await _say(victim, 4, "Still here.") == 4
    # The other replica's call never noticed.
    assert await _say(witness, 4) == 4 and witness.reconnects == 0
    await client.aclose()


async def test_a_redeploy_drains_the_old_replicas_calls_to_the_new_one(ray_moss_app):
    await ray_moss_app.ensure(2)  # the kill test's lost replica is back (Ray replaces it)
    client = RemoteEngine(ray_moss_app.url, TOKEN, reconnect_timeout=90, request_timeout=60)
    calls = await _calls_on_both_replicas(client, "deploy")
    old = {s.server_id for s in calls}
    live = [await _open_turn(s, 30) for s in calls]
    # A new version of the app (each ``serve.run`` of it is one) with one replica: Ray starts
    # it, then stops both old replicas, which drain.
    redeploy = asyncio.create_task(asyncio.to_thread(ray_moss_app.deploy, 1))
    await eventually(lambda: all(s._link.moved for s in calls), 180, "both replicas' goaway")
    # Both turns in flight end whole on their draining replicas.
    for turn, chunks in live:
        chunks += [c async for c in turn]
        assert turn.summary.stop == "max_frames" and turn.summary.error is None
        assert len(chunks) == 30
    await redeploy
    for s in calls:  # the calls go on, on the new replica, with their history
        assert await _say(s, 4, "After the deploy.") == 4
        assert s.server_id not in old and (s.moves, s.reconnects) == (1, 1)
        assert (s.restored, s.history_lost) == (1, 0)
        snap = await s.snapshot()
        assert [r for r, _ in snap["turns"]] == ["assistant", "assistant"]
    assert calls[0].server_id == calls[1].server_id
    await eventually(lambda: ray_moss_app.running() == 1, 120, "the old replicas to go")
    await client.aclose()
