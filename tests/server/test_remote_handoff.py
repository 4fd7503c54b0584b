"""A conversation handed from one ``MossRemoteTTSService`` to another (another process, or a bot
restarted with saved credentials): the second service, given the first's conversation id,
resume secret and resume ticket, resumes it with its history; and when the server that held it
was lost and someone else made the id anew meanwhile, the ticket (and only the ticket) takes
the id back. Credentials the server refuses (the resume ones, the token) are one clear
``ErrorFrame`` at the start, not an error per reply that never says why."""

from __future__ import annotations

import pytest
import torch
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ForbiddenError, UnauthorizedError
from moss_pipecat.server.config import RESUME_KEY_ENV
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from .conftest import GREEDY as GREEDY_SAMPLING
from .conftest import TALKATIVE, eventually
from .cues import Cue, Watcher
from .test_remote_service import reply, run

GREEDY = MossTTSSettings(greedy=True)
KEY = "handoff-test-resume-key-0123456789abcdef"


def _times(ticket: str) -> tuple[int, int]:
    """A ticket's (creation, issue) times (``server.tickets``)."""
    _, created, issued, _ = ticket.split(".")
    return int(created), int(issued)


class Handoff(FrameProcessor):
    """Upstream of the TTS: at each ``Cue``, once the watcher has seen it, snapshots the
    conversation, notes the service's credentials and awaits ``at(what)`` before the frames
    behind the cue go on."""

    def __init__(self, tts, watcher: Watcher, at) -> None:
        super().__init__()
        self.tts, self.watcher, self.at = tts, watcher, at
        self.snapshots: dict[str, dict] = {}
        self.credentials: dict[str, tuple[str, str, str]] = {}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, Cue):
            await self.push_frame(frame, direction)
            return
        if frame.reply >= 0:
            await self.watcher.reached(frame.reply, frame.frames)
        tts = self.tts
        self.snapshots[frame.what] = await tts.session.snapshot()
        self.credentials[frame.what] = (tts.session.id, tts.resume_secret, tts.resume_ticket)
        await self.at(frame.what)


