"""The text a word frame carries past its own unit, and the units that text holds.

pipecat's sequencer hands the LLM text left in a sentence after its last word (``Hi 👨``: an
emoji, ``:)``, marks after a space; text it expects no word time for) to that word's frame.
The engine times those units anyway. With whole sentences pipecat emits their own frames too
(they add nothing to the context: their text is in it already); streaming tokens, it holds
them as words no sentence waits for, then drops them. So a word frame the context took holds
its own unit and the units its text carried (``Carries.covered``), whether their own frames
come or not, and whether the audio had reached them or not. Text it carried that is only the
start of a unit (``了！🎉`` where ``🎉我`` is one unit: pipecat's sentence ended inside it) goes
with that unit's frame instead: the context takes whole units, as MOSS keeps them. A frame
pipecat made of a unit and the words after it (it matched the unit across two LLM tokens)
counts for them the same way (``opens``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipecat.frames.frames import TTSTextFrame

from moss_pipecat.speech.units import TimedWord, merged_end, next_unit


class Carries:
    """The LLM text each word frame of one reply carried past its unit, by unit index."""

    def __init__(self) -> None:
        self._text: dict[int, str] = {}
        self._lent: dict[int, str] = {}  # a unit's start another frame carried, by unit index
        self._at = 0  # in the text fed, where the units recorded so far end (where found)

    def record(
        self, units: Sequence[TimedWord], index: int, frame: TTSTextFrame, fed: str = ""
    ) -> None:
        """The word frame of unit ``index`` of ``units`` passes (``fed``: the text its turn
        was fed so far). A unit the frame before carried (pipecat found no LLM text left for
        it: ``raw_text`` None) adds nothing to the context, so the context takes no unit
        twice; its frame still counts as taken (the gate reads its tag); LLM text it has
        anyway is all past its unit. The start of a unit the frame carries moves to that
        unit's frame (``_lend``), and a frame left with no text adds nothing."""
        unit = units[index].text.strip()
        lent = self._lent.pop(index, "")
        carried = self._text.get(index - 1, "").lstrip()
        if unit and carried.startswith(unit) and frame.raw_text is None:
            frame.append_to_context = False
            carried = carried[len(unit) :]
        elif unit and carried.startswith(unit) and not frame.raw_text.lstrip().startswith(unit):
            # Its unit was carried whole: its LLM text is all past it (``:)`` of ``:)你``).
            carried = self._lend(units, index, frame, frame.raw_text.strip(), fed)
            frame.append_to_context = bool(frame.raw_text.strip())
        else:
            if lent and frame.raw_text is not None and not frame.raw_text.lstrip().startswith(unit):
                frame.raw_text = lent + frame.raw_text
            raw = (frame.raw_text or "").strip()
            carried = raw[len(unit) :] if raw.startswith(unit) else ""
            carried = self._lend(units, index, frame, carried, fed) if carried else ""
        if carried:
            self._text[index] = carried
        if unit and (at := fed.find(unit, self._at)) >= 0:
            self._at = at + len(unit)

    def opens(self, units: Sequence[TimedWord], index: int, frame: TTSTextFrame) -> bool:
        """Whether ``frame``, with the piece lent to unit ``index``, holds that unit whole,
        alone or with units after it: pipecat's frame for ``「こ`` reads ``こ`` (``「`` came
        with the sentence before, lent here); matched across two LLM tokens, it took the next
        word with it (``Quoted,” he`` for ``“Quoted,”`` and ``he``). ``record`` then gives it
        the piece and counts the units after as the text it carried."""
        unit = units[index].text.strip()
        text = self._lent.get(index, "") + frame.text.lstrip()
        after = text[len(unit) :]
        return bool(unit) and text.startswith(unit) and (not after or after[0].isspace())

    def _lend(
        self, units: Sequence[TimedWord], index: int, frame: TTSTextFrame, carried: str, fed: str
    ) -> str:
        """``carried`` (what ``frame``, unit ``index``'s, carried past it) less a last piece
        that only starts a unit (pipecat's sentence ended inside it: ``了！🎉`` of ``🎉我``):
        that piece leaves the frame's LLM text, with the space before it, and goes with its
        unit's frame (``record``). The piece is found among the units known, else in the text
        fed (``_starts_a_unit``)."""
        rest, k = carried, index + 1
        while k < len(units) and (unit := units[k].text.strip()) and rest.lstrip().startswith(unit):
            rest, k = rest.lstrip()[len(unit) :], k + 1
        if k < len(units):
            piece = rest.strip()
            if not piece or not units[k].text.strip().startswith(piece):
                return carried
        else:
            spans = [(0, 0)]  # the last unit of what is left, from the rules alone
            while span := next_unit(rest, spans[-1][1], final=True):
                spans.append(span)
            piece, k = rest[spans[-1][0] :].strip(), k + len(spans) - 2
            if not piece or not self._starts_a_unit(fed, (frame.raw_text or "").strip(), piece):
                return carried
        raw = frame.raw_text or ""
        cut = len(raw[: len(raw.rstrip()) - len(piece)].rstrip())
        self._lent[k], frame.raw_text = raw[cut:], raw[:cut]
        return carried[: len(carried) - len(piece)].rstrip()

    def _starts_a_unit(self, fed: str, raw: str, piece: str) -> bool:
        """Whether ``piece``, the end of ``raw`` (a word frame's LLM text), is only the start
        of its unit in the text fed: more of it follows there (``units.merged_end``)."""
        end = fed.find(raw, self._at) + len(raw)
        if end < len(raw) or not piece:
            return False
        start = end - len(piece)
        glued_left = start > 0 and not fed[start - 1].isspace()
        unit = next_unit(fed, start, final=True)  # (more text can only make it longer)
        if unit is not None and unit[1] > end:
            return True
        merged = merged_end(fed, end, glued_left, final=False)
        return merged is not None and merged > end

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
