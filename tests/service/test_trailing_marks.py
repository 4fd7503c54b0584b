"""A sentence ending in text no word of it times (an emoji, an emoticon, marks after a space):
pipecat's sequencer gives that text to the word before it, so the LLM context has it once that
word was taken, and MOSS's history keeps it with that word.

Before, the unit it is in MOSS (``😊``) counted as not taken: its own word frame adds nothing
to the context, and when pipecat streams tokens it never comes out at all (pipecat holds a
word no sentence waits for, then drops it). A barge-in after such a reply had played out (the
user's next turn) then cut the history back to before it: the emoji gone from MOSS's text, and
the audio from its time on gone from the history, while the context kept the whole text.
"""

from __future__ import annotations

import pytest
from pipecat.frames.frames import Frame, InterruptionFrame, TextType, TTSSpeakFrame, TTSTextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame

from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.reply import WORD_TAG, Reply
from moss_pipecat.speech.units import TimedWord

from ..engine_rules import SPEAKS
from .conftest import assistant_aggregator, service_engine
from .test_cjk_replies import assistant_text, tokens
from .test_context_race import Barger, assistant_messages, record_cuts, run_race
from .test_heard_clock import LATENCY_S, PlayingOutputTransport, run_playing
from .test_moss_tts_service import reply, run

TEXTS = {
    "emoji": "Have a great day 😊",
    "family": "Great job 👍🏽 family 👨\u200d👩\u200d👧",
    "cjk": "好的，明天见 🎉",
    "mid": "Great 👍. Next one is here.",  # the words after the carried marks
}
CASES = [("emoji", "token"), ("emoji", "sentence"), ("family", "token"), ("cjk", "token")]
CASES += [("mid", "token"), ("mid", "sentence")]
MODES = {"token": TextAggregationMode.TOKEN, "sentence": TextAggregationMode.SENTENCE}


@pytest.fixture(scope="module")
def held_engine(fixtures_dir):
    """Replies that play at least ``HELD_FRAMES`` frames (or to their cap), whatever the model:
    a barge-in on a word in the middle of a reply then finds it still playing. A model may end
    a turn as soon as its text is read, the units not yet due all in its last frame (seed 613
    did: the whole reply in 13 frames, the barge-in's word among the last ones)."""
    engine = service_engine(fixtures_dir, **{**SPEAKS, "eos_min_frames": HELD_FRAMES})
    yield engine
    engine.shutdown()


HELD_FRAMES = 40  # 3.2 s: the words barged on start within ~1.5 s at the speaking rates


def _tts(engine, mode: str) -> MossTTSService:
    return MossTTSService(
        engine=engine,
        output_latency_s=LATENCY_S,
        text_aggregation_mode=MODES[mode],
        settings=MossTTSSettings(greedy=True, lookahead_s=0.5),
    )


def spacing(text: str) -> str:
    return " ".join(text.split())


def check_kept_whole(text: str, cuts: list) -> None:
    """A barge-in after the reply played out keeps all of it: every frame, the whole text."""
    for cut in cuts:
        assert cut.heard_frames == cut.audio_frames, (cut.heard_frames, cut.audio_frames)
        assert spacing(cut.spoken_text) == spacing(text)


@pytest.mark.parametrize("name,mode", CASES)
async def test_a_barge_in_after_the_reply_keeps_its_trailing_marks(talkative_engine, name, mode):
    await check_barge_in_after(_tts(talkative_engine, mode), TEXTS[name])


async def check_barge_in_after(tts, text: str, split: list[str] | None = None) -> None:
    """``text`` played out (streamed as ``split``, else in tokens), then a barge-in (the
    user's next turn): the context and MOSS's history keep all of it."""
    context, split = LLMContext(), split or tokens(text)
    frames = [*reply(*split), SleepFrame(2.0 + len(text) / 12), InterruptionFrame()]
    *_, cuts = await run_playing(tts, [*frames, SleepFrame(0.3)], context)
    assert spacing(assistant_text(context)) == spacing(text)
    check_kept_whole(text, cuts)


async def test_without_an_assistant_aggregator_the_history_keeps_the_trailing_marks(
    talkative_engine,
):
    """No context counts the units: what passed the service is what was heard, the units a
    word frame carried with it included."""
    tts, cuts, text = _tts(talkative_engine, "token"), [], TEXTS["emoji"]

    @tts.event_handler("on_reply_interrupted")
    async def _on_cut(service, context_id, summary):
        cuts.append(summary)

    frames = [*reply(*tokens(text)), SleepFrame(2.5), InterruptionFrame(), SleepFrame(0.3)]
    await run(tts, frames)
    check_kept_whole(text, cuts)


