"""The units a turn's text is spoken (and timed, and cut) in, and how units join back into text.

Scripts written with spaces (Latin, Hangul, Cyrillic, …) are spoken in words: a unit is a run
of non-space characters. Chinese characters and Japanese kana/kanji are written without
spaces, so each one is a unit of its own, with the punctuation after it attached
(``好，`` ``す。``), like pipecat's Cartesia and ElevenLabs services report them. A word next
to CJK characters ends where they start (``你好Alice，明天`` -> 你 / 好 / Alice， / 明 / 天).

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


def is_cjk_char(ch: str) -> bool:
    """A character that is a unit by itself (punctuation marks of these blocks are not)."""
    o = ord(ch)
    return ch.isalnum() and any(lo <= o <= hi for lo, hi in _CJK_RANGES)


def is_cjk_class(ch: str) -> bool:
    """A character spoken at the CJK rate: a CJK character or CJK/fullwidth punctuation."""
    o = ord(ch)
    return is_cjk_char(ch) or (
        not ch.isalnum() and any(lo <= o <= hi for lo, hi in _CJK_MARK_RANGES)
    )


def _is_mark(ch: str) -> bool:
    return not ch.isspace() and not ch.isalnum()


def unit_end(text: str, start: int) -> int:
    """End offset of the raw unit starting at ``start`` (a non-space character).

    A CJK character takes the punctuation right after it; punctuation opening a run
    (``「你``) goes with the character it opens; any other run of characters is a word,
    ending at a space or where a CJK character starts. The end may be ``len(text)``: a unit
    touching the end of the text may still grow.
    """
    n, i = len(text), start
    while i < n and _is_mark(text[i]):
        i += 1
    if i < n and is_cjk_char(text[i]):
        i += 1
        while i < n and _is_mark(text[i]):
            i += 1
        return i
    while i < n and not text[i].isspace() and not is_cjk_char(text[i]):
        i += 1
    return i


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
