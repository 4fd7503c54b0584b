"""One clock for what was heard, through a real output transport that plays in real time.

The transport below plays audio against the pipeline clock, starts each speaking run late
(a device buffer) and shares its event loop with a task that keeps the loop busy. Word frames
are released by the transport's clock queue and reach pipecat's assistant aggregator; the
engine keeps the frames the service believes were heard. Both must hold the same words.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import pytest
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams

from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.interruption import Heard, heard, plan_interruption
from moss_pipecat.service.reply import Reply
from moss_pipecat.speech.units import TimedWord

from .conftest import WordRecorder, assistant_aggregator
from .heard_units import EngineLog, check_within_one_unit_of_heard
from .test_moss_tts_service import reply

LATENCY_S = 0.15


class PlayingOutputTransport(BaseOutputTransport):
    """Plays audio in real time on the pipeline clock, each speaking run LATENCY_S late."""

    def __init__(self) -> None:
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_sample_rate=24000))
        self.played: list[tuple[int, int]] = []  # (clock ns a chunk started playing, ns long)
        self.interrupted_ns: int | None = None  # when the last interruption reached it
        self.first_due_ns: int | None = None  # when the first speaking run was due to start
        self.stopped_ns: list[int] = []  # when each speaking run ended (bot stopped speaking)
        self.arrived: list[tuple[int, int]] = []  # (clock ns an audio frame came, ns long)
        self._play_until = 0

    async def process_frame(self, frame, direction) -> None:
        if isinstance(frame, InterruptionFrame):
            self.interrupted_ns = self.get_clock().get_time()
        elif isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            length = round(len(frame.audio) / 2 / frame.sample_rate * 1e9)
            self.arrived.append((self.get_clock().get_time(), length))
        await super().process_frame(frame, direction)

    def audio_start_ns(self) -> int:
        """When the first audio started playing, or was due to: a loaded loop can oversleep the
        device's start-up latency, which starts this test "sound card" late, not the service."""
        assert self.played and self.first_due_ns is not None
        return min(self.played[0][0], self.first_due_ns)

    async def push_frame(self, frame, direction=FrameDirection.DOWNSTREAM) -> None:
        if isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self.stopped_ns.append(self.get_clock().get_time())
        await super().push_frame(frame, direction)

    def played_out_before_interruption(self) -> bool:
        """Whether a speaking run ended (all it was given played) before the last
        interruption reached the transport (or no interruption did)."""
        at = self.interrupted_ns
        return at is None or any(t < at for t in self.stopped_ns)

    def ran_dry_s(self) -> float:
        """Seconds the device waited for audio between chunks before the last interruption
        (it starts again ``LATENCY_S`` late): audio was made slower than it played."""
        until = self.interrupted_ns if self.interrupted_ns is not None else float("inf")
        gaps = (b[0] - (a[0] + a[1]) for a, b in pairwise(self.played) if b[0] < until)
        return sum(max(0, gap) for gap in gaps) / 1e9

    def heard_s(self) -> float:
        """Seconds of audio played when the last interruption reached the transport: by this
        device, or by a delay line (``delay_line_s``), whichever is less. The service cannot
        tell which kind of output it feeds, and the two differ only where the audio ran out."""
        return min(self.played_s(self.interrupted_ns), self.delay_line_s(self.interrupted_ns))

    def delay_line_s(self, at_ns: int) -> float:
        """Seconds of the audio that came here that a transport sending it in real time, each
        frame heard ``LATENCY_S`` after it is sent (a WebRTC peer's network and jitter buffer:
        the service's model of ``output_latency_s``), would have played by ``at_ns``. A frame that
        comes less than ``LATENCY_S`` before the audio before it ends leaves a gap there, where
        this device (which takes ``LATENCY_S`` to start, then plays on) has none."""
        latency, end, total = round(LATENCY_S * 1e9), 0, 0
        for came, length in self.arrived:
            start = max(came + latency, end)
            end = start + length
            total += min(max(at_ns - start, 0), length)
        return total / 1e9

    def played_s(self, at_ns: int) -> float:
        """Seconds of audio played by ``at_ns`` (pipeline clock)."""
        return sum(min(max(at_ns - start, 0), length) for start, length in self.played) / 1e9

    def speaking_s(self) -> float:
        """Seconds from the first chunk's start to the last interruption, at most the audio
        written: what a transport that never ran dry would have played. A starved loop writes
        late and the device runs dry in between (gaps in ``played``), so ``heard_s`` can be
        less; a service that times what was heard from when the bot started speaking lands
        between the two."""
        if not self.played:
            return 0.0
        span = self.interrupted_ns - self.played[0][0]
        return max(0, min(span, sum(length for _, length in self.played))) / 1e9

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        clock = self.get_clock()
        now = clock.get_time()
        if now >= self._play_until:  # idle device: it starts late
            if self.first_due_ns is None:
                self.first_due_ns = now + round(LATENCY_S * 1e9)
            await asyncio.sleep(LATENCY_S)
            now = clock.get_time()
        start = max(self._play_until, now)
        length = round(len(frame.audio) / 2 / frame.sample_rate * 1e9)
        self._play_until = start + length
        self.played.append((start, length))
        # Keep about one chunk "in the device", like a sound card.
        await asyncio.sleep(max(0.0, (start - now) / 1e9))
        return True


