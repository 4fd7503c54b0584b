"""Random conversations through ``MossRemoteTTSService`` whose server is killed (``kill -9``)
at a random moment and started again on its port while the conversation goes on: the LLM
context and the history on the new server agree as in ``tests/service/
test_random_conversations.py`` (whose draws and rules these are).

The reply the kill hits fails (one ``ErrorFrame``) and keeps what it had pushed, which plays
on, with no cut reported (``on_reply_interrupted``): its message is a start of its text, and
the history restored on the new server holds it as heard (``test_restore_service`` holds that
one moment exactly). A barge-in whose cut meets the dead server has the restore carry the cut,
which the journal reports as MOSS would have. Found that a barge-in's cut held every later
frame back until the server was back (``test_barge_in_while_down``).
"""

from __future__ import annotations

import asyncio
import random

import pytest
from pipecat.frames.frames import DataFrame, ErrorFrame, Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from ..service.conftest import Probe, assistant_aggregator
from ..service.test_context_race import Barger, assistant_messages, record_cuts
from ..service.test_heard_clock import PlayingOutputTransport
from ..service.test_random_conversations import check_context_and_history, draw, mode
from .processes import ServerProcess
from .test_barge_in_while_down import SettledSnapshot, call_through_outages

CONVERSATIONS = 2  # per fixture set, each 10 to 30 s


class Kill(DataFrame):
    """``kill -9`` of the server here; a new one starts on its port, the frames going on."""


class Killer(FrameProcessor):
    """At the head of the pipeline: does what ``Kill`` says; holds the ``Probe`` at the end
    until the new server is up, and the frames behind it (the pipeline's end) until
    ``settled`` has read the session."""

    def __init__(self, server: ServerProcess, settled: SettledSnapshot) -> None:
        super().__init__()
        self.server, self.settled = server, settled
        self.starting: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, Kill):
            self.server.kill()
            # Not awaited here: an interruption would cancel this frame's processing.
            self.starting = asyncio.ensure_future(self.server.start())
            return
        if isinstance(frame, Probe) and self.starting is not None:
            await self.starting
        await self.push_frame(frame, direction)
        if isinstance(frame, Probe):
            await self.settled.done.wait()


@pytest.mark.parametrize("n", range(CONVERSATIONS))
async def test_a_conversation_through_a_server_killed_keeps_context_and_history_agreeing(
    fixtures_dir, tmp_path, realtime_meta, n
):
    rnd = random.Random(f"kill/{realtime_meta.get('variant', '')}/{n}")
    aggregation = mode(rnd)
    frames, texts, unspoken = draw(rnd)
    sleeps = [i for i, f in enumerate(frames) if isinstance(f, SleepFrame)]
    frames.insert(rnd.choice(sleeps[:-1] or sleeps), Kill())  # before a pause, not the last
    async with call_through_outages(fixtures_dir, tmp_path, aggregation) as (server, tts):
        context, settled = LLMContext(), SettledSnapshot(tts)
        assistant = assistant_aggregator(context)
        cuts = record_cuts(tts)
        pipeline = [Killer(server, settled), Barger(), tts, settled, PlayingOutputTransport()]
        _, up = await run_test(
            Pipeline([*pipeline, assistant]),
            frames_to_send=[*frames, Probe()],
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) <= 1 and all("connection to the server lost" in e for e in errors)
    assert settled.restored <= 1 and settled.history_lost == 0  # none if nothing was said yet
    turns = [role for role, _ in settled.snapshot["turns"] if role == "assistant"]
    # One reply may be cut with no cut reported: the one playing when the server died (it
    # failed; a barge-in on what it had pushed reports its cut).
    check_context_and_history(texts, unspoken, assistant_messages(context), cuts, turns, lost=1)
