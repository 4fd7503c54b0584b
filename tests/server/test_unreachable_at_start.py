"""MossRemoteTTSService whose engine server is not there when the pipeline starts: the service
starts anyway with one clear, non-permanent ErrorFrame; a reply before the server is up fails
with an ErrorFrame naming the cause (and keeps the settings and the user's turn for the next
one), however many replies fail so; once a server listens on the port the next reply makes
the conversation, with the id and resume secret the service had, and speaks into the LLM
context. A refusal at that late first connection ends the service, as at the start
(``service/refusal.py``). The start makes one connection attempt and does not retry: a dead
server does not hold the pipeline's StartFrame for the client's reconnect window."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSUpdateSettingsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.client import RemoteEngine, ServerUnavailableError
from moss_pipecat.protocol.errors import UnauthorizedError
from moss_pipecat.server import EngineServer, ServerConfig
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.conftest import assistant_aggregator, user_audio_frames
from .conftest import TALKATIVE, free_port
from .cues import Cue, Watcher
from .test_remote_service import reply

# Short, so that the failing connections of the test (the start's, the early reply's) end soon;
# the service's own default is the client's (``RemoteEngine``).
RECONNECT_S = 0.3


class LateServer(FrameProcessor):
    """Upstream of the TTS: counts the ErrorFrames coming up (``errors``); a ``Cue("serve", n)``
    holds the frames behind it until ``n`` have come, then starts a server on ``port``; any
    other cue waits for the ``reply``-th reply with audio to end (``Watcher``) and notes the
    service's credentials and its session's snapshot."""

    def __init__(self, tts, watcher: Watcher, engine, port: int, token: str | None) -> None:
        super().__init__()
        self.tts, self.watcher, self.engine, self.port, self.token = (
            tts,
            watcher,
            engine,
            port,
            token,
        )
        self.errors: list[ErrorFrame] = []
        self.error_came = asyncio.Event()
        self.server: EngineServer | None = None
        self.seen: dict[str, tuple] = {}  # by cue: (conversation id, secret, ticket, connected)
        self.snapshots: dict[str, dict] = {}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame):  # a system frame: taken while a cue holds the rest
            self.errors.append(frame)
            self.error_came.set()
        if not isinstance(frame, Cue):
            await self.push_frame(frame, direction)
            return
        session = self.tts.session
        if frame.what == "serve":
            while len(self.errors) < frame.reply:  # woken by each error, never by a timer
                self.error_came.clear()
                await asyncio.wait_for(self.error_came.wait(), 60)
        else:
            await self.watcher.reached(frame.reply, None)
            self.snapshots[frame.what] = await session.snapshot()
        self.seen[frame.what] = (
            session.id,
            self.tts.resume_secret,
            self.tts.resume_ticket,
            session.connected_once,
        )
        if frame.what == "serve":
            config = ServerConfig(host="127.0.0.1", port=self.port, token=self.token)
            self.server = await EngineServer(self.engine, config).start()
        elif self.server is not None:
            conversation = self.server.hub.conversations[session.id]
            self.seen["server"] = (session.id, conversation.secret)


def late_engine(make_tiny_engine):
    """A tiny engine whose turns never end before their text was read."""
    return make_tiny_engine(
        max_sessions=2,
        **TALKATIVE,
    )


async def run_late(tts, frames, director: LateServer, watcher: Watcher, context: LLMContext):
    pipeline = Pipeline([director, tts, watcher, assistant_aggregator(context)])
    try:
        return await asyncio.wait_for(
            run_test(
                pipeline,
                frames_to_send=frames,
                pipeline_params=PipelineParams(audio_out_sample_rate=24000),
            ),
            timeout=120,  # a hang guard
        )
    finally:
        if director.server is not None:
            await director.server.stop()


async def test_a_server_that_comes_up_after_the_start_is_reached_by_the_next_reply(
    make_tiny_engine,
):
    engine = late_engine(make_tiny_engine)
    port = free_port()  # nothing listens there until the cue
    url = f"ws://127.0.0.1:{port}/v1/ws"
    client = RemoteEngine(url, reconnect_timeout=RECONNECT_S)
    tts = MossRemoteTTSService(
        remote=client, conversation_id="late-start-1", settings=MossTTSSettings(greedy=True)
    )
    events: list[str] = []

    @tts.event_handler("on_connection_error")
    async def on_connection_error(service, error: str) -> None:
        events.append(error)

    @tts.event_handler("on_connected")
    async def on_connected(service) -> None:
        events.append("connected")

    watcher, context = Watcher(), LLMContext()
    director = LateServer(tts, watcher, engine, port, token=None)
    frames = [
        TTSUpdateSettingsFrame(delta=MossTTSSettings(top_k=7)),
        UserStartedSpeakingFrame(),
        *user_audio_frames(0.8),
        UserStoppedSpeakingFrame(),
        TranscriptionFrame("Is anyone there", "user", "2026-12-04"),
        # No server yet: more replies than pipecat's default count of silent contexts
        # (3) that would write the service off.
        *reply("Too ", "early."),
        *reply("Still ", "early."),
        *reply("Early ", "again."),
        Cue("serve", 7),  # the start's ErrorFrame and two for each of these replies
        *reply("Now ", "it speaks."),
        Cue("spoke", 0),
    ]
    down, up = await run_late(tts, frames, director, watcher, context)

    # The start: one clear ErrorFrame, not permanent; the pipeline went on.
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 7, [f.error for f in errors]
    start = errors[0]
    assert start.error.startswith(f"MOSS TTS: the engine server is unreachable: cannot reach {url}")
    assert "connection refused" in start.error and "try to connect again" in start.error
    assert start.category is ErrorCategory.CONNECTIVITY
    assert isinstance(start.exception, ServerUnavailableError)
    # Each early reply: its own ErrorFrame naming the cause, no audio, nothing lost; then
    # pipecat's own word for a context without audio, which does not write the service off.
    for early, silent in zip(errors[1::2], errors[2::2], strict=True):
        assert early.error.startswith(f"MOSS TTS reply failed: cannot reach {url}")
        assert "connection refused" in early.error and "not running" not in early.error
        assert early.category is ErrorCategory.CONNECTIVITY
        assert silent.error.endswith("completed with no audio")
    assert tts.is_usable
    # pipecat's connection events: the start's and each early reply's failure, then one
    # connection.
    failures = [e for e in events if e != "connected"]
    assert events.count("connected") == 1 and events[-1] == "connected" and len(failures) == 4
    assert all(e.startswith(f"cannot reach {url}") for e in failures)

    # Before the server: the secret the conversation will have, no ticket yet.
    cid, secret, ticket, connected = director.seen["serve"]
    assert (cid, ticket, connected) == ("late-start-1", None, False) and secret
    # Then: that conversation, made with that secret, holding the user's turn (kept through
    # the failed reply) and the reply, with the settings the failed reply did not send.
    assert director.seen["server"] == ("late-start-1", secret)
    cid, secret_after, ticket, connected = director.seen["spoke"]
    assert (cid, secret_after, connected) == ("late-start-1", secret, True) and ticket
    spoke = director.snapshots["spoke"]
    assert [role for role, _ in spoke["turns"]] == ["user", "assistant"]
    assert spoke["sampling"].top_k == 7
    assert len(watcher.contexts) == 1 and watcher.frames[watcher.contexts[0]] > 0
    assert all(f.context_id == watcher.contexts[0] for f in down if isinstance(f, TTSAudioRawFrame))
    said = [m["content"] for m in context.get_messages() if m["role"] == "assistant"]
    assert said == ["Now it speaks."]
    assert engine.session_ids == []  # the pipeline's end closed the conversation
    await client.aclose()


async def test_a_refusal_at_the_late_first_connection_ends_the_service(make_tiny_engine):
    engine = late_engine(make_tiny_engine)
    port = free_port()
    client = RemoteEngine(f"ws://127.0.0.1:{port}", token="wrong", reconnect_timeout=RECONNECT_S)
    tts = MossRemoteTTSService(remote=client, settings=MossTTSSettings(greedy=True))
    watcher, context = Watcher(), LLMContext()
    director = LateServer(tts, watcher, engine, port, token="right")
    frames = [Cue("serve", 1), *reply("Hello ", "there."), *reply("And ", "again.")]
    down, up = await run_late(tts, frames, director, watcher, context)

    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 2, [f.error for f in errors]
    unreachable, refused = errors
    assert unreachable.category is ErrorCategory.CONNECTIVITY and "unreachable" in unreachable.error
    # As a refused start: one permanent ErrorFrame, and pipecat gives the service no more text.
    assert isinstance(refused.exception, UnauthorizedError)
    assert refused.category is ErrorCategory.AUTHENTICATION
    assert refused.error.startswith("MOSS TTS: this call was refused: the server refused the token")
    assert not tts.is_usable and not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert director.seen["serve"][3] is False and engine.session_ids == []
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://127.0.0.1:{port}", "connection refused (no server is listening there)"),
        # RFC 6761: never resolves (NXDOMAIN, or no resolver answering: a DNS error too).
        ("ws://moss-server.invalid:{port}", "the host name does not resolve (DNS: "),
    ],
)
async def test_why_a_server_cannot_be_reached_is_named(url, reason):
    url = url.format(port=free_port())
    # connect_timeout above a resolver's own timeouts: a lookup that cannot finish says so.
    client = RemoteEngine(url, reconnect_timeout=RECONNECT_S, connect_timeout=60)
    session = await client.create_session(connect=False)
    assert not session.connected_once and session.id is None and session.resume_secret
    with pytest.raises(ServerUnavailableError, match="cannot reach") as info:
        await asyncio.wait_for(session.start_turn(), 120)
    assert str(info.value).startswith(f"cannot reach {url}/v1/ws after ")
    assert reason in str(info.value)
    await client.aclose()


class SilentServer:
    """A TCP listener that takes connections and never answers (a server hung before its
    websocket upgrade): ``connections`` counts them; ``dropped`` is set once the client
    gave one up."""

    def __init__(self) -> None:
        self.connections = 0
        self.dropped = asyncio.Event()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError):
            await reader.read()  # the upgrade request, then nothing until the client gives up
        self.dropped.set()
        writer.close()


@contextlib.asynccontextmanager
async def dead_servers(kinds: list[str]) -> AsyncIterator[tuple[list[str], SilentServer]]:
    """URLs of servers that cannot be reached, of each kind: ``refusing`` (a port bound but
    not listening: connection refused) or ``silent`` (one ``SilentServer``)."""
    silent = SilentServer()
    with contextlib.ExitStack() as sockets:
        listener = await asyncio.start_server(silent._hold, "127.0.0.1", 0)
        urls = []
        for kind in kinds:
            if kind == "silent":
                port = listener.sockets[0].getsockname()[1]
            else:
                bound = sockets.enter_context(socket.socket())
                bound.bind(("127.0.0.1", 0))  # held, never listening: nobody takes the port
                port = bound.getsockname()[1]
            urls.append(f"ws://127.0.0.1:{port}/v1/ws")
        try:
            yield urls, silent
        finally:
            listener.close()
            await listener.wait_closed()


@pytest.mark.parametrize(
    "kinds",
    [["refusing"], ["silent"], ["refusing", "silent"]],
    ids=["refused", "no-answer", "both-urls"],
)
async def test_a_dead_server_does_not_hold_the_start_for_the_reconnect_window(kinds):
    async with dead_servers(kinds) as (urls, silent):
        # A reconnect window far longer than the test's hang guard: a start that retried
        # within it would not finish. One attempt waits connect_timeout for a silent server.
        client = RemoteEngine(urls, reconnect_timeout=600, connect_timeout=0.5)
        tts = MossRemoteTTSService(remote=client, conversation_id="dead-at-start")
        failures: list[str] = []

        @tts.event_handler("on_connection_error")
        async def on_connection_error(service, error: str) -> None:
            failures.append(error)

        down, up = await run_test(
            tts,
            frames_to_send=[],
            ignore_start=False,  # the StartFrame is what must come through
            start_timeout=60,  # a hang guard: the start ends after one attempt at each URL
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
        if "silent" in kinds:
            await asyncio.wait_for(silent.dropped.wait(), 60)  # the attempt was given up

    # The StartFrame went on past the TTS; one non-permanent ErrorFrame says why.
    assert isinstance(down[0], StartFrame)
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1, [f.error for f in errors]
    error = errors[0]
    assert error.category is ErrorCategory.CONNECTIVITY
    assert isinstance(error.exception, ServerUnavailableError)
    assert tts.is_usable and tts.session is None  # the pipeline's end closed it
    where = urls[0] if len(urls) == 1 else ", ".join(urls)
    reasons = {
        "refusing": "connection refused (no server is listening there)",
        "silent": "no answer within connect_timeout (0.5 s)",
    }
    # One attempt at each URL (the error names why the last one failed), no backoff.
    attempts = "1 attempt" if len(urls) == 1 else f"{len(urls)} attempts"
    assert error.error == (
        f"MOSS TTS: the engine server is unreachable: cannot reach {where} after {attempts}: "
        f"{reasons[kinds[-1]]}; each reply will try to connect again"
    )
    assert failures == [str(error.exception)]
    assert silent.connections == kinds.count("silent")
    await client.aclose()
