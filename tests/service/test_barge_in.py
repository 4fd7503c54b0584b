"""Barge-ins at any moment leave the conversation well formed and the service able to speak."""

from __future__ import annotations

import random

import pytest
from pipecat.frames.frames import (
    DataFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import SleepFrame

from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import Probe
from .test_moss_tts_service import contexts_of, reply, run


class SnapshotAfterInterruption(MossTTSService):
    """Reads the session once each interruption's cut has ended (``history_settled``), before
    any later frame reaches the service (its input waits meanwhile): no later reply can blur
    it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.after_interruption: list[dict] = []

    async def process_frame(self, frame, direction) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            await self.history_settled()
            self.after_interruption.append(await self.session.snapshot())


# Where a barge-in lands relative to a reply.
MOMENTS = (
    "before_text",  # the reply started, no text yet
    "opening",  # first token in: its engine turn is being opened
    "first_audio",  # right around its first audio
    "mid_audio",  # while it speaks
    "after_end",  # its text ended, its audio still coming
    "second_waits",  # a TTSSpeakFrame waits behind the streaming reply
)


def barge_ins(rng: random.Random, n: int) -> tuple[list, list[str]]:
    frames, moments = [], []
    for i in range(n):
        moment = rng.choice(MOMENTS)
        moments.append(moment)
        tokens = [LLMTextFrame(f"word{i}x{k} ") for k in range(rng.randint(2, 10))]
        frames.append(LLMFullResponseStartFrame())
        if moment == "opening":
            frames.append(tokens[0])
        elif moment == "first_audio":
            frames += [*tokens, SleepFrame(rng.uniform(0.0, 0.04))]
        elif moment == "mid_audio":
            frames += [*tokens, SleepFrame(rng.uniform(0.04, 0.2))]
        elif moment == "after_end":
            frames += [*tokens, LLMFullResponseEndFrame(), SleepFrame(rng.uniform(0.0, 0.1))]
        elif moment == "second_waits":
            frames += [tokens[0], TTSSpeakFrame("And one more thing."), *tokens[1:]]
            frames.append(SleepFrame(rng.uniform(0.0, 0.1)))
        frames.append(InterruptionFrame())
    return frames, moments


# 12 seeds x 30: 360 barge-ins at random moments (each moment ~60 times) per run.
@pytest.mark.parametrize("seed", range(12))
async def test_thirty_barge_ins_in_a_row_then_the_next_reply_speaks(talkative_engine, seed):
    rng = random.Random(seed)
    tts = SnapshotAfterInterruption(
        engine=talkative_engine,
        settings=MossTTSSettings(greedy=True, lookahead_s=rng.choice([0.3, 1.0])),
    )
    frames, moments = barge_ins(rng, 30)
    frames += [*reply("That is ", "all for now."), SleepFrame(1.0), Probe()]
    down, up, snaps = await run(tts, frames)
    assert not [f.error for f in up if isinstance(f, ErrorFrame)], moments
    # Right after every barge-in, no engine turn is left open (none orphaned)...
    assert [s["phase"] for s in tts.after_interruption] == ["idle"] * 30, moments
    # ... and after the last reply either. The history stays well formed: assistant turns
    # only (no user audio here), and the cache never holds more than the rows.
    (last,) = snaps
    assert last["phase"] == "idle"
    assert all(role == "assistant" for role, _ in last["turns"])
    assert last["cache_len"] <= last["rows"].shape[0]
    final = contexts_of(down)[-1]
    assert sum(isinstance(f, TTSAudioRawFrame) and f.context_id == final for f in down) > 0
    assert tts.session is None  # closed with the pipeline


class Reset(DataFrame):
    """The bot's code resets the conversation here (``reset_conversation``)."""


class Resetter(FrameProcessor):
    """Before the service: does what ``Reset`` says, in the order of the frames."""

    def __init__(self, tts) -> None:
        super().__init__()
        self.tts = tts

    async def process_frame(self, frame, direction) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, Reset):
            await self.tts.reset_conversation()
        else:
            await self.push_frame(frame, direction)


@pytest.mark.parametrize("pause_s", [0.3, 0.8])
async def test_a_reset_right_after_a_barge_in_comes_after_its_cut(talkative_engine, pause_s):
    """The cut runs beside the frames; a reset right behind the barge-in comes after it
    (``reset_conversation`` waits for the cuts under way): the history holds only what was
    said after the reset, and nothing fails."""
    tts = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    frames = [*reply("This reply is cut ", "and then forgotten ", "by a reset right away.")]
    frames += [SleepFrame(pause_s), InterruptionFrame(), Reset(), *reply("A fresh start.")]
    frames += [SleepFrame(2.0), Probe()]
    down, up, snaps = await run(tts, frames, before=(Resetter(tts),))
    assert not [f.error for f in up if isinstance(f, ErrorFrame)]
    (snap,) = snaps
    assert [role for role, _ in snap["turns"]] == ["assistant"]  # the fresh start alone
    assert snap["phase"] == "idle"
    assert sum(isinstance(f, TTSAudioRawFrame) for f in down) > 0
