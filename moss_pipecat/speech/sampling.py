"""A session's decoding settings, as every layer (engine, wire, service) names them; pure
Python so the client and the protocol need no torch (``moss_pipecat.model.sampling``
re-exports it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.speech import fields as F

MAX_TEMPERATURE = 100.0
MAX_TOP_K = 4096  # above the audio vocabulary (1027): a larger top_k filters nothing more
MAX_REPETITION_PENALTY = 100.0
MAX_REPETITION_WINDOW = 4096  # the engine's own cap (``repetition_window_max``) is lower


def in_range(values: Mapping[str, Any]) -> dict[str, Any]:
    """Each sampling value checked against its range and normalized (int/float/bool); the
    wire runs this alone, ``SamplingParams`` runs it and the rules between values."""
    out = dict(values)
    checks = {
        "temperature": lambda v: F.real("temperature", v, 0.0, MAX_TEMPERATURE),
        "top_k": lambda v: F.integer("top_k", v, 0, MAX_TOP_K + 1),
        "top_p": lambda v: F.real("top_p", v, 0.0, 1.0, low_open=True),
        "repetition_penalty": lambda v: F.real(
            "repetition_penalty", v, 0.0, MAX_REPETITION_PENALTY, low_open=True
        ),
        "repetition_window": lambda v: F.integer(
            "repetition_window", v, 0, MAX_REPETITION_WINDOW + 1
        ),
        "greedy": lambda v: F.flag("greedy", v),
    }
    for name, check in checks.items():
        if name in out:
            out[name] = check(out[name])
    return out


@dataclass(frozen=True)
class SamplingParams:
    """Per-session decoding settings (upstream defaults). Each value has a range
    (``in_range``); top_k 0 turns top-k off; a temperature of 0 needs ``greedy``."""

    temperature: float = 0.8
    top_k: int = 30
    top_p: float = 0.6
    repetition_penalty: float = 1.1
    repetition_window: int = 50
    greedy: bool = False

    def __post_init__(self) -> None:
        values = in_range({f.name: getattr(self, f.name) for f in fields(self)})
        for name, value in values.items():
            object.__setattr__(self, name, value)
        if not self.greedy and not self.temperature > 0:
            raise InvalidInputError(
                f"temperature must be > 0 (or greedy=True), got {self.temperature}"
            )

    @classmethod
    def greedy_decoding(cls, repetition_penalty: float = 1.1, window: int = 50) -> SamplingParams:
        """Argmax after the repetition penalty (what the goldens use)."""
        return cls(greedy=True, repetition_penalty=repetition_penalty, repetition_window=window)