async def _run(tts, frames, at=None) -> tuple[Handoff, Watcher, list]:
    async def nothing(what: str) -> None:
        return None

    watcher = Watcher()
    director = Handoff(tts, watcher, at or nothing)
    _, up = await run_test(
        Pipeline([director, tts, watcher]),
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    return director, watcher, [f for f in up if isinstance(f, ErrorFrame)]


async def test_a_second_service_resumes_the_conversation_with_the_first_one_s_credentials(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine(max_sessions=2, **TALKATIVE)  # replies speak: cues wait on audio
    server = await make_server(engine)
    first = MossRemoteTTSService(url=server.url, conversation_id="handed-1", settings=GREEDY)
    assert first.resume_secret is None and first.resume_ticket is None  # not started yet
    second: dict = {}

    async def hand_over(what: str) -> None:
        # While the first pipeline still runs (a process handing its call to another).
        cid, secret, ticket = first_run.credentials[what]
        tts = MossRemoteTTSService(
            url=server.url,
            conversation_id=cid,
            resume_secret=secret,
            resume_ticket=ticket,
            settings=GREEDY,
        )
        assert (tts.resume_secret, tts.resume_ticket) == (secret, ticket)
        frames = [Cue("resumed", -1), *reply("And ", "from here."), Cue("after", 0)]
        second["run"], _, second["errors"] = await _run(tts, frames)
        second["tts"] = tts

    watcher = Watcher()
    first_run = Handoff(first, watcher, hand_over)
    _, up = await run_test(
        Pipeline([first_run, first, watcher]),
        frames_to_send=[*reply("Hello ", "over there."), Cue("handoff", 0)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)] and not second["errors"]
    before = first_run.snapshots["handoff"]
    cid, secret, ticket = first_run.credentials["handoff"]
    assert cid == "handed-1" and secret and ticket

    # The second service found the conversation with its history, and went on with it.
    went_on, tts = second["run"], second["tts"]
    resumed, after = went_on.snapshots["resumed"], went_on.snapshots["after"]
    session = went_on.credentials["after"]
    assert torch.equal(resumed["rows"], before["rows"]) and resumed["turns"] == before["turns"]
    assert [r for r, _ in after["turns"]] == ["assistant", "assistant"]
    n = before["rows"].shape[0]
    assert torch.equal(after["rows"][:n], before["rows"])
    assert after["turn_frames"][0] == before["turn_frames"][0] and after["turn_frames"][1] > 0
    # Same conversation, same secret; its ticket refreshed (the same creation, issued later).
    assert session[:2] == (cid, secret)
    created, issued = _times(ticket)
    assert _times(session[2])[0] == created and _times(session[2])[1] > issued
    # The server kept one conversation and it ended with the second pipeline.
    assert engine.session_ids == [] and server.hub.metrics.takeovers.value() == 0
    assert tts.session is None  # ended


async def test_the_ticket_takes_the_id_back_from_whoever_made_it_anew_after_a_lost_server(
    monkeypatch, make_tiny_engine, make_server
):
    monkeypatch.setenv(RESUME_KEY_ENV, KEY)  # the servers of one deployment share the key
    a = await make_server(make_tiny_engine(**TALKATIVE))  # replies speak: cues wait on audio
    b_engine = make_tiny_engine(max_sessions=3, **TALKATIVE)
    b = await make_server(b_engine)

    async def lose_server(what: str) -> None:
        await a.stop()  # lost with the conversation (and its secret)

    owner = MossRemoteTTSService(url=a.url, conversation_id="CA2024", settings=GREEDY)
    saved, _, errors = await _run(owner, [*reply("Hello ", "there."), Cue("saved", 0)], lose_server)
    assert not errors
    cid, secret, ticket = saved.credentials["saved"]

    # Whoever knows the (guessable) id is first on b: a conversation of its own.
    squatter = await RemoteEngine(b.url).create_session(
        conversation_id=cid, sampling=GREEDY_SAMPLING
    )
    assert not squatter.resumed and squatter.resume_secret != secret

    # A bot restarted with the id and secret alone proves nothing to b (it never saw the
    # conversation): one clear refusal, no audio, and pipecat gives it no more text.
    stale = MossRemoteTTSService(
        url=b.url, conversation_id=cid, resume_secret=secret, settings=GREEDY
    )
    down, up, _ = await run(stale, [*reply("Hello ", "again."), *reply("And ", "again.")])
    refusals = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(refusals) == 1, [f.error for f in refusals]
    assert isinstance(refusals[0].exception, ForbiddenError)
    assert refusals[0].category is ErrorCategory.AUTHORIZATION
    assert refusals[0].error.startswith("MOSS TTS: this call was refused: the server refused")
    assert "resume_ticket" in refusals[0].error and secret not in refusals[0].error
    assert not stale.is_usable and not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert b.hub.metrics.resume_refused.value(reason="no_ticket") == 1

    # A restarted bot with all three takes the id back (made anew: it has no journal of the
    # lost history) and speaks; the squatter is told at once.
    bot = MossRemoteTTSService(
        url=b.url, conversation_id=cid, resume_secret=secret, resume_ticket=ticket, settings=GREEDY
    )
    refused = []

    async def squatter_calls(what: str) -> None:
        if what == "spoke":  # the bot still holds the id: the squatter cannot take it back
            await eventually(lambda: not squatter._link.alive, 10, "the squatter to be told")
            with pytest.raises(ForbiddenError, match="created earlier") as e:
                await squatter.snapshot()
            refused.append(e.value)

    frames = [Cue("taken", -1), *reply("I am back."), Cue("spoke", 0)]
    back, watcher, errors = await _run(bot, frames, squatter_calls)
    assert not errors and watcher.frames[watcher.contexts[0]] > 0
    assert b.hub.metrics.takeovers.value() == 1
    taken, spoke = back.snapshots["taken"], back.snapshots["spoke"]
    assert taken["turns"] == [] and [r for r, _ in spoke["turns"]] == ["assistant"]
    assert back.credentials["spoke"][:2] == (cid, secret)
    assert _times(back.credentials["spoke"][2])[0] == _times(ticket)[0]  # the first creation
    assert len(refused) == 1
    assert b.hub.metrics.resume_refused.value(reason="ticket_newer") == 1
    assert b_engine.session_ids == []  # the squatter's was closed, the bot's ended with it
    await squatter.close()


async def test_a_refused_token_is_one_error_frame(make_tiny_engine, make_server):
    server = await make_server(make_tiny_engine(), token="right-token")
    tts = MossRemoteTTSService(url=server.url, token="wrong-token", settings=GREEDY)
    down, up, _ = await run(tts, [*reply("Hello ", "there."), *reply("And ", "again.")])
    refusals = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(refusals) == 1, [f.error for f in refusals]
    assert isinstance(refusals[0].exception, UnauthorizedError)
    assert refusals[0].category is ErrorCategory.AUTHENTICATION
    assert refusals[0].error.startswith("MOSS TTS: this call was refused: the server refused")
    assert "wrong-token" not in refusals[0].error and "right-token" not in refusals[0].error
    assert not tts.is_usable and not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert server.hub.engine.session_ids == []
