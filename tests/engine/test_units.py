"""Units fit the script: CJK characters one by one (punctuation on the one before), words
elsewhere; they are placed as their text is fed, at each script's rate, and join back into the
text without a space added or lost."""

from __future__ import annotations

from itertools import pairwise

import pytest
from pipecat.utils.string import match_endofsentence

from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.engine.speaking_rate import SpeakingRates
from moss_pipecat.engine.word_times import WordTimer
from moss_pipecat.speech.pieces import SurrogateJoiner
from moss_pipecat.speech.units import (
    MAX_WORD_CHARS,
    TimedWord,
    join_units,
    next_unit,
    sentence_seam,
)

from ..world_texts import REPLIES, SPLIT_SURROGATES, utf16_tokens

ZH = "你好，今天天气很好。我们去公园散步吧。"
JA = "「こんにちは」と言った。"
MIXED = "你好 Alice，明天见。我用iPhone拍照 and share it。"


def _all_units(text: str, frames: int = 400) -> list[TimedWord]:
    timer = WordTimer(chars_per_second=14.0, cjk_chars_per_second=4.5)
    timer.add_text(text)
    placed = []
    for f in range(1, frames):
        placed += timer.on_audio(f, fed_chars=len(text))
    return placed + timer.finish(frames, fed_chars=len(text))


@pytest.mark.parametrize(
    ("text", "units", "spaced"),
    [
        (ZH, ["你", "好，", "今", "天", "天", "气", "很", "好。", "我", "们", "去", "公", "园",
              "散", "步", "吧。"], [True] * 16),
        (JA, ["「こ", "ん", "に", "ち", "は」", "と", "言", "っ", "た。"], [True] * 9),
        ("Hello world, how are you?", ["Hello", "world,", "how", "are", "you?"], [False] * 5),
        ("안녕하세요 여러분, 반갑습니다.", ["안녕하세요", "여러분,", "반갑습니다."], [False] * 3),
        # A word ends where CJK starts; a space between two units that each touch their
        # other neighbour is only writable inside one unit.
        (MIXED, ["你", "好 Alice，", "明", "天", "见。", "我", "用", "iPhone", "拍", "照",
                 "and", "share", "it。"],
         [True] * 10 + [False, False, False]),
        ("你好 世界", ["你", "好 世", "界"], [True] * 3),
        # Scripts without spaces between words: a unit per character, with its marks (a
        # virama's stacked consonant too, not after Myanmar's asat).
        ("สวัสดีครับ", ["ส", "วั", "ส", "ดี", "ค", "รั", "บ"], [True] * 7),
        ("ខ្មែរ", ["ខ្មែ", "រ"], [True] * 2),
        ("မြန်မာ", ["မြ", "န်", "မာ"], [True] * 3),
        ("नमस्ते दोस्तों", ["नमस्ते", "दोस्तों"], [False] * 2),
        # A unit ends with its sentence (pipecat's sentences end there too), emoji and all.
        ("太好了！🎉我们", ["太", "好", "了！", "🎉我", "们"], [True] * 5),
        ("……！？。、", ["……！？。", "、"], [True] * 2),
        # Marks opening a CJK character, unless a sentence ends among them first.
        ("好的 🎉…?今日", ["好", "的 🎉…?", "今", "日"], [True] * 4),
        ("你好 ...好—", ["你", "好 ...", "好—"], [True] * 3),
        ("他说：“你好。”然后", ["他", "说：“", "你", "好。”", "然", "后"], [True] * 6),
        ("家👨\u200d👩\u200d👧好", ["家👨\u200d👩\u200d👧", "好"], [True] * 2),
        ("ok 👍🏽 🇯🇵", ["ok", "👍🏽", "🇯🇵"], [False] * 3),
        ("我用iPhone 15拍照", ["我", "用", "iPhone 15", "拍", "照"], [True] * 5),
        ("价格１２３元", ["价", "格", "１２３", "元"], [True] * 4),
        # A word longer than MAX_WORD_CHARS is cut: after punctuation in its second half, or
        # at the limit, never inside a grapheme.
        ("see https://example.com/some/path/to/a/long/page.html now",
         ["see", "https://example.com/some/path/to/a/long/", "page.html", "now"],
         [False, True, True, False]),
        ("a" * 45 + "\u0301" * 2 + "b", ["a" * 40, "a" * 5 + "\u0301" * 2 + "b"], [True] * 2),
    ],
)  # fmt: skip
def test_units_fit_the_script_and_join_back_to_the_text(text, units, spaced):
    placed = _all_units(text)
    assert [w.text for w in placed] == units
    assert [w.spaced for w in placed] == spaced
    assert join_units(placed) == text
    for n in range(len(placed) + 1):  # every prefix is the text's own prefix
        assert text.startswith(join_units(placed[:n]))


