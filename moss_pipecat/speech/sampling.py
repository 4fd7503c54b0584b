"""A session's decoding settings, as every layer (engine, wire, service) names them; pure
Python so the client and the protocol need no torch (``moss_pipecat.model.sampling``
re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from moss_pipecat.errors import InvalidInputError


@dataclass(frozen=True)
class SamplingParams:
    """Per-session decoding settings (upstream defaults)."""

    temperature: float = 0.8
    top_k: int = 30
    top_p: float = 0.6
    repetition_penalty: float = 1.1
    repetition_window: int = 50
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise InvalidInputError(
                f"temperature must be > 0 (or greedy=True), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidInputError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise InvalidInputError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        if self.repetition_window < 0:
            raise InvalidInputError("repetition_window must be >= 0")

    @classmethod
    def greedy_decoding(cls, repetition_penalty: float = 1.1, window: int = 50) -> SamplingParams:
        """Argmax after the repetition penalty (what the goldens use)."""
        return cls(greedy=True, repetition_penalty=repetition_penalty, repetition_window=window)
