"""A reply's word frames come out in the order of its words, even when the LLM finishes a
sentence while the sentence is being spoken.

pipecat's streaming sequencer parks a word time whose sentence the LLM has not finished yet;
when the sentence ends, it matches the parked words and queues their frames in the reply's
audio context, behind the word times already queued there. Those are matched after the parked
words but leave the queue first: without ``service/word_order.py`` a later word's frame came
out first (``Mona The Lisa`` in the LLM context, for ``The Mona Lisa``; a CI flake of
``tests/agents/test_offline_agent.py`` under load). The test forces that moment with events:
the LLM ends the sentence while pipecat's audio-context task is about to push a frame whose
word time waits right behind it, a word of the sentence having been parked before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TextType,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test

from moss_pipecat.engine.word_times import WordTimer
from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.word_order import MatchOrder
from moss_pipecat.speech.units import TimedWord, join_units

from .conftest import WordRecorder, assistant_aggregator
from .heard_units import EngineLog

SENTENCE = [f"word{i}" for i in range(40)]  # no end: pipecat cannot match its words yet
END = [". Then", " it", " ends."]  # the first letter after the full stop ends the sentence


@dataclass(frozen=True)
class Script:
    """A reply: ``sentence``, streamed with no end (its words parked), then ``end``, whose
    first piece ends the sentence with its first letter after the stop."""

    sentence: list[str]
    end: list[str]


ENGLISH = Script([w + " " for w in SENTENCE], END)
# Written without spaces: a unit per character (the stop goes with the one before it), 40
# units before the stop, streamed two characters a piece.
_ZH = "我们今天一起去公园散步然后在湖边坐一会儿看看天上的白云听听树上的小鸟唱歌闻闻花香"
_JA = "きょうはみんなでこうえんにいってからおひるごはんをたべていえでゆっくりやすみます"
CHINESE = Script([_ZH[i : i + 2] for i in range(0, 40, 2)], ["。然后", "它", "结束了。"])
JAPANESE = Script([_JA[i : i + 2] for i in range(0, 40, 2)], ["。それ", "から", "ねます。"])


class LLM(FrameProcessor):
    """The pipeline's head: streams the unfinished sentence, and its end when ``finish`` is
    called; the EndFrame waits until then."""

    def __init__(self, end: list[str]) -> None:
        super().__init__()
        self.end = end
        self.finished = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, EndFrame):
            await self.finished.wait()
        await self.push_frame(frame, direction)

    async def finish(self, tts: FrameProcessor) -> None:
        """Ends the sentence; returns once the TTS has taken the end (pipecat's sequencer
        matched the parked words), then streams the rest of the reply."""
        first = LLMTextFrame(self.end[0])
        taken = asyncio.Event()

        async def _processed(_tts: Any, frame: Frame) -> None:
            if frame is first:
                taken.set()

        tts.add_event_handler("on_after_process_frame", _processed)
        await self.push_frame(first)
        await taken.wait()
        for piece in self.end[1:]:
            await self.push_frame(LLMTextFrame(piece))
        await self.push_frame(LLMFullResponseEndFrame())
        self.finished.set()


class SentenceEndsBetweenWordTimes:
    """Ends the sentence (``LLM.finish``) as pipecat's audio-context task pushes audio frame
    ``k``: one whose words the service released right behind it (the frame was read after
    playback started: ``HeardClock``), with words released before it (already handed to the
    sequencer, which parked them). Frame ``k`` is the ``k``-th frame the service read: the
    pipeline runs at the engine's rate (no resampler)."""

    def __init__(self, tts: FrameProcessor, log: EngineLog, llm: LLM) -> None:
        self._tts, self._llm = tts, llm
        self.reads: list[tuple[tuple, int]] = []  # per frame read: its words, audio pushed
        self.pushed = 0
        self.at: int | None = None  # the audio frame it happened at
        log.on_frame = lambda chunk: self.reads.append((chunk.words, self.pushed))
        tts.add_event_handler("on_before_push_frame", self._pushing)

    async def _pushing(self, _tts: Any, frame: Frame) -> None:
        if not isinstance(frame, TTSAudioRawFrame):
            return
        k, self.pushed = self.pushed, self.pushed + 1
        words, pushed_before = self.reads[k]
        parked = any(w for w, _ in self.reads[:k])
        if self.at is None and words and pushed_before > 0 and parked:
            self.at = k
            await self._llm.finish(self._tts)


