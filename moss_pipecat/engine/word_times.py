"""When each word of a turn is spoken, estimated from the frames generated and the text fed.

MOSS-TTS-Realtime reports no word timings, so the engine estimates them, once, for everyone
(the pipecat service, the server's clients, interruption summaries): a word starts after its
preceding characters at the session's speaking rate, never later than the audio generated so
far, and only once the model has been fed the whole word (the text fed is an upper bound on
what can have been said). When the turn ends, the fed words not yet placed are spread evenly
over the rest of its audio; words never fed (an early EOS, a frame cap) are never placed.

Times are seconds from the turn's first audio frame, strictly increasing, and always inside
the turn's audio. ``heard(frames)`` is the one answer to "which words did the user hear".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moss_pipecat.engine.config import FRAME_SECONDS

# Smallest gap between two word times: keeps times strictly increasing (pipecat orders word
# frames by them) without visibly moving any word.
MIN_GAP_S = 0.001


@dataclass
class WordTimer:
    """Word timestamps of one assistant turn.

    Attributes:
        chars_per_second: the speaking rate used to place words.
        text: the turn's text so far (the offsets in ``fed_chars`` index into it).
        placed: every word placed so far with its time, in order.
    """

    chars_per_second: float
    text: str = ""
    placed: list[tuple[str, float]] = field(default_factory=list)
    _next: int = 0  # char offset where the next unplaced word may start

    def add_text(self, piece: str) -> None:
        self.text += piece

    def on_audio(self, frames: int, fed_chars: int) -> list[tuple[str, float]]:
        """Places the words that start within ``frames`` generated frames.

        Args:
            frames: audio frames of the turn generated so far.
            fed_chars: characters of ``text`` covered by the text tokens fed so far.
        """
        audio_s = frames * FRAME_SECONDS
        out = []
        for word, start in self._words(fed_chars, final=False):
            t = max(start / self.chars_per_second, self._after_last())
            if t >= audio_s:
                break
            out.append(self._place(word, start, t))
        return out

    def finish(self, frames: int, fed_chars: int) -> list[tuple[str, float]]:
        """The turn ended after ``frames`` audio frames: places its remaining fed words,
        evenly over the audio left, all before the audio's end."""
        end = frames * FRAME_SECONDS
        rest = self._words(fed_chars, final=True) if frames > 0 else []
        if not rest:
            return []
        if self.placed:
            last = self.placed[-1][1]  # < end: on_audio only places inside the audio
            step = (end - last) / (len(rest) + 1)
            times = [last + step * (k + 1) for k in range(len(rest))]
        else:
            times = [end * k / len(rest) for k in range(len(rest))]
        return [self._place(w, s, t) for (w, s), t in zip(rest, times, strict=True)]

    def heard(self, frames: int) -> list[tuple[str, float]]:
        """The words placed before the end of the first ``frames`` frames."""
        limit = frames * FRAME_SECONDS
        return [(w, t) for w, t in self.placed if t < limit]

    def heard_text(self, frames: int) -> str:
        return " ".join(w for w, _ in self.heard(frames))

    # ---- internals -----------------------------------------------------------------------
    def _after_last(self) -> float:
        return self.placed[-1][1] + MIN_GAP_S if self.placed else 0.0

    def _words(self, fed_chars: int, final: bool) -> list[tuple[str, int]]:
        """Unplaced words fed whole, with their start offsets. Until the turn ends, a word
        touching the end of the text may still grow, so it waits."""
        text, out = self.text, []
        i, n = self._next, min(len(self.text), fed_chars)
        while i < n:
            while i < n and text[i].isspace():
                i += 1
            j = i
            while j < len(text) and not text[j].isspace():
                j += 1
            if i == j or j > n or (j == len(text) and not final):
                break
            out.append((text[i:j], i))
            i = j
        return out

    def _place(self, word: str, start: int, t: float) -> tuple[str, float]:
        self._next = start + len(word)
        self.placed.append((word, t))
        return word, t
