"""The text a word frame carries past its own unit, and the units that text holds.

pipecat's sequencer hands the LLM text left in a sentence after its last word (``Hi 👨``: an
emoji, ``:)``, marks after a space; text it expects no word time for) to that word's frame.
The engine times those units anyway. With whole sentences pipecat emits their own frames too
(they add nothing to the context: their text is in it already); streaming tokens, it holds
them as words no sentence waits for, then drops them. So a word frame the context took holds
its own unit and the units its text carried (``Carries.covered``), whether their own frames
come or not, and whether the audio had reached them or not.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipecat.frames.frames import TTSTextFrame

from moss_pipecat.speech.units import TimedWord, next_unit


class Carries:
    """The LLM text each word frame of one reply carried past its unit, by unit index."""

    def __init__(self) -> None:
        self._text: dict[int, str] = {}

    def record(self, index: int, frame: TTSTextFrame, unit: str) -> None:
        """The word frame of unit ``index`` (text ``unit``) passes. A unit the frame before
        carried (pipecat found no LLM text left for it: ``raw_text`` None) adds nothing to the
        context, so the context takes no unit twice; its frame still counts as taken (the
        gate reads its tag)."""
        carried = self._text.get(index - 1, "").lstrip()
        if unit and carried.startswith(unit) and frame.raw_text is None:
            frame.append_to_context = False
            carried = carried[len(unit) :]
        else:
            raw = (frame.raw_text or "").strip()
            carried = raw[len(unit) :] if raw.startswith(unit) else ""
        if carried:
            self._text[index] = carried

    def covered(self, units: Sequence[TimedWord], count: int, fed: str = "") -> int:
        """How many units the word frames of the first ``count`` of ``units`` (those released
        so far) hold: with them, the units whose text the last one carried, in order, none
        past one it did not carry; those still to come (the audio had not reached them)
        where the reply's engine turn was fed that text (``fed``: a text transform may have
        taken it out)."""
        carried = self._text.get(count - 1, "")
        while carried and count < len(units):
            unit, carried = units[count].text.strip(), carried.lstrip()
            if not unit or not carried.startswith(unit):
                return count
            carried, count = carried[len(unit) :], count + 1
        at = 0
        while carried.strip() in fed and (span := next_unit(carried, at, final=True)):
            count, at = count + 1, span[1]
        return count

    def passed_over(self, units: Sequence[TimedWord], passed: int, frame: TTSTextFrame) -> int:
        """Where ``frame`` is matched among ``units``, ``passed`` having passed: past the
        units the last frame carried when it is not the first of them (streaming tokens,
        pipecat dropped their frames)."""
        covered = min(self.covered(units, passed), len(units))
        if covered > passed and frame.text != units[passed].text.strip():
            return covered
        return passed