async def _busy_loop(stop: asyncio.Event) -> None:
    """Holds the event loop for 15 ms of every 25 ms, as a loaded bot process would."""
    while not stop.is_set():
        time.sleep(0.015)
        await asyncio.sleep(0.01)


async def _run(engine, frames, context):
    tts = MossTTSService(
        engine=engine,  # an EngineLog too
        output_latency_s=LATENCY_S,
        settings=MossTTSSettings(greedy=True, lookahead_s=0.5),
    )
    return await run_playing(tts, frames, context)


async def run_playing(tts, frames, context):
    """Runs ``tts`` (built with ``output_latency_s=LATENCY_S``) before the real-time
    transport, a word recorder and ``context``'s assistant aggregator, on a busy loop."""
    cuts = []

    @tts.event_handler("on_reply_interrupted")
    async def _on_cut(service, context_id, summary):
        cuts.append(summary)

    transport, recorder = PlayingOutputTransport(), WordRecorder()
    assistant = assistant_aggregator(context)
    stop = asyncio.Event()
    busy = asyncio.create_task(_busy_loop(stop))
    try:
        down, up = await run_test(
            Pipeline([tts, transport, recorder, assistant]),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    finally:
        stop.set()
        await busy
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    return down, transport, recorder, cuts


def _assistant_messages(context: LLMContext) -> list[list[str]]:
    return [m["content"].split() for m in context.get_messages() if m["role"] == "assistant"]


async def test_after_a_barge_in_the_llm_context_holds_the_words_moss_kept(talkative_engine):
    context = LLMContext()
    text = " ".join(f"word{i}" for i in range(40))
    frames = [*reply(*(w + " " for w in text.split())), SleepFrame(1.6), InterruptionFrame()]
    frames += [SleepFrame(0.3)]
    log = EngineLog(talkative_engine)
    _, transport, _, cuts = await _run(log, frames, context)
    (cut,) = cuts
    assert 0 < cut.heard_frames < cut.audio_frames  # cut mid-reply
    kept = cut.spoken_text.split()
    (said,) = _assistant_messages(context) or [[]]
    assert kept and kept == text.split()[: len(kept)]
    # Exactly the same words: each is released once its frame has played, and MOSS keeps the
    # frames played.
    assert said == kept
    # Within a word of the words placed in what the transport had played.
    (units,) = log.turns
    check_within_one_unit_of_heard(cut, units, transport.heard_s(), transport.speaking_s())


async def test_word_times_are_increasing_and_inside_the_replys_audio(talkative_engine):
    context = LLMContext()
    text = "Short and sweet, this reply is played out to its very last word."
    frames = [*reply(*(w + " " for w in text.split())), SleepFrame(4.0)]
    down, transport, recorder, cuts = await _run(talkative_engine, frames, context)
    assert not cuts
    pts = [f.pts for f in recorder.words]
    assert [f.text.strip() for f in recorder.words] == text.split()
    assert all(a < b for a, b in pairwise(pts))
    # Every word is released while the reply's audio plays: after it starts, by its end.
    frames_out = sum(isinstance(f, TTSAudioRawFrame) for f in down)
    assert frames_out > 0
    first_start = transport.audio_start_ns()
    end = transport.played[-1][0] + transport.played[-1][1]
    assert first_start - 0.05e9 <= pts[0] and pts[-1] < end
    assert _assistant_messages(context) == [text.split()]


@pytest.mark.parametrize("cut_at", [0.5, 1.0])
async def test_llm_context_never_holds_more_than_was_played(talkative_engine, cut_at):
    """Through the busy, late transport, the words in the context were all released before
    the cut, and MOSS kept no frame that had not started playing."""
    context = LLMContext()
    text = " ".join(f"w{i}" for i in range(40))
    frames = [*reply(*(w + " " for w in text.split())), SleepFrame(cut_at), InterruptionFrame()]
    frames.append(SleepFrame(0.3))
    _, transport, _, cuts = await _run(talkative_engine, frames, context)
    (cut,) = cuts
    assert cut.heard_frames <= len(transport.played)


def test_the_playout_restarts_where_the_audio_ran_out():
    """Frames pushed after the device ran dry (a stalled LLM) play from when they come, not
    from when the run before them would have gone on: what was heard, and where a word
    plays, follow the real playout."""
    ms = 1_000_000
    reply = Reply("c", None)
    for _ in range(10):  # 10 frames, playing from t = 1000 ms
        reply.pushed += 1
        reply.frame_pushed(0)
    reply.play(1000 * ms)
    assert reply.end_ns() == 1800 * ms
    for _ in range(5):  # pushed at 3000 ms, long after the audio ran out at 1800 ms
        reply.pushed += 1
        reply.frame_pushed(3000 * ms + 150 * ms)  # + the device's start latency
    assert reply.runs == [(1000 * ms, 0), (3150 * ms, 10)]
    assert reply.end_ns() == 3550 * ms
    assert reply.heard_frames(1500 * ms) == 6
    assert reply.heard_frames(3000 * ms) == 10  # the gap: nothing more was heard
    assert reply.heard_frames(3330 * ms) == 12
    assert reply.heard_frames(9000 * ms) == 15
    # A word 0.9 s into the audio (frame 11) plays 0.1 s into the second run.
    assert reply.time_ns(0.9, 0) == 3250 * ms
    # Audio not pushed yet follows the playout, or starts over if that will have run out.
    assert reply.time_ns(1.25, 0) == 3600 * ms
    assert reply.time_ns(1.25, 5000 * ms) == 5050 * ms
    for _ in range(2):  # pushed while the device still plays: the same run goes on
        reply.pushed += 1
        reply.frame_pushed(3300 * ms)
    assert len(reply.runs) == 2 and reply.end_ns() == 3710 * ms


def test_an_interruption_decides_once_what_the_history_the_context_and_the_span_keep():
    """What an interruption keeps of the reply playing: the units the LLM context took (an
    assistant aggregator counts them), and the frames played when it was passed on, but none
    from the frame of the first unit the context did not take (that word is not in the
    context). It is decided once, as the interruption passes the service; from then on no word
    of a reply cut goes into the context. The history and the reply's trace span both take
    this one answer."""
    ms = 1_000_000
    playing, queued = Reply("playing", None), Reply("queued", None)
    for _ in range(10):
        playing.pushed += 1
        playing.frame_pushed(0)
    playing.baseline_ns = 0
    playing.play(0)
    # Made and pushed, queued in the transport behind the reply playing: it plays from 0.8 s,
    # so nothing of it was heard at 0.5 s (the reply playing is the one cut).
    for _ in range(3):
        queued.pushed += 1
        queued.frame_pushed(0)
    queued.baseline_ns = 0
    queued.play(800 * ms)
    # Units released to pipecat at 0.1 s (frame 1), 0.35 s (frame 4) and 0.5 s (frame 6).
    playing.units.extend(
        [TimedWord("one", 0.1, True), TimedWord("late", 0.35, True), TimedWord("later", 0.5, True)]
    )
    # No context counts them: frames stop at the first unit whose word frame has not passed
    # the service, and the engine keeps the units in the frames kept.
    playing.passed = 1
    assert heard(playing, 500 * ms, context_counts=False) == Heard(4, None)
    assert heard(playing, 200 * ms, context_counts=False) == Heard(2, None)
    playing.passed = 3
    assert heard(playing, 900 * ms, context_counts=False) == Heard(10, None)
    # The aggregator took the first unit only: the second one's frame on is not kept.
    playing.taken = 1
    assert heard(playing, 500 * ms, context_counts=True) == Heard(4, 1)
    plan = plan_interruption([playing, queued], context_counts=True)
    assert plan.dropped == plan.newest == plan.cut == [playing, queued]
    decided = plan.decide(500 * ms)
    assert plan.playing is playing and plan.cut == [playing, queued]
    assert decided == {"playing": Heard(4, 1), "queued": Heard(0, 0)}
    assert playing.words_closed and queued.words_closed
    playing.taken = 3  # (the gate lets no more in; were it to count one) the answer stands
    assert plan.decide(900 * ms) is decided


async def test_after_an_llm_stall_a_barge_in_keeps_only_what_was_played(talkative_engine):
    """The LLM stops mid-reply for 2 s (the audio runs out), then streams the rest; a barge-in
    soon after keeps no more than the transport played, and the context the same words."""
    context = LLMContext()
    words = [f"w{i}" for i in range(40)]
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(w + " ") for w in words[:6]),
        SleepFrame(2.0),
        *(LLMTextFrame(w + " ") for w in words[6:]),
        LLMFullResponseEndFrame(),
        SleepFrame(0.6),
        InterruptionFrame(),
        SleepFrame(0.3),
    ]
    _, transport, _, cuts = await _run(talkative_engine, frames, context)
    (cut,) = cuts
    # (Audio chunks only: the transport writes its end silence, one long chunk, after the cut.)
    played_s = sum(n for _, n in transport.played if n <= 80_000_000) / 1e9
    assert cut.heard_frames < cut.audio_frames  # cut mid-reply
    # (The clock counts whole frames played; the device holds about one chunk more.)
    assert cut.heard_frames * 0.08 <= played_s + 0.08, (cut.heard_frames, played_s)
    kept = cut.spoken_text.split()
    (said,) = _assistant_messages(context) or [[]]
    assert said == kept
