"""MossRemoteTTSService: the pipecat behaviour of MossTTSService, over the engine server."""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.conftest import Probe, SnapshotProbe, UrgentProbe, user_audio_frames
from .conftest import TALKATIVE

GREEDY = MossTTSSettings(greedy=True)


def reply(*pieces: str) -> list:
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in pieces),
        LLMFullResponseEndFrame(),
    ]


async def run(tts, frames, sample_rate=24000):
    probe = SnapshotProbe(tts)
    down, up = await run_test(
        Pipeline([tts, probe]),
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=sample_rate),
    )
    return down, up, probe.snapshots


def pcm(frames) -> np.ndarray:
    audio = b"".join(f.audio for f in frames if isinstance(f, TTSAudioRawFrame))
    return np.frombuffer(audio, dtype=np.int16).astype(int)


async def test_remote_conversation_matches_the_local_service(make_tiny_engine, make_server):
    engine = make_tiny_engine(max_sessions=4, **TALKATIVE)  # every reply speaks its words
    server = await make_server(engine, token="secret")
    frames = [
        *reply("Hello ", "over the ", "network."),
        SleepFrame(0.6),
        UserStartedSpeakingFrame(),
        *user_audio_frames(0.8),
        UserStoppedSpeakingFrame(),
        TranscriptionFrame("Nice to hear", "user", "2026-11-23"),
        *reply("Same ", "voice ", "as before."),
        SleepFrame(0.6),
        Probe(),
    ]
    remote = MossRemoteTTSService(url=server.url, token="secret", settings=GREEDY)
    down_r, up_r, (snap_r,) = await run(remote, frames, sample_rate=16000)
    local = MossTTSService(engine=engine, settings=GREEDY)
    down_l, _, (snap_l,) = await run(local, frames, sample_rate=16000)

    assert not [f for f in up_r if isinstance(f, ErrorFrame)]
    assert [r for r, _ in snap_r["turns"]] == ["assistant", "user", "assistant"]
    assert snap_r["turns"] == snap_l["turns"]
    a, b = pcm(down_r), pcm(down_l)
    assert a.size > 0 and a.size == b.size and np.abs(a - b).max() <= 2
    words = " ".join(f.text for f in down_r if isinstance(f, TTSTextFrame)).split()
    assert words == "Hello over the network. Same voice as before.".split()
    assert engine.session_ids == []  # the pipeline's end closed the conversation


async def test_remote_interruption_and_settings(make_tiny_engine, make_server):
    engine = make_tiny_engine(max_sessions=2, **TALKATIVE)
    server = await make_server(engine)
    long = [w + " " for w in ("This reply goes on and on " * 5).split()]
    frames = [
        TTSUpdateSettingsFrame(delta=MossTTSSettings(lookahead_s=0.4, top_k=7, greedy=True)),
        *reply(*long),
        SleepFrame(0.4),
        InterruptionFrame(),
        UrgentProbe(),
        SleepFrame(0.3),
        *reply("Short ", "one."),
        SleepFrame(0.5),
        Probe(),
    ]
    down, up, (after_cut, after_next) = await run(MossRemoteTTSService(url=server.url), frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    old = {f.context_id for f in down[:cut] if isinstance(f, TTSAudioRawFrame)}
    new = {f.context_id for f in down[cut:] if isinstance(f, TTSAudioRawFrame)}
    assert len(old) == 1 and len(new) == 1 and not old & new
    assert after_next["sampling"].top_k == 7
    kept = after_cut["rows"].shape[0] - after_cut["system_rows"]
    pushed = sum(isinstance(f, TTSAudioRawFrame) for f in down[:cut])
    assert kept <= 3 + 12 + pushed + 1  # rolled back to at most what was sent


class _StopServerBeforeReply(FrameProcessor):
    """Before the TTS: holds the second reply until the first one has ended (``first_done``)
    and the server is stopped, so the first reply is whole and the second meets no server."""

    def __init__(self, server) -> None:
        super().__init__()
        self.server, self.first_done, self._replies = server, asyncio.Event(), 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseStartFrame):
            self._replies += 1
            if self._replies == 2:
                await self.first_done.wait()
                await self.server.stop()
        await self.push_frame(frame, direction)


class _ReplyEnded(FrameProcessor):
    """After the TTS: sets ``done`` when the first reply's audio has ended."""

    def __init__(self, done: asyncio.Event) -> None:
        super().__init__()
        self.done = done

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSStoppedFrame):
            self.done.set()
        await self.push_frame(frame, direction)


async def test_lost_server_is_an_error_frame_not_a_hang(make_tiny_engine, make_server):
    engine = make_tiny_engine(max_sessions=2, **TALKATIVE)  # the first reply speaks
    server = await make_server(engine)
    tts = MossRemoteTTSService(url=server.url)
    gate = _StopServerBeforeReply(server)
    frames = [*reply("First ", "works."), *reply("Second ", "fails.")]
    down, up = await asyncio.wait_for(
        run_test(
            Pipeline([gate, tts, _ReplyEnded(gate.first_done)]),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        ),
        timeout=60,
    )
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors, "the lost server must surface as an ErrorFrame"
    assert len({f.context_id for f in down if isinstance(f, TTSAudioRawFrame)}) == 1
