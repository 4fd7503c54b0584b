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

import asyncio
import contextlib

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    SystemFrame,
    TTSStartedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.client import RemoteEngine
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.conftest import Probe, assistant_aggregator
from ..service.test_back_to_back import spacing
from ..service.test_cjk_replies import unit_prefixes
from ..service.test_context_race import assistant_messages
from ..service.test_heard_clock import LATENCY_S, PlayingOutputTransport
from .cues import Cue, CueDirector, Watcher
from .processes import speaking_server
from .test_remote_service import reply

# Long: the server dies in the middle of it on every fixture set (it ends after its text).
FIRST = " ".join(["This first reply goes on and on so that the server dies in the middle."] * 3)
NEVER = "This reply came before the second barge-in and was never heard."
AFTER = "After the restart."


class Marker(SystemFrame):
    """A system frame sent behind the second barge-in."""


def step(what: str, reply: int, frames: int | None = None) -> Cue:
    """A cue no interruption drops (pipecat drops the interruptible frames queued in a
    processor, and this script's interruptions come from the cues themselves)."""
    cue = Cue(what, reply, frames)
    cue.interruptible = False
    return cue


class Outage(CueDirector):
    """Each cue in the order of the script, once what it waits for was seen: ``kill``
    (``kill -9`` of the server, nothing started in its place, once the service pushed
    ``frames`` of the ``reply``-th reply; then its failure), ``barge-in`` (once that reply
    has started and ``frames`` of its words were heard, i.e. reached the aggregator:
    ``seen``; pipecat takes a system frame ahead of the data frames waiting in the service,
    so it must not overtake the reply it drops), ``marker`` and
    ``start`` (a new server on its port; the frames behind it wait until it is ready), and
    ``snapshot`` (a ``Probe`` for ``settled``; the frames behind it, the pipeline's end too,
    wait until it has been read)."""

    down = False

    def __init__(self, tts, watcher: Watcher, server, seen: Seen, settled) -> None:
        super().__init__(tts, watcher, server)
        self.seen, self.settled = seen, settled
        self.failed = asyncio.Event()  # the service's ErrorFrame came up

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, ErrorFrame):  # a system frame: it passes while a cue waits
            self.failed.set()
        await super().process_frame(frame, direction)

    async def cue(self, frame: Cue) -> None:
        if frame.what == "kill":
            await self.watcher.reached(frame.reply, frame.frames)
            self.server.kill()
            self.down = True
            # The reply fails before the barge-in comes (on a loaded machine the barge-in
            # could cancel it first, and a cancelled reply's failure is nobody's error).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.failed.wait(), 30)
        elif frame.what == "barge-in":
            await self.seen.reached(frame.reply, frame.frames or 0)
            await self.push_frame(InterruptionFrame())
        elif frame.what == "marker":
            await self.push_frame(Marker())
        elif frame.what == "snapshot":
            await self.push_frame(Probe())
            await self.settled.done.wait()
        else:
            await self.server.start()
            self.down = False


class SettledSnapshot(FrameProcessor):
    """Right after the service: on a ``Probe`` (it leaves the service behind the audio of
    every reply before it, each ended), once every cut has ended, the session's snapshot and
    its counts of restores and of histories lost."""

    def __init__(self, tts) -> None:
        super().__init__()
        self.tts = tts
        self.snapshot: dict | None = None
        self.restored = self.history_lost = None
        self.done = asyncio.Event()  # the head of the pipeline holds the EndFrame until then

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, Probe):
            await self.push_frame(frame, direction)
            return
        await self.tts.history_settled()
        session = self.tts.session
        self.snapshot = await session.snapshot()
        self.restored, self.history_lost = session.restored, session.history_lost
        self.done.set()