def test_plain_pairs_join_with_spaces_as_words_always_did():
    assert join_units([("a", 0.0), ("b", 0.1)]) == "a b"
    w = TimedWord("好", 0.5, spaced=True)
    word, t = w  # unpacks as the (word, seconds) pair it always was
    assert (word, t) == ("好", 0.5) and w == ("好", 0.5)


def test_chinese_units_are_placed_while_the_text_streams():
    """Each character is placed once the next one is fed (its punctuation may follow)."""
    timer = WordTimer(chars_per_second=14.0, cjk_chars_per_second=4.5)
    placed = []
    for k, ch in enumerate(ZH, start=1):
        timer.add_text(ch)
        placed += timer.on_audio(1000, fed_chars=k)  # audio far ahead: only the text bounds
        assert join_units(placed) == ZH[: len(join_units(placed))]
    assert len(placed) == 15  # all but the last, which may still grow until the turn ends
    placed += timer.finish(1000, fed_chars=len(ZH))
    assert join_units(placed) == ZH


def test_each_script_is_placed_at_its_own_rate():
    rates = SpeakingRates(other=14.0, cjk=4.5)
    text = "Hello there 你好吗"
    placed = _all_units(text)
    times = dict(placed)
    # "Hello there " at 14 chars/s, then one Chinese character at 4.5 chars/s.
    assert times["你"] == pytest.approx(len("Hello there ") / 14.0)
    assert times["好"] == pytest.approx(len("Hello there ") / 14.0 + 1 / 4.5)
    assert rates.seconds("你好，") == pytest.approx(3 / 4.5)
    assert rates.seconds("Hi, 你") == pytest.approx(4 / 14.0 + 1 / 4.5)


def test_learning_moves_each_scripts_rate_by_its_share():
    english = SpeakingRates(other=14.0, cjk=4.5)
    english.learn("a" * 100, frames=100)  # 100 chars in 8 s: 12.5 chars/s
    assert english.other == pytest.approx(0.7 * 14.0 + 0.3 * 12.5)  # the single rate's rule
    assert english.cjk == 4.5
    chinese = SpeakingRates(other=14.0, cjk=4.5)
    chinese.learn("你" * 30, frames=100)  # 30 chars in 8 s: 3.75 chars/s
    assert chinese.cjk == pytest.approx(0.7 * 4.5 + 0.3 * 3.75)
    assert chinese.other == 14.0
    mixed = SpeakingRates(other=14.0, cjk=4.5)
    mixed.learn("你" * 9 + "a" * 28, frames=50)  # predicted 2 s + 2 s, took 4 s: unchanged
    assert (mixed.other, mixed.cjk) == (pytest.approx(14.0), pytest.approx(4.5))
    short = SpeakingRates()
    short.learn("你好", frames=5)  # too short to say anything
    assert short == SpeakingRates()


@pytest.mark.parametrize("text", [ZH, JA, MIXED])
def test_cut_by_frames_is_a_prefix_of_the_text(text):
    timer = WordTimer(chars_per_second=14.0, cjk_chars_per_second=4.5)
    timer.add_text(text)
    frames = 60
    placed = []
    for f in range(1, frames):
        placed += timer.on_audio(f, fed_chars=len(text))
    placed += timer.finish(frames, fed_chars=len(text))
    times = [t for _, t in placed]
    assert all(a < b for a, b in pairwise(times)) and times[-1] < frames * FRAME_SECONDS
    for heard in range(frames + 1):
        kept = timer.heard_text(heard)
        assert text.startswith(kept)
        assert len(timer.heard(heard)) == sum(t < heard * FRAME_SECONDS for t in times)


