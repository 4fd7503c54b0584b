"""pipecat's sentence mode strips the spaces between sentences; the service gives each
sentence of a spoken reply back what the LLM wrote before it (``service/written.py``), and
falls back on the rule for its scripts (``units.sentence_seam``) where a sentence is not
found as written."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import LLMFullResponseStartFrame, LLMTextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame

from moss_pipecat.service.written import SKIPPED_CHARS, WrittenText

from .test_cjk_replies import _tts, assistant_text, tokens
from .test_heard_clock import run_playing
from .test_moss_tts_service import reply


def _written(*pieces: str) -> WrittenText:
    written = WrittenText()
    for frame in (LLMFullResponseStartFrame(), *(LLMTextFrame(p) for p in pieces)):
        written.passing(frame)
    return written


def test_each_sentence_gets_the_whitespace_written_before_it():
    written = _written("Hello. 你", "好。OK", ".\n\nNext one!", "🎉 Bye.")
    seams = [written.seam(b, s) for b, s in [("", "Hello."), ("Hello.", "你好。")]]
    seams += [written.seam("你好。", "OK."), written.seam("OK.", "Next one!")]
    seams.append(written.seam("Next one!", "🎉 Bye."))
    assert seams == ["", " ", "", " ", ""]


def test_a_sentence_not_written_so_follows_the_rule_and_the_next_is_found():
    written = _written("Hello world. 你好。Bye now.")
    assert written.seam("", "Hello world.") == ""
    assert written.seam("Hello world.", "HELLO。") == " "  # a transform changed it: the rule
    assert written.seam("HELLO。", "Bye now.") == ""  # found again: as written
    # A surrogate pair split across two frames is joined; a new reply starts over.
    written = _written("Hi.\ud83d", "\ude00 Ok.")
    assert written.seam("", "Hi.😀") == "" and written.seam("Hi.😀", "Ok.") == " "
    written.passing(LLMFullResponseStartFrame())
    assert written.seam("", "Ok.") == "" and written.seam("Ok.", "Hi.") == " "  # the rule


def test_skipped_text_is_not_the_spoken_replys():
    written = _written("One. ")
    skipped = LLMTextFrame("Two.")
    skipped.skip_tts = True
    written.passing(skipped)
    written.passing(LLMTextFrame("Three."))
    assert written.seam("", "One.") == "" and written.seam("One.", "Three.") == " "


@pytest.mark.parametrize(
    "text",
    [
        "我们今天去公园。 Friend, the park is fine.",  # a space after a CJK sentence
        "There we go.🎉 With it all.",  # none before an emoji glued to the next word
        "Hello.你好。Thanks!",
        "ん，に😊ちは今日？👨‍👩‍👧 天気です？好的。",
    ],
)
async def test_a_reply_in_sentences_reaches_the_context_spaced_as_written(talkative_engine, text):
    context = LLMContext()
    frames = [*reply(*tokens(text)), SleepFrame(1.5 + len(text) / 12)]
    tts = _tts(talkative_engine, TextAggregationMode.SENTENCE)
    _, _, _, cuts = await run_playing(tts, frames, context)
    assert not cuts
    assert assistant_text(context) == text


def test_a_skipped_replys_sentences_are_found_in_the_skipped_text():
    """Skipped replies' text is kept apart from the spoken reply's and across replies (their
    sentences leave pipecat's queue later); one an interruption dropped unseen is passed
    over; what was found is let go, and the oldest text past the limit."""
    written = _written("Spoken. 好。")
    for text in ("Dropped. 你好。", "好的！ OK.", "Next.下一个。"):
        frame = LLMTextFrame(text)
        frame.skip_tts = True
        written.passing(frame)
    assert written.skipped_seam("", "好的！") == ""
    assert written.skipped_seam("好的！", "OK.") == " "  # the rule: none after a CJK mark
    assert written.skipped_seam("", "Next.") == ""
    assert written.skipped_seam("Next.", "下一个。") == ""  # the rule: a space
    assert written.seam("", "Spoken.") == "" and written.seam("Spoken.", "好。") == " "
    long = "x" * SKIPPED_CHARS + " Tail."
    for text, kept in [("More.", "。More."), (long, ("。More." + long)[-SKIPPED_CHARS:])]:
        frame = LLMTextFrame(text)
        frame.skip_tts = True
        written.passing(frame)
        assert written._skipped.text == kept
    assert written.skipped_seam("x", "Tail.") == " "
