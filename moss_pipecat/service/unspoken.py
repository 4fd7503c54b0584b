"""A reply the TTS does not speak (``skip_tts``) reaches the LLM context spaced as written.

pipecat cuts such a reply into sentences (its sentence aggregator strips the spaces between
them) and pushes each as an ``AggregatedTextFrame`` that says nothing of its spacing, so the
assistant aggregator joins them with a space: ``我们明天见。 你好吗？`` for a Chinese or
Japanese reply, which puts none between sentences. Each sentence after the first carries its
seam and says so (``includes_inter_frame_spaces``): the whitespace the LLM wrote before it
(``WrittenText.skipped_seam``), else, where the sentence is not found as written, the rule
for its scripts (``units.sentence_seam``, which joins English sentences with one space and
CJK ones with none).
"""

from __future__ import annotations

from collections.abc import Callable

from pipecat.frames.frames import (
    AggregatedTextFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSTextFrame,
)

from moss_pipecat.speech.units import sentence_seam


class UnspokenReplies:
    """The frames leaving the service, in order: the sentences of a skipped reply (between its
    ``LLMFullResponseStartFrame`` and ``LLMFullResponseEndFrame``, both marked ``skip_tts``)
    get their seams. Text skipped inside a spoken reply is left as pipecat made it."""

    def __init__(self, seam: Callable[[str, str], str] = sentence_seam) -> None:
        self._seam = seam  # (last sentence, sentence) -> the whitespace between them
        self._tail: str | None = None  # the skipped reply's last sentence; None: none open

    def passing(self, frame: Frame) -> None:
        """``frame`` leaves the service downstream (a skipped sentence: spaced here)."""
        # Only a skipped reply's own frames count: they leave pipecat's queue in order, and a
        # spoken reply's start may pass among them.
        if isinstance(frame, LLMFullResponseStartFrame) and frame.skip_tts:
            self._tail = ""
        elif isinstance(frame, InterruptionFrame) or (
            isinstance(frame, LLMFullResponseEndFrame) and frame.skip_tts
        ):
            self._tail = None
        elif (
            self._tail is not None
            and isinstance(frame, AggregatedTextFrame)
            and not isinstance(frame, TTSTextFrame)
            and frame.skip_tts
            and frame.text
        ):
            seam = self._seam(self._tail, frame.text)
            self._tail = frame.text
            frame.text = seam + frame.text
            if frame.raw_text:  # what the aggregator takes, where set
                frame.raw_text = seam + frame.raw_text
            frame.includes_inter_frame_spaces = True
