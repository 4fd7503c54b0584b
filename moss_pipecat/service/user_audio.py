"""Capturing what the user said, as audio, between user-started and user-stopped speaking."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from moss_pipecat.pcm import pcm16_to_float


@dataclass
class UserUtterance:
    """Mono float32 samples of one user turn and their rate."""

    audio: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.audio.size / self.sample_rate


class UserAudioRecorder:
    """Keeps a bounded ring of recent input audio and cuts utterances out of it.

    The voice activity detector reports the start of speech a little late, so an utterance
    starts ``pre_roll_s`` before the start event. Memory is bounded by ``max_seconds`` however
    long the user talks (the most recent audio is kept).
    """

    def __init__(self, max_seconds: float = 30.0, pre_roll_s: float = 0.3) -> None:
        self.max_seconds = max_seconds
        self.pre_roll_s = pre_roll_s
        self._ring: collections.deque[np.ndarray] = collections.deque()
        self._ring_samples = 0
        self._rate: int | None = None
        self._speaking = False
        self._current: list[np.ndarray] = []
        self._current_samples = 0
        self._done: list[UserUtterance] = []

    def add_audio(self, pcm: bytes, sample_rate: int, num_channels: int = 1) -> None:
        samples = pcm16_to_float(pcm, num_channels)
        if self._rate != sample_rate:  # a new rate: older audio cannot be joined to it
            self._ring.clear()
            self._ring_samples = 0
            self._rate = sample_rate
        if self._speaking:
            self._current.append(samples)
            self._current_samples += samples.size
            limit = int(self.max_seconds * sample_rate)
            while self._current_samples - self._current[0].size >= limit:
                self._current_samples -= self._current.pop(0).size
        else:
            self._ring.append(samples)
            self._ring_samples += samples.size
            keep = int(self.pre_roll_s * sample_rate)
            while self._ring and self._ring_samples - self._ring[0].size >= keep:
                self._ring_samples -= self._ring.popleft().size

    def user_started(self) -> None:
        if self._speaking:
            return
        self._speaking = True
        self._current = list(self._ring)
        self._current_samples = self._ring_samples
        self._ring.clear()
        self._ring_samples = 0

    def user_stopped(self) -> None:
        if not self._speaking:
            return
        self._speaking = False
        if self._current_samples and self._rate:
            self._done.append(UserUtterance(np.concatenate(self._current), self._rate))
        self._current = []
        self._current_samples = 0

    def take(self) -> UserUtterance | None:
        """Everything said since the last call, joined into one utterance (None if nothing)."""
        if not self._done:
            return None
        rate = self._done[-1].sample_rate
        parts = [u.audio for u in self._done if u.sample_rate == rate]
        self._done.clear()
        audio = np.concatenate(parts)
        return UserUtterance(audio[-int(self.max_seconds * rate) :], rate)

    def clear(self) -> None:
        self._done.clear()
        self._current = []
        self._current_samples = 0
        self._speaking = False
