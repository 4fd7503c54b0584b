"""After a barge-in the LLM context holds exactly the units MOSS's history kept, whatever the
word frames on their way to pipecat's assistant aggregator do at that moment.

When the user barges in, word frames the output transport has released (or is about to) may
still be between it and the aggregator. Each test forces one interleaving with a processor
that holds a frame until an event (no sleeps decide the order):

- a word on its way when the interruption passes, which pipecat's queues then drop;
- a word that reaches the aggregator after the interruption (a hop lets the system frame
  overtake it): it must not go into the next message either;
- a word the transport releases after the service passed the interruption on, which reaches
  the aggregator before the interruption does (a transport slow to take it).

Word frames reach the real aggregator through a real-time output transport, as in a bot;
English, Chinese, Japanese and mixed replies alike (the remote service: ``tests/server/
test_remote_cjk.py``).
"""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextType,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import assistant_aggregator
from .heard_units import EngineLog, check_within_one_unit_of_heard
from .test_cjk_replies import TEXTS as CJK_TEXTS
from .test_cjk_replies import tokens, unit_prefixes
from .test_heard_clock import LATENCY_S, PlayingOutputTransport
from .test_moss_tts_service import reply

WORDS = [f"word{i}" for i in range(40)]
TEXTS = {"en": " ".join(WORDS), **CJK_TEXTS}
NEXT_REPLY = "Sorry, go on please."


