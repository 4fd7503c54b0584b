"""When each unit (word, or CJK character) of a turn is spoken, estimated from the frames
generated and the text fed.

MOSS-TTS-Realtime reports no word timings, so the engine estimates them, once, for everyone
(the pipecat service, the server's clients, interruption summaries): a unit (see ``units``)
starts after its preceding text at the session's speaking rates (one per script class, see
``speaking_rate``), never later than the audio generated so far, and only once the model has
been fed the whole unit (the text fed is an upper bound on what can have been said). When the
turn ends, the fed units not yet placed are spread evenly over the rest of its audio; units
never fed (an early EOS, a frame cap) are never placed.

Times are seconds from the turn's first audio frame, strictly increasing, and always inside
the turn's audio. ``heard(frames)`` is the one answer to "which units did the user hear", and
``heard_text(frames)`` writes them as the text had them (``units.join_units``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.engine.speaking_rate import DEFAULT_CJK_CHARS_PER_SECOND, SpeakingRates
from moss_pipecat.speech.units import (
    TimedWord,
    heard_units,
    join_units,
    merged_end,
    next_unit,
    touches_next,
    unit_text,
)

# Smallest gap between two word times: keeps times strictly increasing (pipecat orders word
# frames by them) without visibly moving any word.
MIN_GAP_S = 0.001


@dataclass
class WordTimer:
    """Unit timestamps of one assistant turn.

    Attributes:
        chars_per_second: speaking rate of scripts written with spaces (Latin, Hangul, …).
        cjk_chars_per_second: speaking rate of CJK characters.
        text: the turn's text so far (the offsets in ``fed_chars`` index into it).
        placed: every unit placed so far with its time, in order.
    """

    chars_per_second: float
    cjk_chars_per_second: float = DEFAULT_CJK_CHARS_PER_SECOND
    text: str = ""
    placed: list[TimedWord] = field(default_factory=list)
    _next: int = 0  # char offset where the next unplaced unit may start
    _next_s: float = 0.0  # spoken seconds of the text before ``_next``
    _glued: bool = False  # the last unit placed touches the next one (no space between)
    _peek: tuple[int, tuple[int, int]] | None = None  # the last unit found: (from, unit)
    _due: tuple[int, float] | None = None  # (``_next``, time) of the first unit not yet due
    _fed: int = 0  # characters of ``text`` fed to the model so far

    def __post_init__(self) -> None:
        self._rates = SpeakingRates(self.chars_per_second, self.cjk_chars_per_second)

    def add_text(self, piece: str) -> None:
        self.text += piece

    def on_audio(self, frames: int, fed_chars: int) -> list[TimedWord]:
        """Places the units that start within ``frames`` generated frames.

        Args:
            frames: audio frames of the turn generated so far.
            fed_chars: characters of ``text`` covered by the text tokens fed so far.
        """
        audio_s, self._fed = frames * FRAME_SECONDS, fed_chars
        if self._due is not None and self._due[0] == self._next and self._due[1] >= audio_s:
            return []  # the next unit is still not due (more text cannot move its start)
        out = []
        # Lazily: a frame places a unit or two, while the text fed ahead of the audio may hold
        # dozens not yet due; finding them all on every frame made a turn quadratic.
        for start, end, spaced, glued in self._iter_units(fed_chars, final=False):
            start_s = self._next_s + self._rates.seconds(self.text[self._next : start])
            t = max(start_s, self._after_last())
            if t >= audio_s:
                self._due = (self._next, t)
                break
            out.append(self._place(start, end, spaced, glued, start_s, t))
        return out

    def finish(self, frames: int, fed_chars: int) -> list[TimedWord]:
        """The turn ended after ``frames`` audio frames: places its remaining fed units,
        evenly over the audio left, all before the audio's end."""
        end_s = frames * FRAME_SECONDS
        rest = self._units(fed_chars, final=True) if frames > 0 else []
        if not rest:
            return []
        if self.placed:
            last = self.placed[-1][1]  # < end_s: on_audio only places inside the audio
            step = (end_s - last) / (len(rest) + 1)
            times = [last + step * (k + 1) for k in range(len(rest))]
        else:
            times = [end_s * k / len(rest) for k in range(len(rest))]
        return [self._place(*u, 0.0, t) for u, t in zip(rest, times, strict=True)]

    def heard(self, frames: int) -> list[TimedWord]:
        """The units placed before the end of the first ``frames`` frames."""
        return heard_units(self.placed, frames)

    def heard_text(self, frames: int, units: int | None = None) -> str:
        """The heard units as the text wrote them (no space between CJK units); ``units``: the
        first that many units instead (the listener's own count, see ``Interrupt``). A count
        past the units placed takes the next ones fed: text the listener got with the word
        before it (an emoji after a sentence's last word) that the audio had not reached."""
        words = self.placed
        if units is not None and units > len(words):
            fed = itertools.islice(self._iter_units(self._fed, final=True), units - len(words))
            words = words + [TimedWord(unit_text(self.text, a, b), 0.0, sp) for a, b, sp, _ in fed]
        return join_units(heard_units(words, frames, units))

    def settled(self) -> SpokenUnits:
        """What a finished turn keeps of this: its ``heard_text`` (nothing more is placed)."""
        return SpokenUnits(self.placed)

    # ---- internals -----------------------------------------------------------------------
    def _after_last(self) -> float:
        return self.placed[-1][1] + MIN_GAP_S if self.placed else 0.0

    def _units(self, fed_chars: int, final: bool) -> list[tuple[int, int, bool, bool]]:
        return list(self._iter_units(fed_chars, final))

    def _iter_units(self, fed_chars: int, final: bool) -> Iterator[tuple[int, int, bool, bool]]:
        """Unplaced units fed whole: (start, end, spaced, touches the next unit). Until the
        turn ends, a unit touching the end of the text may still grow, so it waits; so does
        a unit whose spacing depends on a unit not known whole yet. Placing a unit while
        iterating is fine: it moves ``_next`` to where the iteration is."""
        text = self.text
        n = min(len(text), fed_chars)
        i, glued_left = self._next, self._glued
        while (u := self._unit_at(i, final)) is not None and u[1] <= n:
            start, end = u
            glued_right = touches_next(text, end)
            merged = merged_end(text, end, glued_left, final)  # one with the unit after it?
            if merged is None or merged > n:
                break  # the next unit is still on its way, or not fed whole
            if merged > end:
                end, glued_right = merged, True
            yield start, end, glued_left or glued_right, glued_right
            i, glued_left = end, glued_right

    def _unit_at(self, i: int, final: bool) -> tuple[int, int] | None:
        """``next_unit(text, i, final)``, remembered: a frame mostly asks for the unit it found
        not yet due the frame before. A unit known whole before the turn ends does not touch
        the text's end, so the text growing after it cannot change it."""
        if not final and self._peek is not None and self._peek[0] == i:
            return self._peek[1]
        u = next_unit(self.text, i, final)
        if u is not None and not final:
            self._peek = (i, u)
        return u

    def _place(
        self, start: int, end: int, spaced: bool, glued: bool, start_s: float, t: float
    ) -> TimedWord:
        word = TimedWord(unit_text(self.text, start, end), t, spaced)
        self._next_s = start_s + self._rates.seconds(self.text[start:end])
        self._next, self._glued = end, glued
        self.placed.append(word)
        return word


class SpokenUnits:
    """A finished turn's placed units, kept for ``heard_text`` alone (an interruption may cut
    a turn after it ended): flat fields, not an object per unit, so a long history gives the
    garbage collector nothing per unit to walk (tuples of strings or floats are untracked by
    their first collection; ``bytes`` never are tracked). Answers as its ``WordTimer`` did."""

    __slots__ = ("_spaced", "_texts", "_times")

    def __init__(self, placed: list[TimedWord]) -> None:
        self._texts = tuple(w[0] for w in placed)
        self._times = tuple(float(w[1]) for w in placed)
        self._spaced = bytes(bool(w.spaced) for w in placed)

    def _word(self, i: int) -> TimedWord:
        return TimedWord(self._texts[i], self._times[i], bool(self._spaced[i]))

    def heard_text(self, frames: int, units: int | None = None) -> str:
        """``WordTimer.heard_text``."""
        words = [self._word(i) for i in range(len(self._texts))]
        return join_units(heard_units(words, frames, units))
