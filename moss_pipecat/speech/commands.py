"""What callers ask of a conversation: one frozen dataclass per command, its fields and checks
written once.

A command checks what it can alone when it is made (``__post_init__``: types, ranges; bad
input is an ``InvalidInputError`` and values are normalized) and what needs the engine in
``checked(facts)`` (codec frames against the row layout, ids against the vocabulary, limits
against the engine's config). Pure Python: the engine (``moss_pipecat.engine`` re-exports
these and applies them, ``engine.handlers``), the wire's messages (``protocol``: a message that
carries a command runs the command's checks) and the remote client all use the same classes,
so a bad value is refused the same way locally and remotely.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.speech import fields as F
from moss_pipecat.speech.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

MAX_TURN_ID = 2**32  # the wire's u32


class TurnOutput(Protocol):
    """Where a turn's chunks and summary go (the engine's ``Channel``)."""

    def put(self, item: object) -> None: ...


class _Command:
    def checked(self, facts: Any) -> _Command:
        """This command, validated (and normalized) against an engine's facts
        (``engine.commands.EngineFacts``); raises InvalidInputError."""
        return self


def _set(command: object, name: str, value: object) -> None:
    object.__setattr__(command, name, value)  # normalizing a frozen dataclass's field


@dataclass(frozen=True)
class CreateSession(_Command):
    """Opens the conversation ``session_id`` names; result: None."""

    voice: torch.Tensor | None = field(default=None, compare=False)  # codec frames [R, rvq]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # key of the session's sampling noise (None: a random one)

    def __post_init__(self) -> None:
        _check_sampling(self.sampling)
        _set(self, "seed", F.seed(self.seed))

    def checked(self, facts: Any) -> CreateSession:
        _check_window(self.sampling, facts)
        if self.voice is None:
            return self
        return dataclasses.replace(self, voice=_frames(facts, self.voice, "voice"))


@dataclass(frozen=True)
class StartTurn(_Command):
    """Opens an assistant turn whose chunks and summary go to ``channel``; result: turn id."""

    channel: TurnOutput | None = field(default=None, compare=False)  # set by the engine's caller
    max_frames: int | None = None  # the caller's own cap on the turn's frames
    min_frames: int | None = None  # frames that never end the turn (None: the engine's)
    eos_after_text: bool | None = None  # EOS masked until all text is fed (None: the engine's)

    def __post_init__(self) -> None:
        _set(self, "max_frames", F.optional_integer("max_frames", self.max_frames, 1))
        _set(self, "min_frames", F.optional_integer("min_frames", self.min_frames, 0))
        _set(self, "eos_after_text", F.optional_flag("eos_after_text", self.eos_after_text))

    def checked(self, facts: Any) -> StartTurn:
        if self.channel is None:
            raise InvalidInputError("StartTurn needs the channel its audio goes to")
        return self


@dataclass(frozen=True)
class PushText(_Command):
    """Adds text to turn ``turn_id``: model text ``ids``, their ``text``, and for each id the
    end of its characters in the turn's text (None: each covers all the text so far). Text for
    a turn that already ended is dropped. ``done``: no more text follows. Result: None.
    Out-of-vocabulary ids fail the turn on the engine thread (the turn owns the error)."""

    turn_id: int
    ids: tuple[int, ...] = ()
    text: str = ""
    ends: tuple[int, ...] | None = None
    done: bool = False

    def __post_init__(self) -> None:
        _set(self, "turn_id", F.integer("turn_id", self.turn_id, 0, MAX_TURN_ID))
        _set(self, "ids", F.token_ids("text ids", self.ids))
        _set(self, "text", F.text("text", self.text))
        if self.ends is not None:
            _set(self, "ends", F.token_ids("ends", self.ends))
        _set(self, "done", F.flag("done", self.done))


@dataclass(frozen=True)
class EndText(PushText):
    """The last text of turn ``turn_id`` (may be empty): it speaks what it has, then ends."""

    done: bool = True


@dataclass(frozen=True)
class Interrupt(_Command):
    """Stops the open (or just finished) assistant turn and keeps its first ``heard_frames``
    frames in the conversation; result: the turn's ``TurnSummary``, or None if nothing was cut.

    ``heard_units``: how many of the turn's units (in the order they were placed) the listener
    kept, e.g. the words that reached an LLM context; the summary's ``spoken_text`` is those
    (at most the units placed). None: the units placed in the heard frames.

    ``turn_id``: cut only that turn; where it is not the open or just finished turn (it was
    cut away already, or another reply came after it) nothing is cut. Named, the reply is cut
    also where only user turns came after it (the user spoke over its tail): they stay after
    the cut. A cut sent again after its reply was lost names its turn, so it never cuts the
    turn before it."""

    heard_frames: int
    heard_units: int | None = None
    turn_id: int | None = None

    def __post_init__(self) -> None:
        _set(self, "heard_frames", F.integer("heard_frames", self.heard_frames))
        _set(self, "heard_units", F.optional_integer("heard_units", self.heard_units))
        _set(self, "turn_id", F.optional_integer("turn_id", self.turn_id))


@dataclass(frozen=True)
class AddUserTurn(_Command):
    """Adds what the user said: transcript ids and the speech's codec frames [A, rvq]."""

    text_ids: tuple[int, ...]
    frames: torch.Tensor = field(compare=False)

    def __post_init__(self) -> None:
        _set(self, "text_ids", F.token_ids("user text ids", self.text_ids))

    def checked(self, facts: Any) -> AddUserTurn:
        frames = _frames(facts, self.frames, "user audio frames")
        if any(i >= facts.text_vocab for i in self.text_ids):
            raise InvalidInputError(f"user text ids must be in [0, {facts.text_vocab})")
        return dataclasses.replace(self, frames=frames)


