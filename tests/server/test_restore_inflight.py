"""The reply in flight when the server is ``kill -9``ed is kept in the history, cut at what the
caller heard (issue #24), through ``MossRemoteTTSService`` with pipecat's assistant aggregator.

The reply's text is streamed but not ended, so its turn speaks all it has and waits for more
(its last frame generated, never fed): the old server's snapshot then holds every row of it
but that frame's, which the client received with its audio. Every frame the service pushed
plays (nothing stops it), so the service keeps all of them: the new server's rows are the old
server's plus the engine's own cut of the reply at that point, and the LLM context's message
for that reply holds exactly the units placed in those frames."""

from __future__ import annotations

import asyncio

import torch
from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import run_test

from moss_pipecat.client import RemoteEngine
from moss_pipecat.engine.history import AssistantTurn
from moss_pipecat.engine.text import layout_from_golden
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService
from moss_pipecat.speech.units import join_units

from ..service.conftest import assistant_aggregator, user_audio_frames
from .cues import Cue, CueDirector, Watcher
from .processes import ServerProcess
from .test_remote_service import reply

WAITING = [
    w + " "
    for w in (
        "Then the reply goes on for a while and at the end of these words it waits here "
        "for more of its text to come, which never does"
    ).split()
]


class ChunkLog:
    """A ``RemoteEngine`` whose sessions' turns record every chunk the service reads."""

    def __init__(self, engine: RemoteEngine) -> None:
        self.engine, self.turns = engine, []

    async def create_session(self, **kwargs):
        return _Session(await self.engine.create_session(**kwargs), self.turns)


class _Session:
    def __init__(self, session, turns) -> None:
        self._session, self._turns = session, turns

    def __getattr__(self, name):
        return getattr(self._session, name)

    async def start_turn(self, *args, **kwargs):
        self._turns.append([])
        return _Turn(await self._session.start_turn(*args, **kwargs), self._turns[-1])


class _Turn:
    def __init__(self, turn, chunks) -> None:
        self._turn, self._chunks = turn, chunks

    def __getattr__(self, name):
        return getattr(self._turn, name)

    def __aiter__(self):
        return self._read()

    async def _read(self):
        async for chunk in self._turn:
            self._chunks.append(chunk)
            yield chunk


class Director(CueDirector):
    """``stall`` waits until the reply's turn has spoken all the text it has (the server's
    snapshot, taken after each frame out, says its frames reached the text's end, and all of
    them came out), snapshots it, kills the server and starts a new one on its port; ``ended``
    waits for the reply's end; others snapshot."""

    def __init__(self, tts, watcher: Watcher, delay: int, server: ServerProcess) -> None:
        super().__init__(tts, watcher, server)
        self.delay = delay

    async def cue(self, frame: Cue) -> None:
        session = self.session = self.tts.session
        if frame.what == "stall":
            await self.watcher.reached(frame.reply, 1)
            while True:
                self.watcher.changed.clear()  # a frame out after the snapshot wakes the loop
                snap = await session.snapshot()
                text = snap["turns"][-1][1]
                frames = text - min(text, self.delay) + 1  # its last text id is in its rows
                out = self.watcher.frames[self.watcher.contexts[frame.reply]]
                if snap["turn_frames"][-1] == frames and out == frames:
                    break
                # Woken by a frame, never by a timer (the bound: a hang guard).
                await asyncio.wait_for(self.watcher.changed.wait(), 60)
            self.snapshots["stall"] = snap
            await self.server.restart()
            return
        await self.watcher.reached(frame.reply, frame.frames)
        if frame.what != "ended":
            self.snapshots[frame.what] = await session.snapshot()


