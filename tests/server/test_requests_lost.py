"""A voice, sampling/seed, reset or turn start request whose connection is lost before its
reply (the server applied it and kept the conversation, or lost the conversation with it):
the client sends it once more after the reconnect, so the conversation ends as if it had been
sent once on a clean connection. Before, the call raised, the service said "settings not
applied" and never applied them again (the session kept the old voice or seed while the
settings said the new one), a reset lost with a server that lost the conversation came back
undone with the restore, and a reply whose start was lost failed (and, where the new
connection took the conversation over while the engine opened the turn, every later reply
failed too: the turn nobody drove stayed open)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.engine.session import Session
from moss_pipecat.speech.commands import Reset, SetSampling, SetVoice
from moss_pipecat.speech.sampling import SamplingParams

from .conftest import GREEDY, TOKEN, eventually
from .turns import say, speak

SAMPLED = SamplingParams(temperature=0.9, top_k=20, top_p=0.9)  # the seed matters


def _command(kind: str, voice_codes: torch.Tensor):
    """The client call of ``kind`` and the engine command it becomes on the server."""
    if kind == "voice":
        return (lambda s: s.set_voice(voice_codes)), SetVoice
    if kind == "seed":
        return (lambda s: s.set_sampling(SAMPLED, seed=77)), SetSampling
    return (lambda s: s.reset()), Reset


async def _conversation(remote, cid: str, call) -> tuple[list, dict]:
    """A turn, ``call``, a second turn: the second turn's frames and the last snapshot."""
    session = await remote.create_session(conversation_id=cid, sampling=SAMPLED, seed=5)
    await (await speak(session, "Hello there.", 4)).wait()
    await asyncio.wait_for(call(session), 30)
    turn = await speak(session, "And then some more.", 4)
    frames = [c.codes.tolist() async for c in turn if c.codes is not None]
    snap = await session.snapshot()
    await session.close()
    return frames, snap


@pytest.mark.parametrize("applied", [True, False], ids=["applied-resumed", "lost-restored"])
@pytest.mark.parametrize("kind", ["voice", "seed", "reset"])
async def test_a_setting_lost_with_its_connection_lands_once(
    make_tiny_engine, make_server, voice_codes, monkeypatch, kind, applied
):
    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60 if applied else 0)
    remote = RemoteEngine(server.url, token=TOKEN)
    call, command_type = _command(kind, voice_codes)
    want_frames, want = await _conversation(remote, "sent-once", call)

    calls, request = [], Session.request

    async def dropping(self, command, *args, **kwargs):  # the server's engine request
        if not isinstance(command, command_type) or self.id != "lost":
            return await request(self, command, *args, **kwargs)
        calls.append(command)
        if len(calls) > 1:
            return await request(self, command, *args, **kwargs)
        conn = server.hub.conversations["lost"].conn
        if applied:
            await request(self, command, *args, **kwargs)
        else:
            await self.close()  # as a server that died with it: the conversation is gone
        conn.abort()  # no history delta, no reply
        return None

    monkeypatch.setattr(Session, "request", dropping)
    frames, snap = await _conversation(remote, "lost", call)
    assert len(calls) == 2  # sent again after the reconnect (idempotent)
    assert frames == want_frames and frames
    assert torch.equal(snap["rows"], want["rows"])
    # (a restored turn's text ids are its rows' text channel: only the roles compare)
    assert [t[0] for t in snap["turns"]] == [t[0] for t in want["turns"]]
    assert snap["sampling"] == want["sampling"]
    await remote.aclose()


