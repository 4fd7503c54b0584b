"""Draining for deploys: ``goaway``, turns in flight end (or are cut at what the client
received when the deadline passes), no new conversation is admitted, and the calls go on on
another server with their history (restored from the client's journal). In-process servers,
and ``moss-pipecat serve`` processes stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ServerUnavailableError

from ..engine_rules import SPEAKS
from .conftest import GREEDY, eventually
from .processes import ServerProcess, http_get
from .turns import LONG_TEXT, read_chunks, say, speak


def turn_frames(rows: torch.Tensor, layout) -> torch.Tensor:
    """The audio codes of the frame rows of the turn in ``rows`` [R, 1 + rvq]: those after its
    BOS row (channel 1 BOS, the other audio channels pad) up to its EOS row or the end. Told
    apart by place, not by value: an untrained model's frame may hold a special id (the
    engine clamps it for the codec), so a frame of a 64-code set can start with BOS."""
    audio = rows[:, 1:]
    rest_pad = (audio[:, 1:] == layout.audio_pad).all(dim=1)
    (bos, *_) = torch.nonzero((audio[:, 0] == layout.audio_bos) & rest_pad)[:, 0].tolist()
    frames, rest_pad = audio[bos + 1 :], rest_pad[bos + 1 :]
    eos = torch.nonzero((frames[:, 0] == layout.audio_eos) & rest_pad)[:, 0].tolist()
    return frames[: eos[0]] if eos else frames


async def test_the_drain_deadline_cuts_the_turn_at_the_frames_the_client_received(
    make_tiny_engine, make_server
):
    # Paced, and no turn ends before 60 frames: the turn outlasts the drain's deadline.
    engine = make_tiny_engine(max_sessions=2, lookahead_s=0.3, eos_min_frames=60)
    server = await make_server(engine)
    session = await RemoteEngine(server.url).create_session(
        conversation_id="cut-1", sampling=GREEDY
    )
    turn = await speak(session, LONG_TEXT, 60)
    chunks = await read_chunks(turn, 3)
    drain = asyncio.create_task(server.hub.drain(timeout=0.5))
    await eventually(lambda: session._link.moved is not None, what="the goaway")
    assert session._link.alive  # the turn in flight goes on over it

    # Draining: no new conversation, and a clear refusal (not a hang, not a handshake error).
    with pytest.raises(ServerUnavailableError, match="HTTP 503 draining"):
        await RemoteEngine(server.url, reconnect_timeout=0.3).create_session()
    assert await asyncio.to_thread(http_get, server.http_url + "/readyz") == (503, "draining\n")

    chunks += [c async for c in turn]
    summary = turn.summary
    assert summary.stop == "interrupted" and summary.error is None
    assert summary.heard_frames == len(chunks) < 60  # cut at exactly what the client got
    await drain
    await eventually(lambda: not session._link.alive, what="the moved link to close")
    assert server.hub.conversations["cut-1"].turn is None

    # The engine kept exactly those frames (the same as a local greedy run's).
    snap = await server.hub.conversations["cut-1"].session.snapshot()
    frames = turn_frames(snap["rows"][snap["system_rows"] :], engine.layout)
    assert torch.equal(frames, torch.stack([c.codes for c in chunks]))
    local = engine.create_session(sampling=GREEDY)
    ref = await speak(local, LONG_TEXT, 60)
    ref_chunks = await read_chunks(ref, len(chunks))
    assert torch.equal(frames, torch.stack([c.codes for c in ref_chunks]))
    await local.close()


async def test_a_drained_call_finishes_its_turn_and_goes_on_on_the_next_server(
    make_tiny_engine, make_server
):
    engine_a = make_tiny_engine(max_sessions=2, lookahead_s=0.3, eos_min_frames=30)
    engine_b = make_tiny_engine(max_sessions=2, lookahead_s=0.3, eos_min_frames=30)
    a, b = await make_server(engine_a), await make_server(engine_b)
    session = await RemoteEngine([a.url, b.url]).create_session(
        conversation_id="move-1", sampling=GREEDY
    )
    first_server = session.server_id
    turn = await speak(session, LONG_TEXT, 30)
    chunks = await read_chunks(turn, 2)
    drain = asyncio.create_task(a.hub.drain(timeout=60))
    chunks += [c async for c in turn]
    assert turn.summary.stop == "max_frames" and len(chunks) == 30  # the whole turn
    await asyncio.wait_for(drain, 30)  # every client left: no waiting for the deadline
    assert session.moves == 0  # moves happen on the next call
    lost = await a.hub.conversations["move-1"].session.snapshot()

    # The next call lands on B, which gets the conversation's history back, row for row.
    moved = await session.snapshot()
    assert session.server_id not in (None, first_server) and session.server_id == b.hub.server_id
    assert (session.moves, session.reconnects) == (1, 1)
    assert (session.restored, session.history_lost) == (1, 0)
    assert [r for r, _ in moved["turns"]] == [r for r, _ in lost["turns"]] == ["assistant"]
    assert torch.equal(moved["rows"], lost["rows"])
    assert await say(session, "On the next server.", 4) == 4
    await session.close()
    assert engine_b.session_ids == []


async def test_the_pipecat_service_keeps_talking_across_a_drain(make_tiny_engine, make_server):
    from pipecat.frames.frames import (
        ErrorFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.tests.utils import SleepFrame, run_test

    from moss_pipecat.service import MossTTSSettings
    from moss_pipecat.service.remote import MossRemoteTTSService

    from ..service.conftest import Probe, SnapshotProbe

    def reply(*pieces: str) -> list:
        return [LLMFullResponseStartFrame(), *map(LLMTextFrame, pieces), LLMFullResponseEndFrame()]

    # Paced replies of at most 40 frames (3.2 s), each one past its text.
    config = dict(max_sessions=2, lookahead_s=0.3, max_turn_frames=40, **SPEAKS)
    a, b = [await make_server(make_tiny_engine(**config)) for _ in range(2)]
    tts = MossRemoteTTSService(url=[a.url, b.url], settings=MossTTSSettings(greedy=True))

    async def drain_mid_reply():
        await eventually(lambda: a.hub.metrics.frames.value() >= 3, 60, "the first audio")
        await a.hub.drain(timeout=60)
        return tts.session

    drainer = asyncio.create_task(drain_mid_reply())
    probe = SnapshotProbe(tts)
    frames = [
        *reply("Hello ", "before ", "the deploy."),
        SleepFrame(0.5),
        *reply("And ", "after it."),
        SleepFrame(6.0),
        Probe(),
    ]
    down, up = await run_test(Pipeline([tts, probe]), frames_to_send=frames)
    session = await asyncio.wait_for(drainer, 60)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    contexts = [f.context_id for f in down if isinstance(f, TTSAudioRawFrame)]
    assert len(set(contexts)) == 2  # both replies spoke: the first on A, the second on B
    (snap,) = probe.snapshots
    assert session.moves == 1 and session.server_id == b.hub.server_id
    assert (session.restored, session.history_lost) == (1, 0)
    # B holds the first reply exactly as A kept it, then the second.
    lost = await a.hub.conversations[session.id].session.snapshot()
    assert [r for r, _ in lost["turns"]] == ["assistant"]
    assert [r for r, _ in snap["turns"]] == ["assistant", "assistant"]
    assert torch.equal(snap["rows"][: lost["rows"].shape[0]], lost["rows"])


# ================================================================== a SIGTERM deploy
CALLS = 8


async def test_a_sigterm_deploy_moves_every_live_call_to_the_second_server(
    fixtures_dir, tmp_path, golden_layout
):
    log = tmp_path / "servers.log"
    drain = ("--drain-timeout", "60")
    servers = [ServerProcess(fixtures_dir, log, CALLS, drain, stop_wait_s=30) for _ in range(2)]
    urls = [s.url for s in servers]
    try:
        for server in servers:
            server.spawn()
        await asyncio.gather(*(server.ready() for server in servers))
        client = RemoteEngine(urls, reconnect_timeout=30, request_timeout=60)
        sessions = [
            await client.create_session(conversation_id=f"deploy-{k}", sampling=GREEDY)
            for k in range(CALLS)
        ]
        old = {s.server_id for s in sessions}
        assert len(old) == 1  # every call on the first server

        async def first_turn(s):
            turn = await speak(s, "Before the deploy.", 4)
            return await turn.wait()

        assert all(r.audio_frames == 4 for r in await asyncio.gather(*map(first_turn, sessions)))
        before = [await s.snapshot() for s in sessions]

        async def open_turn(s):
            turn = await speak(s, LONG_TEXT, 24)  # ~2 s of paced audio
            return turn, await read_chunks(turn, 2)

        live = await asyncio.gather(*map(open_turn, sessions))
        servers[0].procs[0].send_signal(signal.SIGTERM)  # the deploy
        await eventually(
            lambda: all(s._link.moved is not None for s in sessions), 60, "every goaway"
        )
        # No new conversation while it drains: a clear refusal.
        with pytest.raises(ServerUnavailableError, match="HTTP 503 draining"):
            await RemoteEngine(urls[0], reconnect_timeout=0.5).create_session()

        # Every turn in flight ends whole on the draining server.
        for turn, chunks in live:
            chunks += [c async for c in turn]
            assert turn.summary.stop == "max_frames" and turn.summary.error is None
            assert len(chunks) == 24 and [c.index for c in chunks] == list(range(24))
        # It exits cleanly once its clients left, well within its deadline (a hang guard).
        assert await asyncio.to_thread(servers[0].procs[0].wait, 50) == 0

        async def next_turn(s):
            turn = await speak(s, "After the deploy.", 4)
            return await turn.wait()

        # Every call goes on on the second server with its history: the rows of its first
        # turn as the first server had them, then exactly the frames of the second turn the
        # client received (nothing lost, nothing unheard added).
        moved = [await s.snapshot() for s in sessions]
        for s, snap, was, (_, chunks) in zip(sessions, moved, before, live, strict=True):
            assert s.server_id not in old and (s.moves, s.reconnects) == (1, 1)
            assert (s.restored, s.history_lost) == (1, 0)
            assert [r for r, _ in snap["turns"]] == ["assistant", "assistant"]
            n = was["rows"].shape[0]
            assert torch.equal(snap["rows"][:n], was["rows"])
            frames = turn_frames(snap["rows"][n:], golden_layout)
            assert torch.equal(frames, torch.stack([c.codes for c in chunks]))
        assert len({s.server_id for s in sessions}) == 1
        after = await asyncio.gather(*map(next_turn, sessions))
        assert all(r.audio_frames == 4 and r.error is None for r in after)
        for s in sessions:
            await s.close()
    finally:
        for server in servers:
            server.stop()
    assert servers[1].procs[0].returncode == 0, log.read_text()[-3000:]


async def test_a_second_signal_cuts_the_drain_short(fixtures_dir, tmp_path):
    # A second SIGTERM (or Ctrl+C) while draining: the turn still open is cut at the frames
    # its client received and the server exits 0, not after its 600 s deadline (the waits
    # below are hang guards; the second signal was ignored before).
    extra = ("--drain-timeout", "600")
    async with ServerProcess(fixtures_dir, tmp_path / "server.log", extra=extra) as server:
        proc = server.procs[-1]
        session = await RemoteEngine(server.url).create_session(sampling=GREEDY)
        turn = await session.start_turn()
        turn.push_text(LONG_TEXT)  # no end_text: the turn waits for more, with no end of its own
        chunks = await read_chunks(turn, 1)
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: session._link.moved is not None, 60, "the goaway")
        proc.send_signal(signal.SIGTERM)

        async def rest() -> list:
            return [c async for c in turn]

        chunks += await asyncio.wait_for(rest(), 60)
        summary = turn.summary
        assert summary.stop == "interrupted" and summary.error is None
        assert summary.heard_frames == len(chunks)  # cut at exactly what the client got
        assert await asyncio.to_thread(proc.wait, 60) == 0


def test_the_drain_deadline_is_a_server_option():
    from moss_pipecat.cli import build_parser, serve_options
    from moss_pipecat.errors import InvalidInputError
    from moss_pipecat.server import ServerLimits

    args = build_parser().parse_args(["serve", "--tiny", "/x", "--drain-timeout", "7.5"])
    assert serve_options(args)[1].server_config().limits.drain_timeout_s == 7.5
    default = build_parser().parse_args(["serve", "--tiny", "/x"])
    assert serve_options(default)[1].limits() == ServerLimits()
    with pytest.raises(InvalidInputError, match="drain_timeout_s"):
        ServerLimits(drain_timeout_s=-1)