UNITS = ["Great", "👍.", "Next", "one", "🎉", ":)"]  # "Great 👍. Next one 🎉 :)"


def _reply(units: list[str]) -> Reply:
    reply_ = Reply("c", None)
    reply_.units = [TimedWord(t, 0.1 * i) for i, t in enumerate(units)]
    return reply_


def _word(text: str, raw_text: str | None = None) -> TTSTextFrame:
    frame = TTSTextFrame(text, text_type=TextType.WORD)
    frame.raw_text = raw_text
    return frame


@pytest.mark.parametrize("mode", list(MODES))
def test_a_word_frame_counts_for_the_units_its_text_carried(mode):
    """pipecat gives a sentence's trailing marks to its last word (``Great`` carries ``👍.``);
    the units they are in count with that word's frame (``Reply.covered``), and the next word
    frame is matched past them whether their own frames come (whole sentences: they add
    nothing to the context) or not (streaming tokens)."""
    reply_ = _reply(UNITS)
    frames = [_word("Great", "Great 👍."), _word("Next", "Next"), _word("one", "one 🎉 :)")]
    if mode == "sentence":
        frames[1:1] = [_word("👍.")]
        frames[4:] = [_word("🎉"), _word(":)")]
    for frame in frames:
        assert reply_.word_frames(frame) == [frame]
    tags = [f.metadata[WORD_TAG][1] for f in frames]
    assert tags == ([0, 2, 3] if mode == "token" else [0, 1, 2, 3, 4, 5])
    assert [f.append_to_context for f in frames if f.raw_text is None] == (
        [] if mode == "token" else [False, False, False]
    )
    covered = [2, 3, 6] if mode == "token" else [2, 2, 3, 6, 6, 6]
    assert [reply_.covered(tag + 1) for tag in tags] == covered  # as the gate counts them


def test_the_units_a_word_carried_count_before_the_audio_reaches_them():
    """A barge-in after the context took ``one 🎉 :)`` but before the engine placed the marks
    (the audio had not reached them): they count all the same where the engine was fed them,
    and it keeps them (``WordTimer.heard_text``); a unit the word did not carry is not
    counted."""
    reply_ = _reply(["one"])
    assert reply_.next_text("one 🎉 :)") == reply_.fed == "one 🎉 :)"
    assert reply_.word_frames(_word("one", "one 🎉 :)"))
    assert reply_.covered(1) == 3
    # A text transform took the marks out of what the engine was fed: nothing to count.
    reply_ = _reply(["one"])
    reply_.next_text("one. Two")
    assert reply_.word_frames(_word("one", "one 🎉."))
    assert reply_.covered(1) == 1
    reply_ = _reply(["one", "🎉", ";)"])
    assert reply_.word_frames(_word("one", "one 🎉 :)"))
    assert reply_.covered(1) == 2


def test_the_start_of_a_unit_a_word_carried_waits_for_that_units_frame():
    """pipecat's sentence ended inside a unit (``了！🎉`` then ``我``; the unit is ``🎉我``)
    and gave its start to the word before: that start leaves the word's LLM text and goes
    with its own unit's frame, so the context holds whole units, those MOSS keeps. Found
    among the units known, else in the text fed (more of the unit follows with no space);
    a piece nothing follows yet stays (it may be a whole unit)."""
    for known in (["了！"], ["了！", "🎉我"]):
        reply_ = _reply(known)
        reply_.next_text("了！🎉我们")
        first = _word("了！", "了！🎉")
        assert reply_.word_frames(first) == [first] and first.raw_text == "了！"
        assert reply_.covered(1) == 1
        reply_.units = [*reply_.units[:1], TimedWord("🎉我", 0.1), TimedWord("们", 0.2)]
        second = _word("🎉我", "我")
        assert reply_.word_frames(second) == [second] and second.raw_text == "🎉我"
        assert reply_.covered(2) == 2
    # Whole units carried before the piece count; the piece goes on with its space.
    reply_ = _reply(["Great", "👍", "🎉我"])
    frame = _word("Great", "Great 👍 🎉")
    assert reply_.word_frames(frame) == [frame] and frame.raw_text == "Great 👍"
    assert reply_.covered(1) == 2
    next_ = _word("🎉我", "我")
    assert reply_.word_frames(next_) == [next_] and next_.raw_text == " 🎉我"
    # Units not known yet: the piece is the last the rules find, its frame the one after.
    reply_ = _reply(["Great"])
    reply_.next_text("Great 👍 🎉我")
    frame = _word("Great", "Great 👍 🎉")
    assert reply_.word_frames(frame) == [frame] and frame.raw_text == "Great 👍"
    reply_.units += [TimedWord("👍", 0.1), TimedWord("🎉我", 0.2)]
    frames = [_word("👍"), _word("🎉我", "我")]
    assert [reply_.word_frames(f) for f in frames] == [[f] for f in frames]
    assert [f.raw_text for f in frames] == [None, " 🎉我"]
    # A space the rules write inside one unit ("👨‍👩‍👧 天": the emoji touches "？", "天" touches
    # "気"): the emoji only starts that unit.
    reply_ = _reply(["日？"])
    reply_.next_text("日？👨‍👩‍👧 天気です")
    frame = _word("日？", "日？👨‍👩‍👧")
    assert reply_.word_frames(frame) == [frame] and frame.raw_text == "日？"
    # Nothing fed after it yet, or a space after it: a whole unit, carried as it was.
    for fed in ("了！🎉", "了！🎉 OK then"):
        reply_ = _reply(["了！"])
        reply_.next_text(fed)
        frame = _word("了！", "了！🎉")
        assert reply_.word_frames(frame) == [frame] and frame.raw_text == "了！🎉"