@pytest.mark.parametrize("name", list(REPLIES))
def test_units_of_streamed_text_are_those_of_the_whole_text(name):
    """Every reply of the world table, streamed a code point (and, for emoji, a UTF-16 code
    unit, joined as the tokenizer joins them) at a time: each unit is placed once it is known
    whole, in order, and they are the units of the whole text, which they join back into."""
    text = REPLIES[name]
    pieces = [text[i : i + 1] for i in range(len(text))]
    if name in SPLIT_SURROGATES:
        pieces = utf16_tokens(text)
    timer, joiner, placed = WordTimer(chars_per_second=14.0), SurrogateJoiner(), []
    for piece in pieces:
        timer.add_text(joiner.push(piece))
        placed += timer.on_audio(10_000, fed_chars=len(timer.text))
    timer.add_text(joiner.finish())
    placed += timer.finish(10_000, fed_chars=len(timer.text))
    assert timer.text == text
    whole = WordTimer(chars_per_second=14.0)
    whole.add_text(text)
    whole = whole.finish(10_000, fed_chars=len(text))
    assert [(w.text, w.spaced) for w in placed] == [(w.text, w.spaced) for w in whole]
    assert " ".join(join_units(placed).split()) == " ".join(text.split())
    assert max(len(w.text) for w in placed) <= MAX_WORD_CHARS + 4  # a grapheme's marks more
    if name.startswith(("th", "long")):  # no reply is one unit a cut could not keep
        assert len(placed) > 10


def test_surrogate_pairs_are_joined_across_pieces():
    joiner = SurrogateJoiner()
    assert joiner.push("a\ud83d") == "a" and joiner.held == "\ud83d"
    assert joiner.push("\ude00b") == "\U0001f600b"
    assert joiner.push("\ude00\ud83d\ude00") == "\ufffd\U0001f600"  # a lone low half
    assert joiner.push("\ud83d") == "" and joiner.finish() == "\ufffd"  # a high half at the end


@pytest.mark.parametrize(
    ("before", "sentence", "seam"),
    [
        ("One sentence here.", "Another one follows.", " "),  # pipecat stripped the space
        ("안녕하세요.", "반갑습니다.", " "),  # Korean and Thai write spaces between sentences
        ("ครับ.", "วันนี้", " "),
        ("你好。", "我很好。", ""),  # CJK writes none
        ("Hello.", "你好。", " "),  # the space after a Latin sentence, as the LLM wrote it
        ("好的!", "我们走吧。", ""),  # a CJK sentence with a halfwidth mark
        ("我用iPhone.", "很好", " "),  # (its last letter is Latin)
        ("…", "你好。", ""),  # no letter before: the sentence's script decides
        ("…", "Next.", " "),
        ("元気です。", "Thanks.", ""),
        ("Trailing space. ", "Next.", ""),
        ("First.", " Next.", ""),
        ("", "First.", ""),  # a reply's first sentence
        ("First.", "", ""),
    ],
)
def test_sentences_handed_over_stripped_are_spaced_as_their_script_writes_them(
    before, sentence, seam
):
    assert sentence_seam(before, sentence) == seam


def _pipecat_sentence_ends(text: str) -> list[int]:
    """Where pipecat's sentence aggregation ends the sentences of ``text``, in order."""
    ends, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if not (k := match_endofsentence(text[at:])):
            return ends
        at += k
        ends.append(at)


@pytest.mark.parametrize(
    "text",
    [
        ZH,
        JA,
        MIXED,
        "太好了！🎉我们",
        "Hi!你好。",
        "1# 🎉…?今日❤️word",
        "0# ) ❤️.今日de.?",
        "你好 ...好—",
    ],
)
def test_a_unit_ends_where_pipecat_ends_a_sentence(text):
    """No unit straddles two of pipecat's sentences: a barge-in between them cuts both the
    LLM context and MOSS's history at the same place."""
    ends, at = set(), 0
    while span := next_unit(text, at, final=True):
        ends.add(at := span[1])
    assert set(_pipecat_sentence_ends(text)) <= ends
