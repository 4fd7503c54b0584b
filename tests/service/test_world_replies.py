"""Replies in the scripts and odd text users really send keep exactly what was heard, as the
Chinese and Japanese ones do (``test_cjk_replies``, whose checks these reuse).

Each reply streams into MossTTSService a token (one or two code points, or UTF-16 code units
for ``SPLIT_SURROGATES``) at a time and plays through a real-time transport: its word frames
come in order and the LLM context gets the text as written (pipecat's spacing: whitespace runs
read as one space); a barge-in leaves in the context the units MOSS kept, never nothing once a
unit was heard (a Thai reply has no spaces, a URL is one word). The remote service is held to
the same (``tests/server/test_remote_cjk.py``).
"""

from __future__ import annotations

import unicodedata

import pytest
from pipecat.frames.frames import InterruptionFrame, TextType, TTSTextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame

from moss_pipecat.engine.offline_tokenizer import shared_offline_tokenizer
from moss_pipecat.service.reply import WORD_TAG, Reply
from moss_pipecat.speech.units import TimedWord

from ..world_texts import REPLIES, SPLIT_SURROGATES, utf16_tokens
from .heard_units import SLACK_S, EngineLog, check_within_one_unit_of_heard
from .test_cjk_replies import _tts, assistant_text, check_barge_in, check_word_frames, tokens
from .test_heard_clock import run_playing
from .test_moss_tts_service import reply

# Whole replies played out: the cases pipecat's sentence matching and spacing could get wrong.
PLAYED_OUT = ("th_spaced", "vi_nfd", "emoji", "emoji_cjk", "cjk_punct", "spaces")
CUT_S = 1.8
# Text tokens a cut reply holds at least: 3.2 s of text, the cut at 1.8 s (+ output latency).
MIN_TOKENS = 40
# Replies with no letter at all, played out.
SHORT = {"emoji_only": "👍🏽🎉", "punct_only": "?!"}
# Texts of this test only: a reply ending in a character NFC composes from combining marks
# (its last word once got no time, and the context lacked it).
OTHERS = {**SHORT, "vi_nfd_open": unicodedata.normalize("NFD", "Tiếng Việt có nhiều dấu: ngươ")}


def stream(name: str, text: str) -> list[str]:
    return utf16_tokens(text) if name in SPLIT_SURROGATES else tokens(text)


def barge_in_text(name: str) -> str:
    """Long enough that the cut lands while the text is still being read: the engine reads a
    text token a frame, and once the text is read a fixture set's random model may end the
    turn at any frame (three copies of a reply of punctuation alone are 17 tokens, read by
    1.4 s: the cut at 1.8 s found the turn over on a generated set)."""
    text, tokenizer = REPLIES[name], shared_offline_tokenizer()
    copies = 1 if len(text) > 300 else 3
    while len(tokenizer.encode(" ".join([text] * copies), add_special_tokens=False)) < MIN_TOKENS:
        copies += 1
    return " ".join([text] * copies)