async def speak_a_sentence_ended_while_spoken(
    tts: FrameProcessor, log: EngineLog, rate: int, script: Script = ENGLISH
):
    """Runs one reply through the TTS, its first sentence ending while spoken (see the module
    docstring); returns the word frames, the assistant messages and the moment."""
    llm, recorder, context = LLM(script.end), WordRecorder(), LLMContext()
    moment = SentenceEndsBetweenWordTimes(tts, log, llm)
    frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(w) for w in script.sentence)]
    _, up = await run_test(
        Pipeline([llm, tts, recorder, assistant_aggregator(context)]),
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=rate),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    said = [m["content"] for m in context.get_messages() if m["role"] == "assistant"]
    return recorder.words, said, moment


def check_in_order(
    words, said: list[str], moment: SentenceEndsBetweenWordTimes, script: Script = ENGLISH
) -> None:
    assert moment.at is not None  # it came: a word parked, the next one queued behind a frame
    released = sum(len(w) for w, _ in moment.reads[: moment.at + 1])
    # The words of the reply's units, in their order (as far as the model spoke) at increasing
    # times, those released by the moment among them; and so in the LLM context.
    text = [f.text for f in words]
    units = units_of("".join(script.sentence + script.end))[: len(text)]
    assert len(text) >= released and text == [u[0] for u in units]
    assert all(a.pts < b.pts for a, b in pairwise(words))
    assert said == [join_units(units)]  # as written: no space between CJK characters


def units_of(text: str) -> list[TimedWord]:
    """The units ``text`` is spoken in, with their spacing (words; a character each where
    written without spaces, the stop with the one before it)."""
    timer = WordTimer(chars_per_second=14.0)
    timer.add_text(text)
    return timer.finish(10_000, fed_chars=len(text))


@pytest.mark.parametrize("script", [ENGLISH, CHINESE, JAPANESE], ids=["en", "zh", "ja"])
async def test_words_parked_until_their_sentence_ends_come_out_before_the_next(
    talkative_engine, script
):
    log = EngineLog(talkative_engine)
    tts = MossTTSService(engine=log, settings=MossTTSSettings(greedy=True))
    rate = talkative_engine.codec.sampling_rate
    said = await speak_a_sentence_ended_while_spoken(tts, log, rate, script)
    check_in_order(*said, script)


def _word(text: str, pts: int) -> tuple[TTSTextFrame, AggregatedTextProgressFrame]:
    word = TTSTextFrame(text, text_type=TextType.WORD)
    progress = AggregatedTextProgressFrame(0, "c", "The Mona Lisa", TextType.SENTENCE, text, "")
    word.pts = progress.pts = pts
    return word, progress


def test_queued_text_of_earlier_words_is_pulled_ahead_and_its_copies_skipped():
    order = MatchOrder()
    sentence = AggregatedTextFrame("The Mona Lisa", TextType.SENTENCE)  # announced, no pts
    the, mona, lisa = _word("The", 100), _word("Mona", 200), _word("Lisa", 300)
    for frame in (sentence, *the, TTSAudioRawFrame(b"\0\0", 24000, 1), *lisa):
        order.queued(frame)  # the audio is not text: not recorded
    # "Mona", matched as its word time left the queue: the queued frames of "The" first, with
    # the announcement before them; "Lisa" (a later word) stays queued.
    assert order.due(mona[0]) == [sentence, *the, mona[0]]
    assert order.due(mona[1]) == [mona[1]]
    assert [order.due(f) for f in (sentence, *the)] == [[], [], []]  # their queued copies
    assert [order.due(f) for f in lisa] == [[lisa[0]], [lisa[1]]]  # leaving in turn
