"""A user turn whose connection is lost with the request on it (before its reply): the client
sends it again after reconnecting unless the history it then holds ends with it, so it lands
exactly once, whether the server that got it kept the conversation (the resume's full history
has it: not sent again) or lost it (the restore has not: sent again). Before, the user turn was
dropped (the service said "user turn not kept") and the acoustic history went on without it."""

from __future__ import annotations

import asyncio

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.engine.session import Session

from ..engine.helpers import random_frames
from .conftest import GREEDY, TOKEN
from .turns import say


@pytest.mark.parametrize("applied", [True, False], ids=["applied-resumed", "lost-restored"])
async def test_a_user_turn_lost_with_its_connection_lands_once(
    make_tiny_engine, make_server, realtime_meta, monkeypatch, applied
):
    """The server drops the connection while it handles the user turn: after applying it
    (it keeps the conversation: the client resumes) or before (it forgets the conversation:
    the client restores)."""
    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60 if applied else 0)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="user-lost", sampling=GREEDY)
    await say(session, "Hello there.", 3)
    frames = random_frames(torch.Generator().manual_seed(5), 6, realtime_meta)
    ids = session.journal.turns[-1].ids[:4].tolist()  # ids of the vocabulary
    calls, add = [], Session.add_user_turn

    async def dropping(self, *args, **kwargs):  # the server's engine call of a user turn
        calls.append(args)
        if len(calls) == 1:
            conn = server.hub.conversations["user-lost"].conn
            if applied:
                await add(self, *args, **kwargs)
            else:
                await self.close()  # as a server that died with it: the conversation is gone
            conn.abort()  # no delta, no reply
            return None
        return await add(self, *args, **kwargs)

    monkeypatch.setattr(Session, "add_user_turn", dropping)
    await asyncio.wait_for(session.add_user_turn(ids, frames), 30)  # no error: it landed
    assert len(calls) == (1 if applied else 2)
    snap = await session.snapshot()
    assert [t[0] for t in snap["turns"]] == ["assistant", "user"], snap["turns"]
    assert session.resumed == applied and session.restored == int(not applied)
    last = session.journal.turns[-1]
    assert last.role == "user"
    assert torch.equal(torch.as_tensor(last.frames.astype("int64")), frames)
    await session.close()
    await remote.aclose()


async def test_a_resume_waits_for_the_request_its_previous_connection_had_in_hand(
    make_tiny_engine, make_server, monkeypatch
):
    """The connection is lost while the server encodes the user turn's audio: the client
    resumes on a new connection before the encode is done. The new connection is told the
    history once that request is done (``takeover_wait_s``), so it holds the user turn and
    the client does not send it again: one user turn (before, the resume's history came
    first, the client sent it again and the history held it twice)."""

    import numpy as np

    from moss_pipecat.server.connection import Connection

    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="in-hand", sampling=GREEDY)
    await say(session, "Hello there.", 3)
    encoding, release, calls = _hold_the_first_encode(engine, monkeypatch)
    wait = getattr(Connection, "requests_done", None)

    async def releasing(self, timeout):
        release.set()
        await wait(self, timeout)

    monkeypatch.setattr(Connection, "requests_done", releasing, raising=False)
    pcm = (np.sin(np.arange(12000) / 7.0) * 8000).astype(np.int16)  # 0.5 s at 24 kHz
    sending = asyncio.ensure_future(session.add_user_audio_turn("Hi there.", pcm, 24000))
    await asyncio.to_thread(encoding.wait, 20)
    session._link.ws.transport.abort()  # lost with the request in the server's hands
    asyncio.get_running_loop().call_later(8, release.set)  # without the wait: late
    await asyncio.wait_for(sending, 30)
    snap = await session.snapshot()
    assert [t[0] for t in snap["turns"]] == ["assistant", "user"], snap["turns"]
    assert len(calls) == 1 and session.resumed
    await session.close()
    await remote.aclose()


async def test_a_request_still_encoding_when_the_wait_ends_is_not_applied(
    make_tiny_engine, make_server, monkeypatch
):
    """The old connection's user turn is still encoding when the takeover's wait ends (a
    short ``takeover_wait_s``): the resume's history lacks it, so the client sends it again,
    and the old request, done later, is not applied (its connection no longer holds the
    conversation): one user turn (before, two: the old request landed after the wait)."""

    import numpy as np

    from moss_pipecat.server.connection import Connection

    engine = make_tiny_engine(eos_min_frames=3)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60, takeover_wait_s=0.2)
    remote = RemoteEngine(server.url, token=TOKEN)
    session = await remote.create_session(conversation_id="slow-encode", sampling=GREEDY)
    await say(session, "Hello there.", 3)
    encoding, release, calls = _hold_the_first_encode(engine, monkeypatch)
    wait = Connection.requests_done

    async def releasing(self, timeout):  # the old encode ends once the wait has given up
        await wait(self, timeout)
        release.set()

    monkeypatch.setattr(Connection, "requests_done", releasing)
    pcm = (np.sin(np.arange(12000) / 7.0) * 8000).astype(np.int16)  # 0.5 s at 24 kHz
    sending = asyncio.ensure_future(session.add_user_audio_turn("Hi there.", pcm, 24000))
    await asyncio.to_thread(encoding.wait, 20)
    old = server.hub.conversations["slow-encode"].conn
    session._link.ws.transport.abort()  # lost with the request in the server's hands
    await asyncio.wait_for(sending, 30)
    await asyncio.wait_for(old.idle.wait(), 10)  # the old request is done too
    snap = await session.snapshot()
    assert [t[0] for t in snap["turns"]] == ["assistant", "user"], snap["turns"]
    assert len(calls) == 1 and session.resumed
    await session.close()
    await remote.aclose()


def _hold_the_first_encode(engine, monkeypatch):
    """The server's first user-turn encode waits until ``release`` is set (``encoding`` is
    set once it waits); ``calls``: the engine calls of user turns."""
    import threading

    codec, encoding, release = engine.codec, threading.Event(), threading.Event()
    encode = codec.encode_frames

    def held_encode(*args, **kwargs):
        if not encoding.is_set():
            encoding.set()
            release.wait(20)
        return encode(*args, **kwargs)

    calls, add = [], Session.add_user_turn

    async def counted(self, *args, **kwargs):
        calls.append(args)
        return await add(self, *args, **kwargs)

    monkeypatch.setattr(codec, "encode_frames", held_encode)
    monkeypatch.setattr(Session, "add_user_turn", counted)
    return encoding, release, calls
