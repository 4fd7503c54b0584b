"""A conversation id is not a credential: resuming a conversation takes its resume secret.

Everyone here holds the shared bearer token; only the client that created a conversation got
its secret (in ``ready``). A hello for the conversation without it, or with a wrong one, is
refused with ``forbidden`` before anything changes: the live connection keeps streaming its
turn, and nothing (snapshot, reset) is done for the refused peer.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ForbiddenError
from moss_pipecat.server import ServerUnavailableError

from .conftest import GREEDY, TOKEN, eventually
from .turns import LONG_TEXT, read_chunks, say, speak
from .wire import raw_hello, refused_hello


@pytest.fixture
async def server(make_tiny_engine, make_server):
    # Paced, no EOS before 60 frames: a turn is still streaming while others knock.
    engine = make_tiny_engine(lookahead_s=0.4, eos_min_frames=60)
    return await make_server(engine, token=TOKEN)


async def test_a_resume_without_the_secret_is_refused_and_the_live_turn_goes_on(server):
    hub = server.hub
    owner = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="owned-1", sampling=GREEDY
    )
    secret = owner.resume_secret
    assert secret and len(secret) >= 32
    conn = hub.conversations["owned-1"].conn
    turn = await speak(owner, LONG_TEXT, 30)
    indices = [chunk.index for chunk in await read_chunks(turn, 3)]

    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for hello in ({}, {"resume_secret": wrong}):
        reply, rest = await refused_hello(server, conversation_id="owned-1", **hello)
        assert (reply["type"], reply["code"], reply["fatal"]) == ("error", "forbidden", True)
        assert "resume_secret" in reply["message"] and secret not in reply["message"]
        assert rest == []
    # The project's client says so at once (no retries: they could not help).
    with pytest.raises(ForbiddenError):
        await RemoteEngine(server.url, token=TOKEN, reconnect_timeout=30).create_session(
            conversation_id="owned-1", resume_secret=wrong
        )
    assert hub.metrics.errors.value(code="forbidden") == 3

    # The owner never noticed: same connection, its turn streams to the end.
    assert hub.conversations["owned-1"].conn is conn and owner._link.alive
    async for chunk in turn:
        indices.append(chunk.index)
    assert indices == list(range(30))
    assert turn.summary.stop == "max_frames" and turn.summary.error is None
    assert owner.reconnects == 0 and owner.resume_secret == secret
    await owner.close()


async def test_snapshot_and_reset_cannot_come_through_a_refused_takeover(server):
    hub = server.hub
    owner = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="owned-2", sampling=GREEDY
    )
    await say(owner, "One.", 3)
    before = await owner.snapshot()
    assert [role for role, _ in before["turns"]] == ["assistant"]

    # Requests sent right behind the hello are never handled.
    pipelined = [{"type": "snapshot", "req": 1}, {"type": "reset", "req": 2}]
    reply, rest = await refused_hello(server, conversation_id="owned-2", after=pipelined)
    assert reply["code"] == "forbidden" and rest == []
    # A conversation whose client is away (a network stall) is no easier to take.
    owner._link.ws.transport.abort()
    conv = hub.conversations["owned-2"]
    await eventually(lambda: conv.conn is None, what="the owner to be detached")
    reply, rest = await refused_hello(server, conversation_id="owned-2", after=pipelined)
    assert reply["code"] == "forbidden" and rest == []

    # The owner comes back with its secret and finds its history as it was.
    after = await owner.snapshot()
    assert owner.resumed and owner.reconnects == 1 and owner.history_lost == 0
    assert after["turns"] == before["turns"] and after["rows"].equal(before["rows"])
    await owner.close()


async def test_with_the_secret_another_client_takes_over(server):
    first = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="owned-3", sampling=GREEDY
    )
    await say(first, "One.", 3)
    second = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="owned-3", resume_secret=first.resume_secret
    )
    assert second.resumed and second.resume_secret == first.resume_secret
    assert [role for role, _ in (await second.snapshot())["turns"]] == ["assistant"]
    await second.reset()
    assert (await second.snapshot())["turns"] == []
    await eventually(lambda: not first._link.alive, what="the first link to be dropped")
    assert "took over" in str(first._link.failure)
    await second.close()
    await first.close()


async def test_secrets_are_per_conversation_and_a_raw_client_gets_one_drawn(server):
    client = RemoteEngine(server.url, token=TOKEN)
    a = await client.create_session(conversation_id="a")
    b = await client.create_session()  # the server picks the id
    assert a.resume_secret != b.resume_secret
    assert server.hub.conversations["a"].secret == a.resume_secret
    assert server.hub.conversations[b.id].secret == b.resume_secret
    # A hello that proposes no secret gets one drawn by the server (random, URL-safe).
    ws = await raw_hello(server, conversation_id="raw-1")
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready" and len(ready["resume_secret"]) >= 43
    assert ready["resume_secret"] == server.hub.conversations["raw-1"].secret
    await ws.close()
    for s in (a, b):
        await s.close()


async def test_a_retried_handshake_whose_ready_was_lost_resumes(server, monkeypatch):
    """The first hello created the conversation but its ``ready`` never arrived: the client's
    retry must still hold the secret (it proposed it), or the conversation would be lost."""
    client = RemoteEngine(server.url, token=TOKEN)
    real = RemoteEngine._connect_once
    attempts = []

    async def lose_the_first_ready(self, session, url):
        link = await real(self, session, url)
        attempts.append(session.resume_secret)
        if len(attempts) == 1:
            await link.close()
            raise ServerUnavailableError("no ready in time")
        return link

    monkeypatch.setattr(RemoteEngine, "_connect_once", lose_the_first_ready)
    session = await client.create_session(conversation_id="lost-ready", sampling=GREEDY)
    assert len(attempts) == 2 and attempts[0] == attempts[1] == session.resume_secret
    assert session.resumed and session.reconnects == 0
    assert session.resume_secret == server.hub.conversations["lost-ready"].secret
    await session.close()


async def test_a_session_keeps_its_secret_when_the_server_lost_the_conversation(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine()
    server = await make_server(engine, idle_expiry_s=0)  # a detached conversation ends at once
    a = await RemoteEngine(server.url).create_session(conversation_id="a")
    secret = a.resume_secret
    a._link.ws.transport.abort()
    await eventually(lambda: "a" not in server.hub.conversations, what="'a' to end")
    await a.reset()  # reconnects: the server makes the conversation anew, with the same secret
    assert not a.resumed and a.history_lost == 0  # it held nothing to lose
    assert a.resume_secret == secret == server.hub.conversations["a"].secret
    await a.close()
