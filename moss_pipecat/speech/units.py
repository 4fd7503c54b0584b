"""The units a turn's text is spoken (and timed, and cut) in, and how units join back into text.

Scripts written with spaces (Latin, Hangul, Cyrillic, Arabic, Devanagari, …) are spoken in
words: a unit is a run of non-space characters. Chinese characters and Japanese kana/kanji are
written without spaces, so each one is a unit of its own, with the punctuation after it
attached (``好，`` ``す。``), like pipecat's Cartesia and ElevenLabs services report them. So
are the characters of the other scripts written without spaces between words (Thai, Lao,
Khmer, Myanmar): their words cannot be found without a dictionary, and a reply must not be
one unit, which nothing heard before its end could keep. A word next to such characters ends
where they start (``你好Alice，明天`` -> 你 / 好 / Alice， / 明 / 天).

Units are grapheme-aware: a unit never ends before a combining mark, a zero-width joiner or
what it joins, a variation selector or an emoji modifier, nor between a virama and the
consonant it stacks (Khmer, Myanmar). A unit ends after a sentence's closing punctuation
(``好！`` then ``🎉我``), where pipecat's sentence splitting ends a sentence: a unit must not
straddle two of pipecat's sentences. A word longer than ``MAX_WORD_CHARS`` (a long URL) is cut
into units of at most that many characters, after its last punctuation mark if it has one.

Units are written back without inventing or losing spaces: a unit that touches a neighbour
(no space between them) is ``spaced`` -- it carries its own spacing, pipecat's
``includes_inter_frame_spaces`` -- and two spaced units join with nothing between them; any
other two join with one space (pipecat's ``concatenate_aggregated_text`` on frames whose text
has no outer spaces). A space between two units that each touch their other neighbour cannot
be written that way (both must be spaced, so the space would be lost), so those two units are
one unit (``你好 世界`` -> 你 / 好 世 / 界). Every layer (engine, wire, service) joins with
``join_units``; runs of whitespace read as one space, as words always did.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from moss_pipecat.speech.frames import FRAME_SECONDS

# Scripts written without spaces, one unit per character: kana, CJK ideographs (with
# extensions and compatibility forms), halfwidth katakana, bopomofo.
_CJK_RANGES = (
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3100, 0x312F),  # bopomofo
    (0x31F0, 0x31FF),  # katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # halfwidth katakana
    (0x20000, 0x3134F),  # CJK extensions B..G
)
# CJK punctuation and fullwidth forms: spoken at the CJK rate (a Chinese comma is a Chinese pause).
_CJK_MARK_RANGES = ((0x3000, 0x303F), (0x30FB, 0x30FB), (0xFF00, 0xFFEF))


# Scripts written without spaces between words, spoken in syllables: each character (with
# its marks) is a unit. Thai, Lao, Myanmar, Khmer, Tai Le/New Tai Lue, Tai Tham, Tai Viet.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x1950, 0x19FF),
    (0x1A20, 0x1AAF),
    (0xA9E0, 0xA9FF),
    (0xAA60, 0xAADF),
)
# Punctuation that ends a sentence; after it a unit takes only more of it and closing marks.
# Inside a word only the CJK/fullwidth ones count ("v2.0" and "example.com" stay whole).
_TERMINATORS = frozenset(".!?…‥‼⁇⁈⁉。！？．｡؟۔।॥။።")
_CJK_TERMINATORS = frozenset("。！？．｡")
_ZWJ = "\u200d"
_ASAT = "\u103a"  # Myanmar: a virama (combining class 9) that ends a syllable, stacks nothing
MAX_WORD_CHARS = 40  # about 3 s of speech: a longer word (a URL) is cut into several units
# Below these code points no range above holds a character: the common (Latin) case answers
# without scanning the ranges (word times look at every character of a turn's text).
_FIRST_UNIT_CHAR = min(lo for lo, _ in _CJK_RANGES + _NO_SPACE_RANGES)
_FIRST_CJK_CLASS = min(lo for lo, _ in _CJK_RANGES + _CJK_MARK_RANGES)


def is_cjk_char(ch: str) -> bool:
    """A Chinese or Japanese character (punctuation marks of these blocks are not)."""
    o = ord(ch)
    return ch.isalnum() and any(lo <= o <= hi for lo, hi in _CJK_RANGES)


def is_unit_char(ch: str) -> bool:
    """A character that is a unit by itself: CJK, or a letter of a script written without
    spaces (Thai, Lao, Khmer, Myanmar)."""
    o = ord(ch)
    if o < _FIRST_UNIT_CHAR:
        return False
    return is_cjk_char(ch) or (ch.isalnum() and any(lo <= o <= hi for lo, hi in _NO_SPACE_RANGES))


def sentence_seam(before: str, sentence: str) -> str:
    """What goes between two sentences fed one after the other when pipecat hands them over
    stripped of spaces (its sentence mode): a space, unless either side is whitespace already
    or the sentence before was CJK (those scripts put none after a sentence): its last mark is
    CJK/fullwidth, or its last letter is CJK ("好的!" then "走吧。"). A CJK sentence after a
    Latin one gets the space the LLM writes there ("Hello." then "你好。"); after one with no
    letter at all, the sentence's own script decides."""
    if not before or not sentence or before[-1].isspace() or sentence[0].isspace():
        return ""
    last = next((ch for ch in reversed(before) if ch.isalnum()), None)
    if is_cjk_class(before[-1]) or (last is not None and is_cjk_char(last)):
        return ""
    return "" if last is None and is_cjk_class(sentence[0]) else " "