def test_a_carried_units_own_frame_lends_the_start_of_the_next_unit():
    """Streaming tokens, pipecat gave ``X``'s frame the whole unit ``😊😊.,。`` and that unit's
    own frame the text after it, ``:)``, only the start of the unit ``:)你``: that start goes
    with ``:)你``'s frame, and the frame it came on, left with no text, adds nothing to the
    context (before, the context took ``:)`` with it and MOSS, cut there, did not)."""
    reply_ = _reply(["X", "😊😊.,。", ":)你", "好…"])
    reply_.next_text("X 😊😊.,。:)你好…")
    frames = [_word("X", "X 😊😊.,。"), _word("😊😊.,。", ":)"), _word(":)你", "你")]
    frames.append(_word("好…", "好…"))
    assert [reply_.word_frames(f) for f in frames] == [[f] for f in frames]
    assert [f.raw_text for f in frames] == ["X 😊😊.,。", "", ":)你", "好…"]
    assert [f.append_to_context for f in frames] == [True, False, True, True]
    assert [reply_.covered(n) for n in (1, 2, 3, 4)] == [2, 2, 3, 4]
    # Text after the carried unit that is a whole unit of its own stays with its frame.
    reply_ = _reply(["X", "😊😊.,。", ":)", "你好"])
    reply_.next_text("X 😊😊.,。:) 你好")
    frames = [_word("X", "X 😊😊.,。"), _word("😊😊.,。", ":)")]
    assert [reply_.word_frames(f) for f in frames] == [[f] for f in frames]
    assert [f.raw_text for f in frames] == ["X 😊😊.,。", ":)"]
    assert [f.append_to_context for f in frames] == [True, True]


class BargeInOnWord:
    """The user barges in once pipecat's assistant aggregator has taken the word frame of
    ``word`` (whatever the load)."""

    def __init__(self, barger: Barger, assistant, word: str) -> None:
        self._barger, self._word, self.done = barger, word, False
        assistant.add_event_handler("on_after_process_frame", self._taken)

    async def _taken(self, _aggregator, frame: Frame) -> None:
        if isinstance(frame, TTSTextFrame) and frame.text == self._word and not self.done:
            self.done = True
            await self._barger.barge_in()


async def barge_in_on(tts: MossTTSService, frames: list[Frame], word: str) -> tuple:
    """Plays ``frames`` through ``tts`` to pipecat's assistant aggregator; the user barges in
    once the aggregator took the word frame ``word``. Returns MOSS's cut and the assistant
    messages. The reply must still be playing then (else there is nothing to cut)."""
    context, barger, transport = LLMContext(), Barger(), PlayingOutputTransport()
    assistant = assistant_aggregator(context)
    cuts, barge = record_cuts(tts), BargeInOnWord(barger, assistant, word)
    await run_race([barger, tts, transport, assistant], [*frames, SleepFrame(4.0)])
    assert barge.done, f"no word frame {word!r} reached the aggregator"
    assert not transport.played_out_before_interruption(), "the reply played out first"
    (cut,) = cuts
    return cut, assistant_messages(context)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("speak", [True, False], ids=["speak", "llm"])
