"""A barge-in while the server is down: ``MossRemoteTTSService`` goes on passing frames, and
the next barge-in drops the reply sent meanwhile (found by random conversations with kills).

Cutting the engine history back to what was heard waits for the server (the client
reconnects, then restores the conversation with the cut reply). That cut ran inside the
service's handling of the ``InterruptionFrame``, which pipecat runs on the service's input
task: every frame behind it waited until the server was back, system frames too (the next
interruption, the bot's speaking frames, a cancel). pipecat takes the system frames waiting
there ahead of the data frames, so once the server returned, the next interruption passed
first and the reply it should have dropped was spoken after it. The cut now runs beside the
frames (``interruption.Rollbacks``); a reply opens its turn once the cut has ended.
"""

from __future__ import annotations

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    SystemFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.test_back_to_back import spacing
from ..service.test_cjk_replies import unit_prefixes
from ..service.test_context_race import assistant_messages
from ..service.test_heard_clock import LATENCY_S, PlayingOutputTransport
from .cues import Cue, CueDirector, Watcher
from .processes import speaking_server
from .test_remote_service import reply

FIRST = "This first reply goes on for a while so that the server dies in the middle of it."
NEVER = "This reply came before the second barge-in and was never heard."
AFTER = "After the restart."


class Marker(SystemFrame):
    """A system frame sent behind the second barge-in."""


class Outage(CueDirector):
    """``kill``: ``kill -9`` of the server, nothing started in its place; ``start``: a new
    server on its port (the frames behind the cue wait until it is ready); ``snapshot``: the
    service's session, once every cut has ended."""

    down = False

    async def cue(self, frame: Cue) -> None:
        await self.watcher.reached(frame.reply, frame.frames)
        if frame.what == "kill":
            self.server.kill()
            self.down = True
        elif frame.what == "start":
            await self.server.start()
            self.down = False
        else:
            await self.tts.history_settled()
            self.session = self.tts.session
            self.snapshots[frame.what] = await self.session.snapshot()


class MarkerSeen(FrameProcessor):
    """Right after the service: whether the marker passed it while the server was down."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage, self.while_down = outage, None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, Marker):
            self.while_down = self.outage.down
        await self.push_frame(frame, direction)


def heard_remote(url: str) -> MossRemoteTTSService:
    """The remote service the heard-clock tests use (greedy, their output latency)."""
    return MossRemoteTTSService(
        url=url, output_latency_s=LATENCY_S, settings=MossTTSSettings(greedy=True, lookahead_s=0.5)
    )


async def test_a_barge_in_while_the_server_is_down_holds_no_frame_back(fixtures_dir, tmp_path):
    async with speaking_server(fixtures_dir, tmp_path) as server:
        tts = heard_remote(server.url)
        watcher, context = Watcher(), LLMContext()
        outage = Outage(tts, watcher, server)
        seen = MarkerSeen(outage)
        assistant = LLMContextAggregatorPair(context).assistant()
        frames = [
            *reply(*(w + " " for w in FIRST.split())),
            Cue("kill", 0, 6),  # mid-reply: it fails, and plays on what it pushed
            SleepFrame(0.3),
            InterruptionFrame(),  # its cut waits for the server
            *reply(*(w + " " for w in NEVER.split())),
            SleepFrame(0.3),
            InterruptionFrame(),  # drops it: nothing of it was heard
            Marker(),
            SleepFrame(0.5),
            Cue("start", 0, 6),
            *reply(AFTER),
            SleepFrame(4.0),
            Cue("snapshot", 0, 6),
        ]
        _, up = await run_test(
            Pipeline([outage, tts, seen, watcher, PlayingOutputTransport(), assistant]),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    assert seen.while_down is True  # was False: it waited behind the first barge-in's cut
    said = [spacing(m) for m in assistant_messages(context)]
    # The first reply as heard, then the one after the restart; the one between, dropped by
    # the second barge-in, neither spoken nor in the context.
    assert len(said) == 2 and said[1] == AFTER, said
    assert said[0] in {spacing(p) for p in unit_prefixes(FIRST)} and said[0], said
    assert len(watcher.contexts) == 2  # the replies whose audio came out
    # The new server holds the first reply cut where the barge-in found it, and the last.
    snap = outage.snapshots["snapshot"]
    assert [r for r, _ in snap["turns"]] == ["assistant", "assistant"]
    assert snap["turn_frames"][0] <= watcher.frames[watcher.contexts[0]]
    assert outage.session.restored == 1 and outage.session.history_lost == 0
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "connection to the server lost" in errors[0], errors
