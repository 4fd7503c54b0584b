"""The LLM's text as written, for the sentences pipecat hands over without the spaces before them.

pipecat's sentence mode strips the spaces between sentences (its aggregator), so "Hello. 你好。"
and "Hello.你好。" reach the TTS alike, as do "好。 OK" and "好。OK", and "park.🎉 Next" and
"park. 🎉 Next". The service reads every LLM text frame before pipecat aggregates it
(``WrittenText.passing``), so each sentence gets back what the LLM wrote before it: one space
for any whitespace, else nothing. For a reply it speaks, the model reads the reply as written
(an emoji glued to the next word, or not, is one unit or two), and the LLM context gets it so;
a reply it skips (``skip_tts``, ``service/unspoken.py``) reaches the context so. Where a
sentence is not found as written (a text filter or transform changed it, a ``TTSSpeakFrame``'s
text), the rule for its scripts decides (``units.sentence_seam``).
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, LLMFullResponseStartFrame, LLMTextFrame

from moss_pipecat.speech.pieces import SurrogateJoiner
from moss_pipecat.speech.units import sentence_seam

WRITTEN = (LLMTextFrame, LLMFullResponseStartFrame)  # the frames ``WrittenText.passing`` reads

# Skipped replies' text is kept across replies (their sentences leave pipecat's queue long
# after it passed, and an interruption drops the queued ones unseen): at most this much.
SKIPPED_CHARS = 65536


class _Text:
    """Text as written and where in it the last sentence found ended."""

    def __init__(self) -> None:
        self.text, self.at = "", 0

    def seam(self, before: str, sentence: str) -> str:
        """What goes between ``before`` (the last sentence; "" for none) and ``sentence``: a
        space where whitespace was written before it, else nothing; the rule
        (``sentence_seam``) where it is not found after the last one found."""
        start = self.text.find(sentence, self.at) if sentence else -1
        if start < 0:
            return sentence_seam(before, sentence)
        self.at = start + len(sentence)
        if not before or before[-1].isspace() or sentence[0].isspace():
            return ""
        return " " if start > 0 and self.text[start - 1].isspace() else ""

    def add(self, text: str, limit: int | None = None) -> None:
        """``text`` follows; what was found is dropped (but the character before the cursor,
        for the next seam), and the oldest beyond ``limit`` characters."""
        over = 0 if limit is None else len(self.text) + len(text) - limit
        keep = max(self.at - 1, over, 0)
        self.text, self.at = (self.text + text)[keep:], max(self.at - keep, 0)


class WrittenText:
    """The text of the LLM reply being aggregated (its spoken frames, surrogate pairs joined
    across them), and of the replies the TTS skips, each with where the last sentence found
    in it ended."""

    def __init__(self, keep: bool = True) -> None:
        self._joiner = SurrogateJoiner()  # a surrogate pair split across two LLM frames
        self._keep = keep  # (streaming tokens, no spoken sentence asks for a seam)
        self._spoken = _Text()
        self._skipped = _Text()

    def passing(self, frame: Frame) -> None:
        """``frame`` reaches the service, before pipecat aggregates it: an LLM text frame gets
        whole characters (pipecat, its context too) and is kept (if spoken, when sentences
        are asked for); a spoken reply's start clears what was kept of the last one."""
        if isinstance(frame, LLMFullResponseStartFrame) and not frame.skip_tts:
            self._spoken = _Text()
        elif isinstance(frame, LLMTextFrame):
            frame.text = self._joiner.push(frame.text)
            if frame.skip_tts:
                self._skipped.add(frame.text, SKIPPED_CHARS)
            elif self._keep:
                self._spoken.add(frame.text)

    def seam(self, before: str, sentence: str) -> str:
        """The seam before ``sentence`` of the spoken reply, ``before`` its last sentence fed
        (``_Text.seam``)."""
        return self._spoken.seam(before, sentence)

    def skipped_seam(self, before: str, sentence: str) -> str:
        """The seam before ``sentence`` of a skipped reply, ``before`` its last sentence."""
        return self._skipped.seam(before, sentence)