class Seen(FrameProcessor):
    """The replies started (``TTSStartedFrame``) and the words each got past this point,
    and whether the marker passed while the server was down (``outage``, set by the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.outage: Outage | None = None
        self.contexts: list[str] = []
        self.words: dict[str, int] = {}
        self.while_down: bool | None = None
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, Marker) and self.outage is not None:
            self.while_down = self.outage.down
        await self.push_frame(frame, direction)  # a word counts once the aggregator has it
        if isinstance(frame, TTSStartedFrame):
            self.contexts.append(frame.context_id)
        elif isinstance(frame, TTSTextFrame):
            self.words[frame.context_id] = self.words.get(frame.context_id, 0) + 1
        self.changed.set()

    async def reached(self, reply: int, words: int) -> None:
        """Once the ``reply``-th reply has started and ``words`` of its words passed; a hang
        guard of 30 s (without the fix a reply's start waited behind the first barge-in's cut
        until the server was back)."""

        def done() -> bool:
            return len(self.contexts) > reply and self.words.get(self.contexts[reply], 0) >= words

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while not done():
                    self.changed.clear()
                    await self.changed.wait()


@contextlib.asynccontextmanager
async def call_through_outages(
    fixtures_dir, tmp_path, mode: TextAggregationMode = TextAggregationMode.TOKEN
):
    """A server process whose replies speak (``speaking_server``) and the remote service the
    heard-clock tests use on it (greedy, their output latency; pipecat's ``mode``), whose
    client goes on trying to reach a server for a minute (a restart on a loaded machine takes
    a while)."""
    async with speaking_server(fixtures_dir, tmp_path) as server:
        remote = RemoteEngine(server.url, reconnect_timeout=60)
        settings = MossTTSSettings(greedy=True, lookahead_s=0.5)
        try:
            yield (
                server,
                MossRemoteTTSService(
                    remote=remote,
                    output_latency_s=LATENCY_S,
                    settings=settings,
                    text_aggregation_mode=mode,
                ),
            )
        finally:
            await remote.aclose()


async def test_a_barge_in_while_the_server_is_down_holds_no_frame_back(fixtures_dir, tmp_path):
    async with call_through_outages(fixtures_dir, tmp_path) as (server, tts):
        watcher, context = Watcher(), LLMContext()
        seen, settled = Seen(), SettledSnapshot(tts)
        seen.outage = outage = Outage(tts, watcher, server, seen, settled)
        cuts = []

        @tts.event_handler("on_reply_interrupted")
        async def on_cut(service, context_id, summary):
            cuts.append((context_id, summary))

        assistant = assistant_aggregator(context)
        frames = [
            *reply(*(w + " " for w in FIRST.split())),
            step("kill", 0, 6),  # mid-reply: it fails, and plays on what it pushed
            step("barge-in", 0, 1),  # once a word was heard; its cut waits for the server
            *reply(*(w + " " for w in NEVER.split())),
            step("barge-in", 1),  # drops it: nothing of it was heard
            step("marker", 1),
            SleepFrame(0.5),
            step("start", 1),
            *reply(AFTER),
            step("snapshot", 2),
        ]
        _, up = await run_test(
            Pipeline([outage, tts, settled, watcher, PlayingOutputTransport(), seen, assistant]),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    assert seen.while_down is True  # was False: it waited behind the first barge-in's cut
    said = [spacing(m) for m in assistant_messages(context)]
    # The first reply as heard, then the one after the restart; the one between, dropped by
    # the second barge-in, neither spoken nor in the context.
    assert len(said) == 2 and said[1] == AFTER, said
    assert said[0] in {spacing(p) for p in unit_prefixes(FIRST)} and said[0], said
    # Its cut met the dead server: the journal cut it, and says what it kept as MOSS would.
    (context_id, cut), *others = cuts
    assert context_id == watcher.contexts[0] and spacing(cut.spoken_text) == said[0], cuts
    assert all(c.heard_frames == 0 for _, c in others), cuts  # the dropped reply, if it opened
    assert len(watcher.contexts) == 2  # the replies whose audio came out
    # The new server holds the first reply cut where the barge-in found it, and the last.
    snap = settled.snapshot
    assert [r for r, _ in snap["turns"]] == ["assistant", "assistant"]
    assert snap["turn_frames"][0] <= watcher.frames[watcher.contexts[0]]
    assert settled.restored == 1 and settled.history_lost == 0
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "connection to the server lost" in errors[0], errors
