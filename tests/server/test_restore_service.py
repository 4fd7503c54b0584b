"""A call through ``MossRemoteTTSService`` survives ``kill -9`` of its server (issue #24): the
server is killed in the middle of a reply and restarted on the same port; the next reply
restores the conversation from the client's journal and goes on, and the new server holds the
rows the old one held, and the reply that was in flight cut at what was heard: every frame the
service pushed, which plays on (its rows exactly: ``test_restore_inflight``)."""

from __future__ import annotations

import torch
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.tests.utils import run_test

from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.conftest import user_audio_frames
from .cues import Cue, CueDirector, Watcher
from .processes import ServerProcess
from .test_remote_service import reply

LONG = [w + " " for w in ("This reply goes on and on for quite a while " * 4).split()]


class Director(CueDirector):
    """Waits until the watcher has seen what a cue waits for, then does it: a barge-in, a
    snapshot, or a snapshot and ``kill -9`` of the server and a new one on its port."""

    async def cue(self, frame: Cue) -> None:
        await self.watcher.reached(frame.reply, frame.frames)
        if frame.what == "barge-in":
            await self.push_frame(InterruptionFrame())
            return
        self.session = self.tts.session
        self.snapshots[frame.what] = await self.session.snapshot()
        if frame.what == "kill":
            await self.server.restart()


async def test_a_call_goes_on_with_its_history_after_kill_9(fixtures_dir, tmp_path):
    async with ServerProcess(fixtures_dir, tmp_path / "server.log") as server:
        tts = MossRemoteTTSService(url=server.url, settings=MossTTSSettings(greedy=True))
        watcher = Watcher()
        director = Director(tts, watcher, server)
        frames = [
            *reply("Hello ", "over the ", "network."),
            Cue("hello", 0),
            UserStartedSpeakingFrame(),
            *user_audio_frames(0.8),
            UserStoppedSpeakingFrame(),
            TranscriptionFrame("Nice to hear", "user", "2026-12-03"),
            *reply(*LONG),
            Cue("barge-in", 1, 5),  # cut to what was heard
            *reply("Short ", "one."),
            Cue("finished", 2),  # the history before the reply in flight at the kill
            *reply(*LONG),
            Cue("kill", 3, 5),  # mid-reply
            *reply("After ", "the restart."),
            Cue("after", 4),
        ]
        _, up = await run_test(
            Pipeline([director, tts, watcher]),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    snaps = director.snapshots
    finished, killed, after = snaps["finished"], snaps["kill"], snaps["after"]
    session = director.session

    # The user turn (its speech passes at once) and "Hello", the barge-in reply (unless
    # nothing of it had been heard) and "Short one.".
    roles = [r for r, _ in finished["turns"]]
    assert roles.count("user") == 1 and roles.count("assistant") in (2, 3), roles
    n = finished["rows"].shape[0]
    # Just before the kill: the finished history and the reply in flight.
    assert killed["phase"] != "idle" and killed["rows"].shape[0] > n
    assert torch.equal(killed["rows"][:n], finished["rows"])
    # The new server: the finished history, restored row for row, and the reply after it.
    assert session.restored == 1 and session.history_lost == 0 and not session.resumed
    assert [r for r, _ in after["turns"]] == [*roles, "assistant", "assistant"]
    assert torch.equal(after["rows"][:n], finished["rows"])
    heard = watcher.frames[watcher.contexts[3]]  # all it pushed plays: all of it was heard
    assert after["turn_frames"] == [*finished["turn_frames"], heard, after["turn_frames"][-1]]
    assert heard >= 5 and after["turn_frames"][-1] > 0
    # The reply in flight failed with the server (an ErrorFrame), and only it.
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert errors and all("restore" not in e for e in errors), errors
    assert len(watcher.contexts) == 5  # every reply spoke, the one cut by the kill too