async def test_a_barge_in_after_a_sentence_keeps_out_the_start_of_the_next_unit(
    held_engine, mode, speak
):
    """``1# 太好了！🎉我们…``: pipecat gave ``🎉`` to ``了！``'s frame (its sentence ended
    there; the unit is ``🎉我``); a barge-in once the context took that frame left ``🎉`` in
    the context and not in MOSS's history."""
    text = "1# 太好了！🎉我们一家去公园玩吧！"
    frames = [TTSSpeakFrame(text)] if speak else reply(*tokens(text))
    cut, messages = await barge_in_on(_tts(held_engine, mode), frames, "了！")
    assert messages == [cut.spoken_text]
    assert cut.spoken_text.startswith("1# 太好了！") and "们" not in cut.spoken_text


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_barge_in_on_a_carried_unit_keeps_out_the_next_units_start(held_engine, mode):
    """``X 😊😊.,。:)你好…``: ``X``'s frame carried ``😊😊.,。`` and that unit's own frame
    ``:)``, the start of ``:)你``; a barge-in once the context took it left ``:)`` in the
    context and not in MOSS's history."""
    text = "X 😊😊.,。:)你好，我们走吧。"
    frames = reply(*tokens(text))  # (a speak frame in sentence mode took it well before)
    cut, messages = await barge_in_on(_tts(held_engine, mode), frames, "😊😊.,。")
    assert messages == [cut.spoken_text]
    assert cut.spoken_text.startswith("X 😊😊.,。") and "你" not in cut.spoken_text


def test_a_frame_holding_a_unit_and_the_words_after_it_counts_for_them():
    """pipecat matched ``“Quoted,”`` across two LLM tokens (``本当？“Q``, ``uot``): ``当？``'s
    frame carried ``“`` (only the start of the unit: lent to it) and the next frame holds
    ``Quoted,” he``. It is that unit's frame, with ``“`` back, and it carried ``he``; the next
    frame is matched past it. Before, it was no unit's frame and ``“`` was lost."""
    reply_ = _reply(["当？", "“Quoted,”", "he", "wrot"])
    reply_.next_text("当？“Quoted,” he wrot")
    frames = [_word("当？", "当？“"), _word("Quoted,” he", "Quoted,” he"), _word("wrot")]
    assert [reply_.word_frames(f) for f in frames] == [[f] for f in frames]
    assert [f.raw_text for f in frames] == ["当？", "“Quoted,” he", None]
    assert [f.metadata[WORD_TAG][1] for f in frames] == [0, 1, 3]
    assert [reply_.covered(n) for n in (1, 2, 4)] == [1, 3, 4]
    # A frame that only starts with the unit's text (no space after it) is not its frame.
    reply_ = _reply(["Go", "on"])
    assert reply_.word_frames(frame := _word("Going")) == [frame]
    assert frame.raw_text is None and reply_.covered(1) == 1


@pytest.mark.parametrize("cut", [False, True])
async def test_a_unit_pipecat_matched_across_llm_tokens_keeps_its_marks(
    talkative_engine, held_engine, cut
):
    """The reply above streamed as an LLM did (``本当？“Q``): played out, the context has
    its text as written (before: ``本当？ Quoted,”``); cut once the context took ``Quoted,”
    he``, the context and MOSS's history agree."""
    split = ["0# えっ…", "本当？“Q", "uot", "ed,", "” he", " ", "wr", "ot", "e it."]
    text = "".join(split)
    if not cut:
        await check_barge_in_after(_tts(talkative_engine, "token"), text, split)
        return
    split += [" Then", " we", " all", " went", " home", " for", " dinner."]  # words to cut
    cut_, messages = await barge_in_on(_tts(held_engine, "token"), reply(*split), "Quoted,” he")
    assert messages == [cut_.spoken_text]
    assert "本当？“Quoted,” he" in cut_.spoken_text


def test_a_frame_without_the_marks_opening_its_unit_gets_them_back():
    """pipecat's sentence ended at ``？`` and gave the ``「`` after it to that word's frame;
    the frame of the unit ``「こ`` then reads ``こ``: ``「`` was lent to it, and it gets it."""
    reply_ = _reply(["当？", "「こ", "ん"])
    reply_.next_text("当？「こん")
    frames = [_word("当？", "当？「"), _word("こ", "こ"), _word("ん", "ん")]
    assert [reply_.word_frames(f) for f in frames] == [[f] for f in frames]
    assert [f.raw_text for f in frames] == ["当？", "「こ", "ん"]
    assert [f.metadata[WORD_TAG][1] for f in frames] == [0, 1, 2]


async def test_a_spoken_sentence_after_a_question_keeps_its_opening_bracket(talkative_engine):
    """The same through pipecat, a ``TTSSpeakFrame`` in sentence mode, played out: the
    context has the text as written (before: without ``「``)."""
    text = "えっ…本当？「こんにちは」と言いました。"
    context = LLMContext()
    frames = [TTSSpeakFrame(text), SleepFrame(2.0 + len(text) / 6), InterruptionFrame()]
    *_, cuts = await run_playing(_tts(talkative_engine, "sentence"), frames, context)
    assert assistant_text(context) == text
    check_kept_whole(text, cuts)
