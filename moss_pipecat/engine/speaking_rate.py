"""How fast a session speaks, per script class: one rate for CJK text, one for the rest.

Chinese is spoken at roughly a third of English's characters per second, so one rate would
misplace the words of both in a mixed conversation. A character counts at the CJK rate when it
is a CJK character or CJK/fullwidth punctuation (``units.is_cjk_class``); every other
character (spaces included) counts at the other rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.speech.units import is_cjk_class

DEFAULT_CHARS_PER_SECOND = 14.0  # typical English TTS speaking rate
DEFAULT_CJK_CHARS_PER_SECOND = 4.5  # typical Mandarin rate (characters = syllables)
LEARNING_RATE = 0.3  # weight of one finished turn in the running estimate
MIN_LEARN_FRAMES = 12  # shorter turns say little about the rate


def count_chars(text: str) -> tuple[int, int]:
    """(CJK-class characters, other characters) of ``text``."""
    if text.isascii():  # no CJK class below U+3000; asked for every unit of every turn
        return 0, len(text)
    cjk = sum(1 for ch in text if is_cjk_class(ch))
    return cjk, len(text) - cjk


@dataclass
class SpeakingRates:
    """Characters per second of each script class.

    Attributes:
        other: scripts written with spaces (Latin, Hangul, …), spaces and ASCII punctuation.
        cjk: Chinese characters, kana, and CJK/fullwidth punctuation.
    """

    other: float = DEFAULT_CHARS_PER_SECOND
    cjk: float = DEFAULT_CJK_CHARS_PER_SECOND

    def seconds(self, text: str) -> float:
        """How long ``text`` takes to say."""
        cjk, other = count_chars(text)
        return cjk / self.cjk + other / self.other

    def learn(self, text: str, frames: int) -> None:
        """Refines the rates from a turn that spoke its whole ``text`` in ``frames`` frames.

        The turn's error (predicted vs real duration) is shared between the two classes by
        their share of the predicted time: a turn of one script moves only that script's
        rate, exactly as the single rate always moved (0.7 old + 0.3 measured).
        """
        if not text or frames < MIN_LEARN_FRAMES:
            return
        cjk, other = count_chars(text)
        p_cjk, p_other = cjk / self.cjk, other / self.other
        predicted, actual = p_cjk + p_other, frames * FRAME_SECONDS
        scale = predicted / actual  # > 1: the session speaks faster than predicted
        w_cjk, w_other = p_cjk / predicted, p_other / predicted
        self.cjk += LEARNING_RATE * w_cjk * (self.cjk * scale - self.cjk)
        self.other += LEARNING_RATE * w_other * (self.other * scale - self.other)
