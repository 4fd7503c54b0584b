"""The kinds of value a command carries, each checked (and normalized) by one function.

Pure Python, so the engine's commands, the wire's models and the client all run the same
check: a bad value is an ``InvalidInputError`` with the same message wherever it is caught.
Counts and ids are bounded by what the wire carries (a JSON int32), seeds by an int64.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any

from moss_pipecat.errors import InvalidInputError

MAX_COUNT = 2**31  # frames and token ids: int32 on the wire
MAX_SEED = 2**63  # a session's noise key: int64


def integer(name: str, value: Any, low: int = 0, high: int = MAX_COUNT) -> int:
    """``value`` as an int in [low, high): any integer type (numpy's too), never a float or a
    bool."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{name} must be an int, got {value!r}") from None
    if not low <= v < high:
        raise InvalidInputError(f"{name} must be an int in [{low}, {high}), got {value!r}")
    return v


def optional_integer(name: str, value: Any, low: int = 0, high: int = MAX_COUNT) -> int | None:
    return None if value is None else integer(name, value, low, high)


def seed(value: Any) -> int | None:
    """A sampling seed (None: a random one)."""
    return optional_integer("seed", value, 0, MAX_SEED)


def token_ids(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    """Text token ids: each an int in [0, 2**31) (the model's vocabulary is checked by the
    engine, which knows it)."""
    if isinstance(values, (str, bytes)):
        raise InvalidInputError(f"{name} must be a sequence of ints, got {values!r}")
    try:
        items = list(values)
    except TypeError:
        raise InvalidInputError(f"{name} must be a sequence of ints, got {values!r}") from None
    return tuple(integer(name, v) for v in items)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a bool, got {value!r}")
    return value


def optional_flag(name: str, value: Any) -> bool | None:
    return None if value is None else flag(name, value)


def real(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number in [low, high] ((low, high] when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    v = float(value)
    above = v > low if low_open else v >= low
    if not (math.isfinite(v) and above and v <= high):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise InvalidInputError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return v


def text_piece(value: Any) -> str | bytes:
    """A piece of a turn's streamed text: str, or bytes (UTF-8, which may split a character)."""
    if not isinstance(value, (str, bytes)):
        raise InvalidInputError(f"text must be str or bytes, got {type(value).__name__}")
    return value


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str, got {type(value).__name__}")
    return value
