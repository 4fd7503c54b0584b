"""Estimating when each word is spoken, from the audio frames generated so far.

MOSS-TTS-Realtime does not report word timings, so they are estimated: a word is taken to start
after its preceding characters at the session's speaking rate (characters per second, learned
from finished turns), never later than the audio generated so far. When the turn ends, the
words not yet placed are spread evenly over the rest of its audio. With pipecat's
``push_text_frames=False`` these times decide which words reach the LLM context if the user
interrupts, so the context holds (about) what was actually heard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAME_SECONDS = 0.08
DEFAULT_CHARS_PER_SECOND = 14.0


@dataclass
class WordTimer:
    """Word timestamps for one turn (seconds from its first audio frame)."""

    chars_per_second: float = DEFAULT_CHARS_PER_SECOND
    text: str = ""
    _next_word: int = 0  # char offset where the next unplaced word starts
    _last_time: float = 0.0
    _placed: list[tuple[str, float]] = field(default_factory=list)

    def add_text(self, piece: str) -> None:
        self.text += piece

    def _words(self, final: bool) -> list[tuple[str, int]]:
        """Complete words not placed yet, with their start offsets (the last word of an
        unfinished text may still grow, so it is held back)."""
        out = []
        i, n = self._next_word, len(self.text)
        while i < n:
            while i < n and self.text[i].isspace():
                i += 1
            j = i
            while j < n and not self.text[j].isspace():
                j += 1
            if i == j or (j == n and not final):
                break
            out.append((self.text[i:j], i))
            i = j
        return out

    def on_audio(self, frames_so_far: int) -> list[tuple[str, float]]:
        """Words whose estimated start lies within the audio generated so far."""
        audio_s = frames_so_far * FRAME_SECONDS
        out = []
        for word, start in self._words(final=False):
            t = start / self.chars_per_second
            if t > audio_s:
                break
            out.append(self._place(word, start, t))
        return out

    def finish(self, total_frames: int) -> list[tuple[str, float]]:
        """Places every remaining word over the rest of the turn's audio."""
        rest = self._words(final=True)
        if not rest:
            return []
        end = max(total_frames * FRAME_SECONDS, self._last_time)
        step = (end - self._last_time) / len(rest)
        return [
            self._place(word, start, self._last_time + step * k)
            for k, (word, start) in enumerate(rest)
        ]

    def _place(self, word: str, start: int, t: float) -> tuple[str, float]:
        t = max(t, self._last_time)
        self._last_time = t
        self._next_word = start + len(word)
        self._placed.append((word, t))
        return word, t

    def heard_text(self, heard_s: float) -> str:
        """The words placed before ``heard_s`` seconds of audio."""
        return " ".join(w for w, t in self._placed if t < heard_s)