class Barger(FrameProcessor):
    """The head of the pipeline: the user barges in when a test processor says so, and the
    bot's next reply follows once MOSS has cut the one interrupted."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)

    async def barge_in(self) -> None:
        await self.push_frame(InterruptionFrame())

    async def send(self, frames: list[Frame]) -> None:
        for frame in frames:
            await self.push_frame(frame)


class WordOnItsWay(FrameProcessor):
    """Between the transport and the aggregator: holds the ``nth`` word frame the transport
    releases (its frame has played) and barges in while holding it. ``reorder=False``: it never
    comes out (the interruption cancels its processing, as pipecat's queues drop frames);
    True: it is passed on right after the interruption, as a queue in which the system frame
    overtook it would."""

    def __init__(self, barger: Barger, nth: int, *, reorder: bool) -> None:
        super().__init__()
        self._barger, self._nth, self._reorder = barger, nth, reorder
        self._seen = 0
        self.held: TTSTextFrame | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            await self.push_frame(frame, direction)
            if self._reorder and self.held is not None:
                await self.push_frame(self.held)
            return
        if isinstance(frame, TTSTextFrame) and self.held is None:
            self._seen += 1
            if self._seen == self._nth:
                self.held = frame
                await self._barger.barge_in()
                if not self._reorder:
                    await asyncio.Event().wait()  # until the interruption cancels it
                return
        await self.push_frame(frame, direction)


class LateInterruption(FrameProcessor):
    """Between the TTS and the transport: the user barges in once the aggregator has taken the
    ``nth`` word frame (its audio has played, whatever the load), and the interruption reaches
    the transport only once the aggregator has taken a word frame whose PTS came after the
    interruption got here (a loaded loop lets the transport's clock run on before it takes
    the interruption)."""

    def __init__(self, barger: Barger, assistant: FrameProcessor, nth: int) -> None:
        super().__init__()
        self._barger, self._nth = barger, nth
        self.sent: list[TTSTextFrame] = []  # word frames passed on to the transport
        self._taken_words, self._barged = 0, False
        self._word_taken = asyncio.Event()
        self.word: TTSTextFrame | None = None
        assistant.add_event_handler("on_after_process_frame", self._taken)

    async def _taken(self, _aggregator: FrameProcessor, frame: Frame) -> None:
        if isinstance(frame, TTSTextFrame):
            self._taken_words += 1
            await self._barge_in_once_ahead()
        if frame is self.word:
            self._word_taken.set()

    async def _barge_in_once_ahead(self) -> None:
        """Barges in once the ``nth`` word was taken and a word not played yet has passed here
        (on a loaded box the TTS may run behind the transport for a while: the race needs a
        word ahead of the playback, so the barge-in waits for one rather than missing it)."""
        if self._barged or self._taken_words < self._nth:
            return
        now = self.get_clock().get_time()
        if any(f.pts > now for f in self.sent):
            self._barged = True
            await self._barger.barge_in()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self.sent.append(frame)
            await self._barge_in_once_ahead()
        elif isinstance(frame, InterruptionFrame) and direction == FrameDirection.DOWNSTREAM:
            now = self.get_clock().get_time()
            self.word = next((f for f in self.sent if f.pts > now), None)
            if self.word is not None:
                await self._word_taken.wait()
        await self.push_frame(frame, direction)


async def test_the_aggregator_leaves_out_a_word_cleared_as_it_is_about_to_take_it():
    """What the context gate relies on in pipecat: the assistant aggregator's
    ``on_before_process_frame`` handlers run inline, right before it takes the frame, and it
    reads ``append_to_context`` when it does."""
    context = LLMContext()
    assistant = assistant_aggregator(context)
    seen = []

    def before(_aggregator, frame):
        if isinstance(frame, TTSTextFrame):
            seen.append(frame.text)
            frame.append_to_context = frame.text != "out"

    assistant.add_event_handler("on_before_process_frame", before)
    words = [TTSTextFrame(w, text_type=TextType.WORD) for w in ("kept", "out", "too")]
    await run_test(
        assistant, frames_to_send=[LLMFullResponseStartFrame(), *words, LLMFullResponseEndFrame()]
    )
    assert seen == ["kept", "out", "too"]
    assert assistant_messages(context) == ["kept too"]


def _tts(engine) -> MossTTSService:
    return MossTTSService(
        engine=engine,
        output_latency_s=LATENCY_S,
        settings=MossTTSSettings(greedy=True, lookahead_s=0.5),
    )


def record_cuts(tts) -> list:
    """The summaries of the replies MOSS cuts (``on_reply_interrupted``), as they come."""
    cuts = []

    @tts.event_handler("on_reply_interrupted")
    async def _on_cut(service, context_id, summary):
        cuts.append(summary)

    return cuts


async def run_race(processors: list[FrameProcessor], frames: list[Frame]) -> None:
    _, up = await run_test(
        Pipeline(processors),
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]


def assistant_messages(context: LLMContext) -> list[str]:
    return [m["content"] for m in context.get_messages() if m["role"] == "assistant"]


def text_tokens(lang: str) -> list[str]:
    """The reply streamed as an LLM would: English a word a piece, CJK one or two characters."""
    return [w + " " for w in WORDS] if lang == "en" else tokens(TEXTS[lang])


async def barge_in_with_a_word_on_its_way(tts, tokens, *, reorder: bool, nth: int = 4):
    """Barges in while the ``nth`` released word is between the transport and the aggregator;
    once MOSS has cut the reply, the bot's next reply is spoken whole. Returns the assistant
    messages, MOSS's cuts and the transport."""
    context, barger, transport = LLMContext(), Barger(), PlayingOutputTransport()
    hop = WordOnItsWay(barger, nth, reorder=reorder)
    cuts = record_cuts(tts)

    @tts.event_handler("on_reply_interrupted")
    async def _next_reply(service, context_id, summary):
        await barger.send(reply(NEXT_REPLY))

    assistant = assistant_aggregator(context)
    await run_race([barger, tts, transport, hop, assistant], [*reply(*tokens), SleepFrame(6.0)])
    assert hop.held is not None
    return assistant_messages(context), cuts, transport


@pytest.mark.parametrize("lang", list(TEXTS))
async def test_a_word_dropped_on_its_way_to_the_context_is_not_kept(talkative_engine, lang):
    """The 4th unit's frame has played (MOSS would count it heard) but pipecat drops its word
    frame on the way: neither the context nor MOSS keep it; the next reply is whole."""
    log = EngineLog(talkative_engine)
    said, cuts, transport = await barge_in_with_a_word_on_its_way(
        _tts(log), text_tokens(lang), reorder=False
    )
    (cut,) = cuts
    assert said[0] == cut.spoken_text
    assert unit_prefixes(TEXTS[lang]).index(cut.spoken_text) == 3
    assert said[1].split() == NEXT_REPLY.split()
    check_within_one_unit_of_heard(cut, log.turns[0], transport.heard_s(), transport.speaking_s())


async def test_a_word_reaching_the_context_after_the_interruption_goes_nowhere(
    talkative_engine,
):
    """The 4th word reaches the aggregator behind the interruption: it is not in the message
    cut (MOSS does not keep it either), nor at the head of the next one."""
    said, cuts, _ = await barge_in_with_a_word_on_its_way(
        _tts(talkative_engine), text_tokens("en"), reorder=True
    )
    (cut,) = cuts
    assert said[0] == cut.spoken_text
    assert cut.spoken_text.split() == WORDS[:3]
    assert said[1].split() == NEXT_REPLY.split()


async def barge_in_taken_late(tts, tokens, nth: int = 4):
    """Barges in once the ``nth`` word is in the context; the transport takes the
    interruption only once the aggregator has taken a word released after that. Returns the
    assistant messages, MOSS's cuts and how many units came before that word."""
    context, barger = LLMContext(), Barger()
    assistant = assistant_aggregator(context)
    late = LateInterruption(barger, assistant, nth)
    cuts = record_cuts(tts)
    frames = [*reply(*tokens), SleepFrame(5.0)]
    await run_race([barger, tts, late, PlayingOutputTransport(), assistant], frames)
    assert late.word is not None  # a word not played yet reached the aggregator first
    return assistant_messages(context), cuts, late.sent.index(late.word)


@pytest.mark.parametrize("lang", list(TEXTS))
async def test_a_word_released_after_the_interruption_passed_the_tts_is_not_kept(
    talkative_engine, lang
):
    """A word the transport releases after the TTS passed the interruption on reaches the
    aggregator first: the context and MOSS hold the same units, without it (its frame had not
    played when the TTS passed the interruption on)."""
    said, cuts, before = await barge_in_taken_late(_tts(talkative_engine), text_tokens(lang))
    (cut,) = cuts
    assert 0 < cut.heard_frames < cut.audio_frames
    assert said == [cut.spoken_text]
    assert unit_prefixes(TEXTS[lang]).index(cut.spoken_text) <= before