def engine_cut(layout, snap: dict, chunks: list, heard: int, more_ids=()) -> torch.Tensor:
    """The rows the old server would hold after interrupting its turn in flight after
    ``heard`` frames: its snapshot's rows, the turn rebuilt from them and from its frames'
    codes (and ``more_ids``, text ids it took and fed no row with yet), cut by the engine's
    own ``AssistantTurn.close``."""
    text = snap["turns"][-1][1]
    lead, n = layout.lead(text), len(chunks)
    start = snap["rows"].shape[0] - (lead + n - 1)  # its prompt, then a row per frame fed
    body = snap["rows"][start:]
    frames = [c.codes.to(torch.int64) for c in chunks]
    assert torch.equal(body[lead:, 1:], torch.stack(frames[:-1]))  # the codes the rows hold
    ids = body[:, 0].tolist() + list(more_ids)
    turn = AssistantTurn(ids, lead, body[:lead], list(body[lead:]), frames)
    turn.close(layout, heard)
    return torch.cat((snap["rows"][:start], turn.body()))


async def test_the_reply_in_flight_at_kill_9_is_kept_cut_at_what_was_heard(
    fixtures_dir, realtime_meta, codec_rate, tmp_path
):
    layout = layout_from_golden(realtime_meta)
    async with ServerProcess(fixtures_dir, tmp_path / "server.log") as server:
        engine = ChunkLog(RemoteEngine(server.url, reconnect_timeout=120))
        tts = MossRemoteTTSService(remote=engine, settings=MossTTSSettings(greedy=True))
        watcher = Watcher()
        director = Director(tts, watcher, layout.delay, server)
        context = LLMContext()
        assistant = assistant_aggregator(context)
        frames = [
            *reply("Hello ", "over the ", "network."),
            Cue("hello", 0),
            UserStartedSpeakingFrame(),
            *user_audio_frames(0.8),
            UserStoppedSpeakingFrame(),
            TranscriptionFrame("Nice to hear", "user", "2026-12-03"),
            LLMFullResponseStartFrame(),
            *(LLMTextFrame(w) for w in WAITING),
            Cue("stall", 1),  # all its text spoken, waiting for more: kill -9
            LLMFullResponseEndFrame(),
            Cue("ended", 1),  # the reply's audio and words out, as they play
            *reply("After ", "the restart."),
            Cue("after", 2),
        ]
        try:
            _, up = await run_test(
                Pipeline([director, tts, watcher, assistant]),
                frames_to_send=frames,
                # At the codec's rate: one audio frame a frame as it comes (a resampler may
                # hold a frame's audio back until more comes, and this reply's waits).
                pipeline_params=PipelineParams(audio_out_sample_rate=codec_rate),
            )
        finally:
            await engine.engine.aclose()
    session = director.session

    snaps = director.snapshots
    hello, stall, after = snaps["hello"], snaps["stall"], snaps["after"]
    lost = engine.turns[1]
    heard = len(lost)
    assert heard == stall["turn_frames"][-1] == watcher.frames[watcher.contexts[1]] > 1
    expected = engine_cut(layout, stall, lost, heard)
    assert torch.equal(stall["rows"][: hello["rows"].shape[0]], hello["rows"])
    # The new server: the history restored with the reply cut where it was heard, then the
    # reply after the restart.
    assert session.restored == 1 and session.history_lost == 0
    # (The user's speech passes the director at once: its turn may come before "Hello".)
    roles = [r for r, _ in hello["turns"]]
    assert sorted(roles) == ["assistant", "user"]
    assert [r for r, _ in after["turns"]] == [*roles, "assistant", "assistant"]
    assert after["turn_frames"] == [*hello["turn_frames"], heard, after["turn_frames"][-1]]
    assert after["turn_frames"][-1] > 0
    assert torch.equal(after["rows"][: expected.shape[0]], expected)
    # The LLM context holds what the caller heard of it: the units placed in those frames.
    units = [w for chunk in lost for w in chunk.words]
    messages = [m["content"] for m in context.get_messages() if m["role"] == "assistant"]
    assert len(messages) == 3, messages
    assert messages[1] == join_units(units) and units
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert errors and all("restore" not in e for e in errors), errors
