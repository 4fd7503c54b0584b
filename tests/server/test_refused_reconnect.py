"""A reconnect of a conversation that the server refuses (its token rotated away, the
conversation taken over by whoever holds its resume ticket) is what no retry heals: one
permanent ErrorFrame, as for a refused start, and pipecat gives the service no more text;
not a non-permanent "reply failed" for every reply, which would never say it is over. A full
server is the exception: a call under way that a reconnect finds no room for fails that reply
(rate limit) and speaks again once there is room."""

from __future__ import annotations

from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.client import RemoteEngine
from moss_pipecat.errors import CapacityError
from moss_pipecat.protocol.errors import ForbiddenError, UnauthorizedError
from moss_pipecat.server import EngineServer, ServerConfig
from moss_pipecat.server.config import RESUME_KEY_ENV
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from .conftest import TALKATIVE, eventually, free_port
from .cues import Cue
from .test_remote_handoff import KEY, _run
from .test_remote_service import reply

GREEDY = MossTTSSettings(greedy=True)


async def lost_link(tts: MossRemoteTTSService) -> None:
    """Until the service's session knows its connection is gone (its next reply reconnects)."""
    session = tts.session
    await eventually(lambda: not session._link.alive, 10, "the client to see its link closed")


def assert_one_refusal(errors: list[ErrorFrame], tts, kind: type, category: ErrorCategory):
    assert len(errors) == 1, [f.error for f in errors]
    (refusal,) = errors
    assert isinstance(refusal.exception, kind) and refusal.category is category
    assert refusal.error.startswith("MOSS TTS: this call was refused: the server refused")
    assert not tts.is_usable  # pipecat's permanent error: no more text for it


async def test_a_token_the_server_no_longer_takes_ends_the_service_at_the_reconnect(
    make_tiny_engine,
):
    engine = make_tiny_engine(max_sessions=2, **TALKATIVE)
    port = free_port()

    def server(token: str) -> EngineServer:
        return EngineServer(engine, ServerConfig(host="127.0.0.1", port=port, token=token))

    servers = {"old": await server("old-token").start()}
    tts = MossRemoteTTSService(
        url=f"ws://127.0.0.1:{port}", token="old-token", conversation_id="rotated", settings=GREEDY
    )

    async def rotate(what: str) -> None:  # a redeploy with another token
        await servers["old"].stop()
        await lost_link(tts)
        servers["new"] = await server("new-token").start()

    frames = [
        *reply("Hello ", "there."),
        Cue("rotate", 0),
        *reply("And ", "again."),
        *reply("Once ", "more."),
    ]
    try:
        _, watcher, errors = await _run(tts, frames, rotate)
    finally:
        for s in servers.values():
            await s.stop()
    assert_one_refusal(errors, tts, UnauthorizedError, ErrorCategory.AUTHENTICATION)
    assert "old-token" not in errors[0].error and "new-token" not in errors[0].error
    assert len(watcher.contexts) == 1  # the first reply spoke; none after the refusal
    assert servers["new"].hub.metrics.refused.value(reason="unauthorized") == 1  # one try
    assert engine.session_ids == []


async def test_a_conversation_taken_back_with_its_ticket_ends_the_other_service(
    monkeypatch, make_tiny_engine, make_server
):
    monkeypatch.setenv(RESUME_KEY_ENV, KEY)  # the servers of one deployment share the key
    a = await make_server(make_tiny_engine())
    b_engine = make_tiny_engine(max_sessions=3, **TALKATIVE)
    b = await make_server(b_engine)
    # The conversation's owner, whose server is then lost with it.
    owner = await RemoteEngine(a.url).create_session(conversation_id="taken-1")
    await a.stop()

    # A service that made the id anew on b (it never held it before) speaks, until the owner
    # takes the id back with its ticket.
    tts = MossRemoteTTSService(url=b.url, conversation_id="taken-1", settings=GREEDY)
    back: list = []

    async def take_back(what: str) -> None:
        back.append(
            await RemoteEngine(b.url).create_session(
                conversation_id="taken-1",
                resume_secret=owner.resume_secret,
                resume_ticket=owner.resume_ticket,
            )
        )
        await lost_link(tts)  # the server closed it (forbidden)

    frames = [
        *reply("Hello ", "there."),
        Cue("take", 0),
        *reply("And ", "again."),
        *reply("Once ", "more."),
    ]
    _, watcher, errors = await _run(tts, frames, take_back)
    assert_one_refusal(errors, tts, ForbiddenError, ErrorCategory.AUTHORIZATION)
    assert len(watcher.contexts) == 1
    assert b.hub.metrics.takeovers.value() == 1
    # One reconnect, refused once: not one refusal per reply.
    assert b.hub.metrics.resume_refused.value(reason="ticket_newer") == 1
    (taken,) = back
    assert taken.resume_secret == owner.resume_secret and b_engine.session_ids == [taken.id]
    await taken.close()
    await owner.close()


class Director(FrameProcessor):
    """Upstream of the TTS: at each ``Cue`` awaits ``at(what)`` before the frames behind it go
    on (no snapshot: the service may be unconnected there)."""

    def __init__(self, at) -> None:
        super().__init__()
        self.at = at

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, Cue):
            await self.at(frame.what)
        else:
            await self.push_frame(frame, direction)


async def test_a_full_server_fails_the_reply_of_a_call_under_way_and_the_next_one_speaks(
    make_tiny_engine,
):
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.task import PipelineParams
    from pipecat.tests.utils import run_test

    from .cues import Watcher

    port = free_port()

    def server(engine) -> EngineServer:
        return EngineServer(engine, ServerConfig(host="127.0.0.1", port=port))

    servers = {"old": await server(make_tiny_engine(max_sessions=1, **TALKATIVE)).start()}
    new_engine = make_tiny_engine(max_sessions=1, **TALKATIVE)
    tts = MossRemoteTTSService(
        url=f"ws://127.0.0.1:{port}", conversation_id="moved", settings=GREEDY
    )
    occupant: list = []

    async def at(what: str) -> None:
        if what == "lose":  # its server is lost; the next one is full (another call holds it)
            await watcher.reached(0, None)
            await servers["old"].stop()
            await lost_link(tts)
            servers["new"] = await server(new_engine).start()
            occupant.append(await RemoteEngine(servers["new"].url).create_session())
        elif what == "room":  # once the reply met the full server, its call ends
            refused = servers["new"].hub.metrics.conversations_refused
            await eventually(lambda: refused.value(reason="full") >= 1, 30, "the refusal")
            await occupant[0].close()
            await eventually(lambda: not new_engine.session_ids, 30, "the slot to free")

    watcher = Watcher()
    frames = [
        *reply("Hello ", "there."),
        Cue("lose", 0),
        *reply("And ", "again."),
        Cue("room", -1),
        *reply("Once ", "more."),
    ]
    try:
        _, up = await run_test(
            Pipeline([Director(at), tts, watcher]),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    finally:
        for s in servers.values():
            await s.stop()
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    ours = [f for f in errors if isinstance(f.exception, CapacityError)]
    assert len(ours) == 1, [f.error for f in errors]
    assert ours[0].category is ErrorCategory.RATE_LIMIT and not ours[0].fatal
    assert ours[0].error.startswith("MOSS TTS reply failed:")
    assert tts.is_usable  # not written off: the call goes on
    assert len(watcher.contexts) == 2  # the first reply and the third (on the new server) spoke
    assert servers["new"].hub.metrics.conversations_refused.value(reason="full") == 1
