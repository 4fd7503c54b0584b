"""MossRemoteTTSService's reply spans carry the server conversation and its reconnects."""

from __future__ import annotations

from opentelemetry.trace import StatusCode
from pipecat.frames.frames import ErrorFrame
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.client import RemoteEngine
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.tracing_helpers import tts_spans
from .conftest import TALKATIVE, eventually
from .test_remote_service import reply


class BreakBeforeSecondReply(MossRemoteTTSService):
    """Breaks the connection once the first reply's engine turn is over, right before the
    second reply opens its own (``_apply_settings`` runs just before ``start_turn``)."""

    def __init__(self, *, server=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.server = server  # stopped for good: the second reply fails
        self.opened = 0
        self.conversation_id: str | None = None

    async def _apply_settings(self) -> None:
        self.opened += 1
        if self.opened == 2:
            session = self.session
            self.conversation_id = session.id
            if self.server is not None:
                await self.server.stop()
            else:
                link = session._link
                link.ws.transport.abort()  # TCP reset: the next request reconnects
                await eventually(lambda: not link.alive, what="the client to see the reset")
        await super()._apply_settings()


async def test_remote_reply_spans_carry_the_conversation_and_reconnects(
    make_tiny_engine, make_server, span_exporter, traced_pipelines
):
    server = await make_server(make_tiny_engine(max_sessions=2, **TALKATIVE))  # replies speak
    tts = BreakBeforeSecondReply(url=server.url, settings=MossTTSSettings(greedy=True))
    frames = [*reply("First ", "reply."), *reply("After ", "the reset."), SleepFrame(0.5)]
    _, up = await run_test(tts, frames_to_send=frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]

    first, second = (s.attributes for s in tts_spans(span_exporter))
    assert first["moss.conversation_id"] == second["moss.conversation_id"]
    assert first["moss.conversation_id"] == tts.conversation_id
    assert (first["moss.reconnects"], second["moss.reconnects"]) == (0, 1)
    assert second["moss.history_lost"] == 0  # the server kept the conversation
    for attrs in (first, second):
        assert attrs["tts.interrupted"] is False
        assert attrs["moss.heard_frames"] == attrs["moss.frames"] > 0


async def test_a_failed_remote_reply_is_an_error_span(
    make_tiny_engine, make_server, span_exporter, traced_pipelines
):
    server = await make_server(make_tiny_engine(max_sessions=2))
    remote = RemoteEngine(server.url, reconnect_timeout=0.5)
    tts = BreakBeforeSecondReply(
        remote=remote, server=server, settings=MossTTSSettings(greedy=True)
    )
    frames = [*reply("First ", "reply."), *reply("Never ", "spoken."), SleepFrame(0.5)]
    try:
        _, up = await run_test(tts, frames_to_send=frames)
    finally:
        await remote.aclose()
    assert [f for f in up if isinstance(f, ErrorFrame)]

    first, failed = tts_spans(span_exporter)
    assert first.status.status_code != StatusCode.ERROR
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["moss.frames"] == 0
    assert failed.attributes["tts.interrupted"] is False