def is_cjk_class(ch: str) -> bool:
    """A character spoken at the CJK rate: a CJK character or CJK/fullwidth punctuation."""
    o = ord(ch)
    if o < _FIRST_CJK_CLASS:
        return False
    return is_cjk_char(ch) or (
        not ch.isalnum() and any(lo <= o <= hi for lo, hi in _CJK_MARK_RANGES)
    )


def _is_mark(ch: str) -> bool:
    return not ch.isspace() and not ch.isalnum()


def _extends(text: str, i: int) -> bool:
    """Whether ``text[i]`` belongs to the grapheme before it: a combining mark, a joiner or
    what it joins, a variation selector or emoji modifier (Sk), the consonant after a virama,
    a Hangul vowel or final jamo."""
    ch, prev = text[i], text[i - 1]
    o = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me", "Sk")
        or ch == _ZWJ
        or prev == _ZWJ
        or 0xFE00 <= o <= 0xFE0F
        or 0xE0100 <= o <= 0xE01EF
        or 0x1F3FB <= o <= 0x1F3FF
        or 0x1160 <= o <= 0x11FF
        or 0xD7B0 <= o <= 0xD7FF
        or (unicodedata.combining(prev) == 9 and prev != _ASAT and ch.isalpha())
    )


def _marks_end(text: str, i: int, terminators: frozenset[str]) -> int:
    """End of the marks from ``i`` on that go with the unit before them: all of them, or up
    to a sentence's end (its terminators, closing brackets and quotes, marks on those)."""
    n, ended = len(text), False
    while i < n and _is_mark(text[i]):
        ch = text[i]
        if ch in terminators:
            ended = True
        elif ended and not _extends(text, i) and not _closes(ch):
            break
        i += 1
    return i


def _closes(ch: str) -> bool:
    return unicodedata.category(ch) in ("Pe", "Pf") or ch in "\"'"


def _word_end(text: str, start: int, i: int) -> int:
    """End of the word run from ``i`` (its unit starts at ``start``): at a space, a unit
    character, after a CJK sentence's end, or, past ``MAX_WORD_CHARS``, at the last place
    within them that starts a grapheme with a letter or digit (after punctuation if there is
    such a place in their second half)."""
    n, last, after_mark = len(text), None, None
    while i < n and not text[i].isspace() and not is_unit_char(text[i]):
        if text[i] in _CJK_TERMINATORS:
            return _marks_end(text, i, _CJK_TERMINATORS)
        if i > start and text[i].isalnum() and not _extends(text, i):
            if i - start <= MAX_WORD_CHARS or last is None:
                last = i
                if not text[i - 1].isalnum() and i - start > MAX_WORD_CHARS // 2:
                    after_mark = i
        if i - start >= MAX_WORD_CHARS and last is not None:
            return after_mark or last
        i += 1
    return i


