"""The LLM's text as written, for the sentences pipecat hands over without the spaces before them.

pipecat's sentence mode strips the spaces between sentences (its aggregator), so "Hello. 你好。"
and "Hello.你好。" reach the TTS alike, as do "好。 OK" and "好。OK", and "park.🎉 Next" and
"park. 🎉 Next". The service reads every LLM text frame before pipecat aggregates it
(``WrittenText.passing``), so each sentence of a reply it speaks gets back what the LLM wrote
before it: one space for any whitespace, else nothing. The model reads the reply as written
(an emoji glued to the next word, or not, is one unit or two), and the LLM context gets it so.
Where a sentence is not found as written (a text filter or transform changed it, a
``TTSSpeakFrame``'s text), the rule for its scripts decides (``units.sentence_seam``).
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, LLMFullResponseStartFrame, LLMTextFrame

from moss_pipecat.speech.pieces import SurrogateJoiner
from moss_pipecat.speech.units import sentence_seam

WRITTEN = (LLMTextFrame, LLMFullResponseStartFrame)  # the frames ``WrittenText.passing`` reads


class WrittenText:
    """The text of the LLM reply being aggregated (its spoken frames, surrogate pairs joined
    across them) and where in it the last sentence found ended."""

    def __init__(self, keep: bool = True) -> None:
        self._joiner = SurrogateJoiner()  # a surrogate pair split across two LLM frames
        self._keep = keep  # (streaming tokens, no sentence asks for a seam: nothing kept)
        self._text = ""
        self._at = 0

    def passing(self, frame: Frame) -> None:
        """``frame`` reaches the service, before pipecat aggregates it: an LLM text frame gets
        whole characters (pipecat, its context too) and is kept if spoken; a spoken reply's
        start clears what was kept."""
        if isinstance(frame, LLMFullResponseStartFrame) and not frame.skip_tts:
            self._text, self._at = "", 0
        elif isinstance(frame, LLMTextFrame):
            frame.text = self._joiner.push(frame.text)
            if self._keep and not frame.skip_tts:
                self._text += frame.text

    def seam(self, before: str, sentence: str) -> str:
        """What goes between ``before`` (the reply's last sentence fed; "" for none) and
        ``sentence``: a space where the LLM wrote whitespace before it, else nothing; the
        rule (``sentence_seam``) where it is not found after the last one found."""
        start = self._text.find(sentence, self._at) if sentence else -1
        if start < 0:
            return sentence_seam(before, sentence)
        self._at = start + len(sentence)
        if not before or before[-1].isspace() or sentence[0].isspace():
            return ""
        return " " if start > 0 and self._text[start - 1].isspace() else ""