def spacing(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", list(REPLIES))
async def test_a_barge_in_keeps_in_the_context_what_moss_kept(talkative_engine, name):
    text, context = barge_in_text(name), LLMContext()
    frames = [*reply(*stream(name, text)), SleepFrame(CUT_S), InterruptionFrame()]
    log = EngineLog(talkative_engine)
    down, transport, recorder, cuts = await run_playing(
        _tts(log), [*frames, SleepFrame(0.3)], context
    )
    check_barge_in(text, assistant_text(context), cuts)
    check_word_frames(recorder, transport, down)
    (units,) = log.turns
    heard_s, speaking_s = transport.heard_s(), transport.speaking_s()
    check_within_one_unit_of_heard(cuts[0], units, heard_s, speaking_s, slack_s=SLACK_S)


@pytest.mark.parametrize("name", [*PLAYED_OUT, *OTHERS])
async def test_a_whole_reply_reaches_the_context_as_written(talkative_engine, name):
    text, context = {**REPLIES, **OTHERS}[name], LLMContext()
    frames = [*reply(*stream(name, text)), SleepFrame(1.5 + len(text) / 12)]
    down, transport, recorder, cuts = await run_playing(_tts(talkative_engine), frames, context)
    assert not cuts
    assert spacing(assistant_text(context)) == spacing(text)
    check_word_frames(recorder, transport, down)


def test_a_unit_pipecat_splits_at_a_sentence_end_passes_as_one_word_frame():
    """pipecat matched ``บ. วั`` (one unit: the space is only writable inside it) half to one
    sentence and half to the next: the halves pass as one frame, the unit's, its LLM text
    spaced as the unit is, so the context takes (and counts) whole units."""
    reply_ = Reply("c", None)
    reply_.units = [TimedWord("บ. วั", 0.1, True), TimedWord("น", 0.2, True)]
    first, rest, next_ = (TTSTextFrame(t, text_type=TextType.WORD) for t in ("บ.", "วั", "น"))
    assert reply_.word_frames(first) == [] and reply_.passed == 0
    (frame,) = reply_.word_frames(rest)
    assert (frame.text, frame.raw_text, frame.includes_inter_frame_spaces) == ("บ. วั", "บ. วั", True)
    assert frame.metadata[WORD_TAG] == (reply_, 0)
    assert reply_.word_frames(next_) == [next_] and next_.metadata[WORD_TAG] == (reply_, 1)
    # A frame that is no unit's (pipecat matched otherwise) passes with what it held.
    other = Reply("d", None)
    other.units = [TimedWord("สวัส", 0.1, True)]
    held, stray = (
        TTSTextFrame("สวั", text_type=TextType.WORD),
        TTSTextFrame("x", text_type=TextType.WORD),
    )
    assert other.word_frames(held) == [] and other.word_frames(stray) == [held, stray]
    assert held.includes_inter_frame_spaces and not stray.includes_inter_frame_spaces


async def test_a_blank_reply_says_nothing_and_the_next_one_speaks(talkative_engine):
    context = LLMContext()
    frames = [*reply(" ", "\n\t", " "), *reply(*tokens("Hi there.")), SleepFrame(2.0)]
    down, transport, recorder, cuts = await run_playing(_tts(talkative_engine), frames, context)
    assert not cuts and assistant_text(context) == "Hi there."
    check_word_frames(recorder, transport, down)


@pytest.mark.parametrize("mode", [TextAggregationMode.TOKEN, TextAggregationMode.SENTENCE])
@pytest.mark.parametrize("text", ["Have a nice day! 😊", "Great job, family 👨‍👩‍👧‍👦"])
async def test_a_reply_ending_in_an_emoji_puts_it_in_the_context_once(talkative_engine, mode, text):
    """pipecat gives the LLM text past a reply's last word (an emoji it expects no word time
    for) to that word's frame; in its sentence mode it then emits the emoji's own frame too,
    as the engine times it: the context takes it once."""
    tts = _tts(talkative_engine, mode)
    context = LLMContext()
    _, _, _, cuts = await run_playing(tts, [*reply(*tokens(text)), SleepFrame(4.0)], context)
    assert not cuts
    assert assistant_text(context) == text


@pytest.mark.parametrize("mode", [TextAggregationMode.TOKEN, TextAggregationMode.SENTENCE])
@pytest.mark.parametrize("text", ["Hello there. 你好，世界。Thanks!", "好的!我们走吧。OK, bye."])
async def test_sentences_of_two_scripts_reach_the_context_spaced_as_written(
    talkative_engine, mode, text
):
    """pipecat's sentence mode hands each sentence over without the spaces before it: the one
    after a Latin sentence gets its space back, also a CJK one, and none comes after a CJK
    sentence, also one ending in a halfwidth mark (``units.sentence_seam``)."""
    tts = _tts(talkative_engine, mode)
    context = LLMContext()
    frames = [*reply(*tokens(text)), SleepFrame(1.5 + len(text) / 12)]
    _, _, _, cuts = await run_playing(tts, frames, context)
    assert not cuts
    assert assistant_text(context) == text