@dataclass(frozen=True)
class SetVoice(_Command):
    """Replaces the reference voice (codec frames [R, rvq]) or removes it (None)."""

    frames: torch.Tensor | None = field(default=None, compare=False)

    def checked(self, facts: Any) -> SetVoice:
        if self.frames is None:
            return self
        return SetVoice(_frames(facts, self.frames, "voice"))


@dataclass(frozen=True)
class SetSampling(_Command):
    """New decoding settings; a ``seed`` restarts the session's noise from that key."""

    sampling: SamplingParams
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_sampling(self.sampling)
        _set(self, "seed", F.seed(self.seed))

    def checked(self, facts: Any) -> SetSampling:
        _check_window(self.sampling, facts)
        return self


@dataclass(frozen=True)
class SetLimits(_Command):
    """Per-session overrides of the engine's context budget and lookahead (None: the engine's
    value; ``unlimited_lookahead`` generates as fast as possible)."""

    context_budget: int | None = None
    lookahead_s: float | None = None
    unlimited_lookahead: bool = False

    def __post_init__(self) -> None:
        _set(self, "context_budget", F.optional_integer("context_budget", self.context_budget, 1))
        if self.lookahead_s is not None:
            seconds = F.real("lookahead_s", self.lookahead_s, 0.0, math.inf, low_open=True)
            _set(self, "lookahead_s", seconds)
        _set(self, "unlimited_lookahead", F.flag("unlimited_lookahead", self.unlimited_lookahead))

    def checked(self, facts: Any) -> SetLimits:
        cfg = facts.config
        budget = self.context_budget
        if budget is not None and not (cfg.turn_reserve < budget <= cfg.max_context):
            raise InvalidInputError(
                f"context_budget must be in ({cfg.turn_reserve}, {cfg.max_context}]"
            )
        return self


@dataclass(frozen=True)
class Reset(_Command):
    """Forgets every turn (keeps the system prompt and voice); ends an open turn ("closed")."""


@dataclass(frozen=True)
class Snapshot(_Command):
    """Result: the conversation's rows and cache bookkeeping (tests, debugging)."""


@dataclass(frozen=True)
class Close(_Command):
    """Ends an open turn ("closed") and frees the session's slot; closing twice is a no-op."""


def _frames(facts: Any, frames: Any, name: str) -> torch.Tensor:
    """Codec frames [n >= 1, rvq] of the engine's codebooks (the layout checks them)."""
    frames = facts.layout.check_frames(frames, name)
    if frames.shape[0] == 0:
        raise InvalidInputError(f"{name} need at least one audio frame")
    return frames


def _check_sampling(sampling: object) -> None:
    if not isinstance(sampling, SamplingParams):
        raise InvalidInputError(f"sampling must be SamplingParams, got {type(sampling).__name__}")


def _check_window(sampling: SamplingParams, facts: Any) -> None:
    if sampling.repetition_window > facts.config.repetition_window_max:
        raise InvalidInputError(
            f"repetition_window {sampling.repetition_window} exceeds the engine's "
            f"{facts.config.repetition_window_max}"
        )