async def test_settings_no_server_took_are_applied_with_the_next_reply(
    make_tiny_engine, make_server, voice_codes
):
    """The service's settings (a runtime update: sampling, seed, voice) meet no server at a
    reply's start: an error says so, and the next reply's start, with a server back, applies
    them (before, they were marked applied and the session kept the old ones for good)."""
    from moss_pipecat.server import EngineServer, ServerConfig
    from moss_pipecat.server.config import ServerLimits
    from moss_pipecat.service.settings import (
        MossTTSSettings,
        SessionSettings,
        default_settings,
        sampling_params,
    )

    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, token=TOKEN)
    port = server.port
    remote = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=0.3)
    session = await remote.create_session(conversation_id="later", seed=5)
    settings = default_settings()
    pending = SessionSettings(settings, None)
    await pending.apply(session, settings, session.set_voice, _no_error)  # as constructed
    errors: list = []

    async def push_error(error_msg: str, exception: BaseException) -> None:
        errors.append(exception)

    async def set_voice(voice: str | None) -> None:  # the service reads the file named
        await session.set_voice(None if voice is None else voice_codes)

    update = MossTTSSettings(temperature=0.9, top_k=20, seed=77, voice="voice.wav")
    pending.updated(settings.apply_update(update))
    await server.stop()
    await pending.apply(session, settings, set_voice, push_error)
    assert [type(e) for e in errors] == [P.ServerUnavailableError] * 2  # settings, voice
    assert settings.voice == "voice.wav"  # still asked for: not refused
    config = ServerConfig(host="127.0.0.1", port=port, token=TOKEN, limits=ServerLimits())
    back = await EngineServer(engine, config).start()
    try:
        await pending.apply(session, settings, set_voice, push_error)  # the next reply
        assert len(errors) == 2
        snap = await session.snapshot()
        assert snap["sampling"] == sampling_params(settings) and settings.temperature == 0.9
        assert session._seed == 77 and session._voice is not None
        voice_rows = snap["rows"][:, 0] == engine.facts.layout.ref_audio_pad
        assert int(voice_rows.sum()) == voice_codes.shape[0]
        await session.close()
    finally:
        await remote.aclose()
        await back.stop()


async def _no_error(error_msg: str, exception: BaseException) -> None:
    raise AssertionError(error_msg)


async def _second_reply(remote, cid: str) -> torch.Tensor:
    """A turn, then a second reply of 5 frames: the rows after it."""
    session = await remote.create_session(conversation_id=cid, sampling=GREEDY)
    await say(session, "Hello there.", 3)
    assert await asyncio.wait_for(say(session, "And a second one.", 5), 30) == 5
    snap = await session.snapshot()
    assert snap["turn_frames"] == [3, 5]
    await session.close()
    return snap["rows"]


@pytest.mark.parametrize("when", ["before-engine", "taken-over-in-engine", "opened"])
async def test_a_turn_start_lost_with_its_connection_starts_once(
    make_tiny_engine, make_server, monkeypatch, when
):
    """The connection is lost as the server starts the second reply's turn: before the engine
    call (nothing opened), during it with the client's new connection taking the conversation
    over before it returns (the server cuts the turn it opened), or after it (the server cuts
    the turn at the frames it sent: none). The reply speaks, once, as on a clean connection."""
    engine = make_tiny_engine(eos_min_frames=60)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60)
    remote = RemoteEngine(server.url, token=TOKEN)
    want = await _second_reply(remote, "clean")
    calls, start = [], Session.start_turn

    async def dropping(self, *args, **kwargs):  # the server's engine call
        calls.append(args)
        if len(calls) != 2:  # the first reply, the second's start sent again
            return await start(self, *args, **kwargs)
        conn = server.hub.conversations["lost"].conn
        if when == "opened":
            turn = await start(self, *args, **kwargs)
            conn.abort()
            return turn
        conn.abort()
        if when == "taken-over-in-engine":
            await eventually(lambda: conn.conversation is None, what="the takeover")
        return await start(self, *args, **kwargs)

    monkeypatch.setattr(Session, "start_turn", dropping)
    assert torch.equal(await _second_reply(remote, "lost"), want)
    assert len(calls) == 3
    await remote.aclose()
