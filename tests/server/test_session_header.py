"""The ``x-session-id`` header routes a connection (Ray Serve's consistent hash); the hello names
the conversation. A hello whose conversation is not the header's would be served by a server the
router chose for another id (a replica that does not hold it, which would make it anew beside
the one that does): refused at the handshake with ``bad_message``, counted, nothing changed. No
header is fine (a plain server needs none); the project's client always sends the hello's id."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ProtocolError

from .conftest import GREEDY, TOKEN


async def _hello(
    server, header: str | None, name: str = P.SESSION_HEADER, **hello
) -> tuple[dict, object]:
    """A hello on a raw socket (``header``: its ``x-session-id``, sent as ``name``; None: none):
    the server's reply and the open socket."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if header is not None:
        headers[name] = header
    ws = await connect(server.url, additional_headers=headers, compression=None)
    await ws.send(json.dumps({"type": "hello", **hello}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5)), ws


@pytest.fixture
async def server(make_tiny_engine, make_server):
    return await make_server(make_tiny_engine(eos_min_frames=3), token=TOKEN)


async def test_a_hello_for_another_conversation_than_its_header_is_refused(server):
    hub, engine = server.hub, server.hub.engine
    owner = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="routed-1", sampling=GREEDY
    )
    turn = await owner.start_turn(max_frames=3)
    turn.push_text("Mine.")
    turn.end_text()
    assert (await turn.wait()).audio_frames == 3
    before = await owner.snapshot()
    conn = hub.conversations["routed-1"].conn
    secret = owner.resume_secret

    owners = {"conversation_id": "routed-1", "resume_secret": secret}
    cases = [
        ("routed-1", {"conversation_id": "routed-2"}),  # routed for one, names another
        ("routed-2", owners),  # even its owner's hello: the router chose by "routed-2"
        ("routed-1", {}),  # names none: the server would pick one the header never named
        ("", owners),
        ("routed-2", {**owners, "name": "X_Session_Id"}),  # Ray routes by this spelling too
    ]
    for header, hello in cases:
        reply, ws = await _hello(server, header, **hello)
        assert (reply["type"], reply["code"], reply["fatal"]) == ("error", "bad_message", True)
        assert P.SESSION_HEADER in reply["message"] and secret not in reply["message"]
        assert isinstance(P.parse_server_message(json.dumps(reply)).to_exception(), ProtocolError)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.protocol.close_code == P.CLOSE_PROTOCOL  # (ws.close_code: websockets >= 15)
    assert hub.metrics.misrouted.value() == len(cases)
    assert hub.metrics.errors.value(code="bad_message") == len(cases)

    # Nothing changed: no conversation made, the owner's connection and history as they were.
    assert sorted(hub.conversations) == ["routed-1"] and engine.session_ids == ["routed-1"]
    assert hub.conversations["routed-1"].conn is conn and owner.reconnects == 0
    assert (await owner.snapshot())["rows"].equal(before["rows"])

    # The header naming the hello's conversation, or no header (a plain server's client):
    # served as ever (here, resumed by its owner).
    for header in ("routed-1", None):
        reply, ws = await _hello(server, header, conversation_id="routed-1", resume_secret=secret)
        assert (reply["type"], reply["resumed"]) == ("ready", True)
        await ws.close()
    assert hub.metrics.misrouted.value() == len(cases)
    await owner.close()
