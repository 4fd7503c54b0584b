"""Bad input gets an error reply (or a refused handshake), never a crash; the server stays up."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from moss_pipecat.client import RemoteEngine
from moss_pipecat.errors import InvalidInputError, TurnStateError
from moss_pipecat.model import SamplingParams
from moss_pipecat.protocol import unpack_audio
from moss_pipecat.server import ServerUnavailableError, UnauthorizedError

from .conftest import GREEDY, TOKEN, eventually, free_port
from .rawws import RawWebsocket


async def _ws(server, token: str | None = TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(server.url, additional_headers=headers, compression=None, **kw)


async def _recv_json(ws, timeout: float = 5.0) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


async def _hello(ws, **fields) -> dict:
    await ws.send(json.dumps({"type": "hello", **fields}))
    return await _recv_json(ws)


async def _still_serves(server) -> None:
    client = RemoteEngine(server.url, token=TOKEN)
    session = await client.create_session(sampling=GREEDY)
    turn = await session.start_turn(max_frames=3)
    turn.push_text("still here")
    turn.end_text()
    assert (await turn.wait()).audio_frames == 3
    await session.close()


@pytest.fixture
async def server(make_tiny_engine, make_server):
    # eos_min_frames: "still serves" turns speak their 3 frames, wherever EOS would be.
    engine = make_tiny_engine(eos_min_frames=3)
    return await make_server(engine, token=TOKEN, hello_timeout_s=0.5)


async def test_malformed_and_unknown_messages_get_error_replies(server):
    ws = await _ws(server)
    ready = await _hello(ws)
    assert ready["type"] == "ready" and not ready["resumed"]
    cases = [
        ("{not json", "bad_message", None),
        ("[1, 2]", "bad_message", None),
        ('{"type": "launch_missiles", "req": 4}', "unknown_type", 4),
        ('{"req": 5}', "unknown_type", 5),
        ('{"type": "interrupt", "req": 6, "heard_frames": -1}', "bad_message", 6),
        ('{"type": "interrupt", "req": 7}', "bad_message", 7),
        ('{"type": "reset", "req": 8, "extra": 1}', "bad_message", 8),
        ('{"type": "turn.start", "req": "x"}', "bad_message", None),
        ('{"type": "settings", "req": 9, "sampling": {"temperature": 0}}', "invalid_input", 9),
        ('{"type": "hello", "req": 10}', "bad_message", 10),
        ('{"type": "turn.start", "req": 11, "max_frames": 0}', "bad_message", 11),
        ("[" * 100000 + "]" * 100000, "too_large", None),
        ('{"type": "reset", "req": 12, "pad": "' + "x" * 70000 + '"}', "too_large", None),
    ]
    for raw, code, req in cases:
        await ws.send(raw)
        reply = await _recv_json(ws)
        assert reply["type"] == "error" and reply["code"] == code, (raw[:60], reply)
        assert reply.get("req") == req and not reply["fatal"]
    await ws.send(b"\x00\x01binary out of nowhere")
    assert (await _recv_json(ws))["code"] == "bad_message"
    # The connection is still good.
    await ws.send('{"type": "reset", "req": 13}')
    assert await _recv_json(ws) == {"type": "result", "req": 13}
    await ws.close()
    assert server.hub.metrics.errors.value(code="bad_message") >= 7
    await _still_serves(server)


async def test_uploads_are_checked(server, realtime_meta):
    frame = 2 * realtime_meta["audio"]["channels"]  # bytes of one frame of uint16 codes
    ws = await _ws(server)
    await _hello(ws)

    async def upload(header: dict, payload) -> dict:
        await ws.send(json.dumps(header))
        if payload is not None:
            await ws.send(payload)
        return await _recv_json(ws)

    base = {"type": "user_turn", "req": 1, "text": "hi", "format": "pcm16", "sample_rate": 16000}
    # Announced size differs from the frame that follows.
    r = await upload({**base, "bytes": 100}, b"\x00" * 50)
    assert r["code"] == "bad_message" and r["req"] == 1
    # A request instead of the binary frame: the upload is refused, the request is served (a
    # header without its data never swallows the message after it).
    for header in (
        {**base, "bytes": 100},
        {"type": "voice", "req": 1, "format": "codes", "bytes": frame},
        {"type": "restore", "req": 1, "turns": 0, "bytes": 0},
    ):
        r = await upload(header, '{"type": "reset", "req": 2}')
        assert (r["code"], r["req"]) == ("bad_message", 1), r
        assert "did not follow its header" in r["message"], r
        assert await _recv_json(ws) == {"type": "result", "req": 2}, header
    # Longer than max_audio_seconds (60 s at 16 kHz = 1.92 MB; the frame cap lets it through).
    n = 16000 * 2 * 61
    r = await upload({**base, "bytes": n}, b"\x00" * n)
    assert r["code"] == "invalid_input" and "longer" in r["message"]
    # Sample rate out of range, odd byte count, shorter than a frame.
    r = await upload({**base, "sample_rate": 100, "bytes": 3200}, b"\x00" * 3200)
    assert r["code"] == "invalid_input"
    r = await upload({**base, "bytes": 3201}, b"\x00" * 3201)
    assert r["code"] == "bad_message"
    r = await upload({**base, "bytes": 200}, b"\x00" * 200)
    assert r["code"] == "invalid_input" and "shorter" in r["message"]
    # Codes that are not whole frames / out of range; neither or both of text and ids.
    codes = {"type": "user_turn", "req": 3, "text_ids": [1], "format": "codes"}
    if frame > 2:  # (with one codebook every even byte count is whole frames)
        r = await upload({**codes, "bytes": frame - 2}, b"\x00" * (frame - 2))
        assert r["code"] == "invalid_input"
    r = await upload({**codes, "bytes": frame}, b"\xff" * frame)
    assert r["code"] == "invalid_input"
    r = await upload({**codes, "text": "x", "bytes": frame}, b"\x00" * frame)
    assert r["code"] == "invalid_input"
    # A user turn while the bot is speaking is a turn-state error, as in the engine.
    await ws.send(json.dumps({"type": "turn.start", "req": 4}))
    started = await _recv_json(ws)
    r = await upload({**codes, "req": 5, "bytes": frame}, b"\x00" * frame)
    assert r["code"] == "turn_state" and r["req"] == 5
    await ws.send(json.dumps({"type": "turn.start", "req": 6}))
    assert (await _recv_json(ws))["code"] == "turn_state"
    await ws.send(json.dumps({"type": "interrupt", "req": 7, "heard_frames": 0}))
    replies = {m["type"]: m for m in [await _recv_json(ws), await _recv_json(ws)]}
    assert replies["result"]["summary"]["stop"] == "interrupted"
    assert replies["turn.end"]["turn_id"] == started["turn_id"]
    await ws.close()
    await _still_serves(server)


async def test_frames_over_the_hard_cap_close_only_that_connection(server, caplog):
    errors = server.hub.metrics.errors
    ws = await _ws(server, max_size=None)
    await _hello(ws)
    await ws.send(b"\x00" * (server.config.limits.max_frame_bytes + 1))
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd.code == 1009
    # Text that is not UTF-8 is refused by the websocket layer too (1007).

    def not_utf8() -> tuple[dict, int, bytes]:  # a blocking socket: off the server's loop
        raw = RawWebsocket(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
        raw.send_json({"type": "hello"})
        ready = json.loads(raw.recv()[1])
        raw.sock.sendall(RawWebsocket.frame(b'{"type": "reset", "req": 1, "x": "\xff"}'))
        opcode, payload = raw.recv()
        raw.sock.close()
        return ready, opcode, payload

    ready, opcode, payload = await asyncio.to_thread(not_utf8)
    assert ready["type"] == "ready"
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1007
    # uvicorn logged it before it closed: one warning line, not an error with a traceback.
    logged = [r for r in caplog.records if r.name == "uvicorn.error"]
    assert [(r.levelname, r.exc_info, r.exc_text) for r in logged] == [("WARNING", None, None)]
    assert logged[0].getMessage().endswith("(invalid start byte): closed with 1007")
    # Both are counted as the errors they are (the handler records them before it lets go).
    await eventually(lambda: not server.hub.connections, what="connections to close")
    assert errors.value(code="too_large") == 1 and errors.value(code="bad_message") == 1
    await _still_serves(server)


async def test_tokens_are_enforced(server):
    # A wrong bearer header is refused at the handshake.
    with pytest.raises(InvalidStatus) as info:
        await _ws(server, token="wrong")
    assert info.value.response.status_code == 401
    # No header: the hello must carry the token.
    ws = await _ws(server, token=None)
    reply = await _hello(ws, token="wrong")
    assert reply["code"] == "unauthorized" and reply["fatal"]
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd.code == 4401
    ws = await _ws(server, token=None)
    assert (await _hello(ws, token=TOKEN))["type"] == "ready"
    await ws.close()
    # The client reports it as a typed error without retrying.
    with pytest.raises(UnauthorizedError):
        await asyncio.wait_for(RemoteEngine(server.url, token="nope").create_session(), 5)
    with pytest.raises(UnauthorizedError):
        await asyncio.wait_for(RemoteEngine(server.url).create_session(), 5)
    # Browsers (an Origin header) are refused: a web page must not drive the server.
    with pytest.raises(InvalidStatus) as info:
        await _ws(server, origin="http://evil.example")
    assert info.value.response.status_code == 403
    await _still_serves(server)


async def test_handshake_rules(server):
    ws = await _ws(server)  # no hello at all
    reply = await _recv_json(ws, timeout=3)
    assert reply["code"] == "bad_message" and reply["fatal"]
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd.code == 4408
    for first, code in [
        ('{"type": "reset", "req": 1}', "bad_message"),
        (b"\x00", "bad_message"),
        ('{"type": "hello", "v": 99}', "unsupported_version"),
        ('{"type": "hello", "conversation_id": "../../etc"}', "bad_message"),
    ]:
        ws = await _ws(server)
        await ws.send(first)
        assert (await _recv_json(ws))["code"] == code
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    await eventually(lambda: not server.hub.connections, what="connections to close")
    await _still_serves(server)


async def test_client_side_checks_mirror_the_engine(server, realtime_meta):
    client = RemoteEngine(server.url, token=TOKEN)
    session = await client.create_session(sampling=GREEDY)
    with pytest.raises(InvalidInputError):
        await session.start_turn(max_frames=0)
    with pytest.raises(InvalidInputError):
        await session.interrupt(-1)
    with pytest.raises(InvalidInputError):
        await session.add_user_turn([1], [[1] * (realtime_meta["audio"]["channels"] + 1)])
    with pytest.raises(InvalidInputError):
        await session.set_sampling(SamplingParams(repetition_window=1000))  # engine's limit
    turn = await session.start_turn(max_frames=4)
    with pytest.raises(TurnStateError):
        await session.start_turn()
    with pytest.raises(InvalidInputError):
        turn.push_text("x" * 20001)
    turn.end_text()
    with pytest.raises(TurnStateError):
        turn.push_text("late")
    assert (await turn.wait()).stop in ("eos", "max_frames", "empty")
    await session.close()
    await session.close()  # idempotent, as locally


@pytest.mark.parametrize("where", ["local", "remote"])
async def test_text_that_is_not_text_is_refused_and_the_turn_goes_on(
    server, make_tiny_engine, where
):
    engine = make_tiny_engine(eos_min_frames=3) if where == "local" else None
    client = engine if where == "local" else RemoteEngine(server.url, token=TOKEN)
    session = client.create_session(sampling=GREEDY)
    session = await session if where == "remote" else session
    turn = await session.start_turn(max_frames=3)
    for bad in (123, None, ["a list"]):
        with pytest.raises(InvalidInputError, match="text must be str or bytes"):
            turn.push_text(bad)
    turn.push_text("still speaking")
    turn.end_text()
    assert (await turn.wait()).audio_frames == 3
    await session.close()


async def test_unreachable_server_is_a_clear_error_not_a_hang():
    client = RemoteEngine(f"ws://127.0.0.1:{free_port()}", reconnect_timeout=0.5)
    with pytest.raises(ServerUnavailableError, match="cannot reach"):
        await asyncio.wait_for(client.create_session(), 5)


async def test_http_endpoints(server):
    base = server.http_url

    def get(path: str, token: str | None = None, method: str = "GET"):
        req = urllib.request.Request(base + path, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode(), r.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            return e.code, "", None

    await _still_serves(server)  # one turn, so the histogram has a sample
    assert (await asyncio.to_thread(get, "/healthz"))[:2] == (200, "ok\n")
    assert (await asyncio.to_thread(get, "/readyz"))[:2] == (200, "ready\n")
    assert (await asyncio.to_thread(get, "/metrics"))[0] == 401
    assert (await asyncio.to_thread(get, "/nope"))[0] == 404
    status, text, ctype = await asyncio.to_thread(get, "/metrics", TOKEN)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "moss_server_frames_total 3" in text
    assert 'moss_server_ttfa_seconds_bucket{le="+Inf"} 1' in text
    assert "moss_server_sessions 0" in text
    # The engine's own counters and KV slots (``metrics.EngineCollector``).
    assert 'moss_engine_prefix_cache_lookups_total{result="miss"} 1.0' in text
    assert 'moss_engine_history_turns_dropped_total{reason="no_slot"} 0.0' in text
    capacity = server.hub.engine.config.max_context
    assert f'moss_engine_kv_slots{{capacity="{capacity}",state="used"}} 0.0' in text
    # HEAD, as health checkers send it (every server must take HEAD where it takes GET).
    assert (await asyncio.to_thread(get, "/healthz", method="HEAD"))[:2] == (200, "")
    assert (await asyncio.to_thread(get, "/readyz", method="HEAD"))[:2] == (200, "")
    assert (await asyncio.to_thread(get, "/metrics", TOKEN, "HEAD"))[0] == 200
    assert (await asyncio.to_thread(get, "/readyz", method="POST"))[0] == 405
    server.hub.draining = True
    assert (await asyncio.to_thread(get, "/readyz"))[0] == 503
    assert (await asyncio.to_thread(get, "/readyz", method="HEAD"))[0] == 503
    server.hub.draining = False


async def test_audio_frames_round_trip():
    from moss_pipecat.protocol import pack_audio

    codes = list(range(1011, 1027))
    data = pack_audio(7, 42, codes, b"\x01\x02" * 1920)
    assert unpack_audio(data) == (7, 42, codes, b"\x01\x02" * 1920)
    assert unpack_audio(pack_audio(1, 2, codes, None))[3] is None
