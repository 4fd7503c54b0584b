"""An engine out of frame time refuses a new conversation: the server's capacity refusal (wire
code ``capacity``, subcode ``overloaded``: ``OverloadedError`` on the client, as the local
engine raises), counted by reason, without evicting anyone's idle conversation; the remote
pipecat service turns it into one ErrorFrame that says why. A full engine's refusal stays a
plain ``capacity`` (``CapacityError``)."""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame

from moss_pipecat.client import RemoteEngine
from moss_pipecat.errors import CapacityError, OverloadedError
from moss_pipecat.service.remote import MossRemoteTTSService

from ..cost_tables import DEADLINE_S, write_cost_table
from .conftest import eventually
from .test_remote_service import reply, run


async def test_overload_is_refused_as_capacity_and_never_evicts_an_idle_conversation(
    make_tiny_engine, make_server, tmp_path
):
    table = write_cost_table(tmp_path / "costs.json", decode_s=0.02)  # admits 2
    engine = make_tiny_engine(max_sessions=4, frame_deadline_s=DEADLINE_S, cost_table=table)
    server = await make_server(engine)
    metrics = server.hub.metrics
    client = RemoteEngine(server.url, reconnect_timeout=0.5)
    a = await client.create_session(conversation_id="ov-a")
    b = await client.create_session(conversation_id="ov-b")
    with pytest.raises(CapacityError, match="frame deadline") as info:  # refused, not retried
        await asyncio.wait_for(client.create_session(conversation_id="ov-c"), 5)
    assert type(info.value) is OverloadedError  # the local engine's type
    assert metrics.conversations_refused.value(reason="overloaded") == 1
    assert metrics.errors.value(code="capacity") == 1

    # "ov-a"'s client is gone: evicting it would free a slot, but no frame time (it does not
    # speak), so the refusal stands and "ov-a" stays resumable.
    a._link.ws.transport.abort()
    await eventually(lambda: server.hub.conversations["ov-a"].conn is None, what="detach")
    with pytest.raises(CapacityError, match="frame deadline"):
        await asyncio.wait_for(client.create_session(conversation_id="ov-c"), 5)
    assert sorted(server.hub.conversations) == ["ov-a", "ov-b"]
    assert sorted(engine.session_ids) == ["ov-a", "ov-b"]
    assert metrics.conversations_refused.value(reason="overloaded") == 2
    assert metrics.conversations_refused.value(reason="full") == 0
    body, _ = metrics.render()
    assert b'moss_server_conversations_refused_total{reason="overloaded"} 2.0' in body

    # A conversation that ends frees its share: the next one is admitted.
    await b.close()
    c = await client.create_session(conversation_id="ov-c")
    assert sorted(engine.session_ids) == ["ov-a", "ov-c"]
    await c.close()
    await a.close()


async def test_a_full_engine_still_evicts_and_counts_its_refusals_as_full(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine(max_sessions=1)
    server = await make_server(engine)
    client = RemoteEngine(server.url, reconnect_timeout=0.5)
    a = await client.create_session(conversation_id="full-a")
    with pytest.raises(CapacityError) as info:
        await asyncio.wait_for(client.create_session(conversation_id="full-b"), 5)
    assert type(info.value) is CapacityError  # no free slot: not an overload
    assert server.hub.metrics.conversations_refused.value(reason="full") == 1
    a._link.ws.transport.abort()
    await eventually(lambda: server.hub.conversations["full-a"].conn is None, what="detach")
    b = await client.create_session(conversation_id="full-b")  # evicts the idle "full-a"
    assert engine.session_ids == ["full-b"]
    assert server.hub.metrics.conversations_refused.value(reason="full") == 1
    await b.close()
    await a.close()


async def test_the_remote_service_turns_an_overload_refusal_into_one_error_frame(
    make_tiny_engine, make_server, tmp_path
):
    table = write_cost_table(tmp_path / "costs.json", decode_s=0.1)  # admits no one
    engine = make_tiny_engine(max_sessions=2, frame_deadline_s=DEADLINE_S, cost_table=table)
    server = await make_server(engine)
    tts = MossRemoteTTSService(url=server.url)
    down, up, _ = await run(tts, [*reply("Hello ", "there."), *reply("And ", "again.")])
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1, [f.error for f in errors]
    assert isinstance(errors[0].exception, OverloadedError)
    assert "refused" in errors[0].error and "frame deadline" in errors[0].error
    assert "the engine is overloaded" in errors[0].error  # not "no free conversation slot"
    assert not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert engine.session_ids == []
