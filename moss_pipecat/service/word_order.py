"""A reply's text frames leave the service in the order pipecat's sequencer matched them.

pipecat 1.14's streaming sequencer matches a word time against the sentence it belongs to
once the LLM has finished that sentence (the next one's first letter confirms its end). A
word time that reaches it earlier (the bot speaks faster than the LLM writes) is parked; when
the sentence comes in, the sequencer matches the parked words and queues their frames (the
sentence's announcement, then each word and its progress) at the end of the reply's audio
context, behind word times queued before the sentence came. Those are matched when they leave
the queue, after the parked words, yet leave it first: their frames would come out ahead
(``Mona The Lisa`` for ``The Mona Lisa``), in the LLM context too.

``MatchOrder`` records each text frame the sequencer queues; a word frame matched as its word
time leaves the queue first pulls ahead the queued frames of earlier words (word times
strictly increase within a reply: ``HeardClock.add_words``), whose queued copies are then
skipped. Nothing waits: the frames go out in the order they were matched.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import AggregatedTextFrame, AggregatedTextProgressFrame, Frame

# What the sequencer makes: a sentence's announcement, word frames (``TTSTextFrame`` is an
# ``AggregatedTextFrame``) and their progress.
SEQUENCED = (AggregatedTextFrame, AggregatedTextProgressFrame)


class MatchOrder:
    """One reply's text frames queued in its audio context, in the order they were matched."""

    def __init__(self) -> None:
        self._queued: list[Frame] = []  # queued, not pushed yet
        self._ahead: set[int] = set()  # ids of frames pushed before their queued copy left

    def queued(self, item: object) -> None:
        """An item goes into the reply's audio context: a text frame is recorded."""
        if isinstance(item, SEQUENCED):
            self._queued.append(item)

    def due(self, frame: Frame) -> list[Frame]:
        """The frames to push now, in order, for ``frame`` (a text frame being pushed).

        Its queued copy leaving the context after it was pulled ahead: none. A queued frame
        leaving in turn: itself. A frame matched just now: the queued frames of words timed
        before it (with the announcements among them), then itself.
        """
        if frame.id in self._ahead:
            self._ahead.discard(frame.id)
            return []
        if any(f is frame for f in self._queued):
            self._queued = [f for f in self._queued if f is not frame]
            return [frame]
        if frame.pts is None:
            return [frame]
        earlier = [i for i, f in enumerate(self._queued) if f.pts is not None and f.pts < frame.pts]
        if not earlier:
            return [frame]
        ahead, self._queued = self._queued[: earlier[-1] + 1], self._queued[earlier[-1] + 1 :]
        self._ahead.update(f.id for f in ahead)
        logger.debug(f"{len(ahead)} text frames matched before {frame} pushed ahead of it")
        return [*ahead, frame]