def unit_end(text: str, start: int) -> int:
    """End offset of the raw unit starting at ``start`` (a non-space character).

    A unit character (with its grapheme) takes the punctuation right after it, up to a
    sentence's end; punctuation opening a run (``「你``) goes with the character it opens,
    unless it ends a sentence first (``…?今``: pipecat's sentence ends before ``今``);
    any other run of characters is a word, ending at a space or where a unit character
    starts (see the module docstring for its other ends). The end may be ``len(text)``: a
    unit touching the end of the text may still grow.
    """
    n, i = len(text), start
    # (a sentence's end among them ends the unit with the word run: ``🎉…?`` then ``今``,
    # as pipecat ends a sentence there)
    while i < n and _is_mark(text[i]) and text[i] not in _TERMINATORS:
        i += 1
    if i < n and is_unit_char(text[i]):
        i += 1
        while i < n and _extends(text, i):
            i += 1  # its grapheme: marks, a consonant stacked by a virama, …
        return _marks_end(text, i, _TERMINATORS)
    return _word_end(text, start, i)


def next_unit(text: str, i: int, final: bool) -> tuple[int, int] | None:
    """(start, end) of the first unit at or after offset ``i``, or None when none is known
    whole yet: nothing but spaces left, or (unless ``final``) a unit touching the text's end."""
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    if i >= n:
        return None
    end = unit_end(text, i)
    if end >= n and not final:
        return None
    return i, end


def touches_next(text: str, end: int) -> bool:
    """Whether the unit ending at ``end`` has a neighbour right after it, with no space."""
    return end < len(text) and not text[end].isspace()


def merged_end(text: str, end: int, glued_left: bool, final: bool) -> int | None:
    """Where the unit ending at ``end`` ends as written among its neighbours: at ``end``,
    unless it touches its left neighbour (``glued_left``) and a space comes after it, and the
    unit after the space touches its right neighbour: the space is only writable inside one
    unit, so the two are one (see the module docstring). None while that is not known (the
    next unit still on its way)."""
    if not glued_left or touches_next(text, end):
        return end
    after = next_unit(text, end, final)
    if after is None:
        return end if final else None
    return after[1] if touches_next(text, after[1]) else end


def unit_text(text: str, start: int, end: int) -> str:
    """A unit's text: whitespace inside it (a merged unit) reads as one space."""
    return " ".join(text[start:end].split())


class TimedWord(tuple):
    """One unit and its time: a ``(text, seconds)`` pair that also says whether it is
    ``spaced`` (carries its own spacing; see the module docstring). Unpacks and compares as
    the pair, so every ``for word, t in words`` keeps working."""

    spaced: bool

    def __new__(cls, text: str, seconds: float, spaced: bool = False) -> TimedWord:
        obj = super().__new__(cls, (text, seconds))
        obj.spaced = spaced
        return obj

    @property
    def text(self) -> str:
        return self[0]

    @property
    def seconds(self) -> float:
        return self[1]

    def __repr__(self) -> str:
        return f"TimedWord({self[0]!r}, {self[1]!r}{', spaced' if self.spaced else ''})"


def is_spaced(word: tuple[str, float]) -> bool:
    """Whether a (word, seconds) pair carries its own spacing (plain pairs do not)."""
    return bool(getattr(word, "spaced", False))


def heard_units(words: Sequence[TimedWord], frames: int, units: int | None = None) -> list:
    """Which of a turn's timed ``words`` (in order) a listener heard: the first ``units``
    (the listener's own count, as ``Interrupt.heard_units``), else those timed before the end
    of the first ``frames`` audio frames. The one rule the engine's summaries and a client's
    journal both answer with."""
    if units is not None:
        return list(words[:units])
    limit = frames * FRAME_SECONDS
    return [w for w in words if w[1] < limit]


def join_units(words: list[tuple[str, float]] | list[TimedWord]) -> str:
    """The text of consecutive units: nothing between two spaced ones, one space otherwise
    (what pipecat's assistant aggregator writes for the same word frames)."""
    out: list[str] = []
    prev = False
    for w in words:
        spaced = is_spaced(w)
        if out and not (prev and spaced):
            out.append(" ")
        out.append(w[0])
        prev = spaced
    return "".join(out)
