"""What callers ask of the engine: one frozen dataclass per command.

A command is data: ``MossEngine.submit(session_id, command)`` checks it against the engine
(``checked``, on the caller's thread, so bad input fails at once and never reaches the engine
thread), queues it, and returns a future of its result. The engine thread applies commands
between ticks, in the order they were submitted (``engine.handlers``). The wire protocol's
client messages map onto these one to one (``turn.text`` and ``turn.ids`` both push text).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch

from moss_pipecat.engine.events import Channel
from moss_pipecat.engine.records import TurnRecord, check_records
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model.sampling import SamplingParams

if TYPE_CHECKING:
    from moss_pipecat.engine.config import EngineConfig
    from moss_pipecat.engine.rows import RowLayout


@dataclass(frozen=True)
class EngineFacts:
    """What a command is checked against: fixed for the engine's lifetime, safe to read from
    any thread."""

    layout: RowLayout
    config: EngineConfig
    text_vocab: int


class _Command:
    def checked(self, facts: EngineFacts) -> _Command:
        """This command, validated (and normalized) for an engine; raises InvalidInputError."""
        return self


@dataclass(frozen=True)
class CreateSession(_Command):
    """Opens the conversation ``session_id`` names; result: None."""

    voice: torch.Tensor | None = field(default=None, compare=False)  # codec frames [R, rvq]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # key of the session's sampling noise (None: a random one)

    def checked(self, facts: EngineFacts) -> CreateSession:
        _check_window(self.sampling, facts)
        if self.voice is None:
            return self
        return dataclasses.replace(self, voice=facts.layout.check_frames(self.voice, "voice"))


@dataclass(frozen=True)
class StartTurn(_Command):
    """Opens an assistant turn whose chunks and summary go to ``channel``; result: turn id."""

    channel: Channel = field(compare=False)
    max_frames: int | None = None  # the caller's own cap on the turn's frames
    min_frames: int | None = None  # frames that never end the turn (None: the engine's)
    eos_after_text: bool | None = None  # EOS masked until all text is fed (None: the engine's)

    def __post_init__(self) -> None:
        m = self.max_frames
        if m is not None and (not _is_int(m) or m < 1):
            raise InvalidInputError(f"max_frames must be a positive int, got {m!r}")
        m = self.min_frames
        if m is not None and (not _is_int(m) or m < 0):
            raise InvalidInputError(f"min_frames must be an int >= 0, got {m!r}")


@dataclass(frozen=True)
class PushText(_Command):
    """Adds text to turn ``turn_id``: model text ``ids``, their ``text``, and for each id the
    end of its characters in the turn's text (None: each covers all the text so far). Text for
    a turn that already ended is dropped. ``done``: no more text follows. Result: None."""

    turn_id: int
    ids: tuple[int, ...] = ()
    text: str = ""
    ends: tuple[int, ...] | None = None
    done: bool = False

    def checked(self, facts: EngineFacts) -> PushText:
        # Out-of-vocabulary ids fail the turn on the engine thread (the turn owns the error).
        ids = tuple(int(i) for i in self.ids)
        ends = None if self.ends is None else tuple(int(e) for e in self.ends)
        return dataclasses.replace(self, ids=ids, ends=ends)


@dataclass(frozen=True)
class EndText(PushText):
    """The last text of turn ``turn_id`` (may be empty): it speaks what it has, then ends."""

    done: bool = True


@dataclass(frozen=True)
class Interrupt(_Command):
    """Stops the open (or just finished) assistant turn and keeps its first ``heard_frames``
    frames in the conversation; result: the turn's ``TurnSummary``, or None if nothing was cut."""

    heard_frames: int

    def __post_init__(self) -> None:
        try:  # any integer type (numpy's too), never a float or a bool
            heard = operator.index(self.heard_frames)
        except TypeError:
            heard = -1
        if heard < 0 or isinstance(self.heard_frames, bool):
            raise InvalidInputError(f"heard_frames must be an int >= 0, got {self.heard_frames!r}")
        object.__setattr__(self, "heard_frames", heard)


@dataclass(frozen=True)
class AddUserTurn(_Command):
    """Adds what the user said: transcript ids and the speech's codec frames [A, rvq]."""

    text_ids: tuple[int, ...]
    frames: torch.Tensor = field(compare=False)

    def checked(self, facts: EngineFacts) -> AddUserTurn:
        frames = facts.layout.check_frames(self.frames, "user audio frames")
        if frames.shape[0] == 0:
            raise InvalidInputError("a user turn needs at least one audio frame")
        ids = tuple(int(i) for i in self.text_ids)
        if any(not 0 <= i < facts.text_vocab for i in ids):
            raise InvalidInputError(f"user text ids must be in [0, {facts.text_vocab})")
        return dataclasses.replace(self, text_ids=ids, frames=frames)


@dataclass(frozen=True)
class SetVoice(_Command):
    """Replaces the reference voice (codec frames [R, rvq]) or removes it (None)."""

    frames: torch.Tensor | None = field(default=None, compare=False)

    def checked(self, facts: EngineFacts) -> SetVoice:
        if self.frames is None:
            return self
        return SetVoice(facts.layout.check_frames(self.frames, "voice"))


@dataclass(frozen=True)
class SetSampling(_Command):
    """New decoding settings; a ``seed`` restarts the session's noise from that key."""

    sampling: SamplingParams
    seed: int | None = None

    def checked(self, facts: EngineFacts) -> SetSampling:
        _check_window(self.sampling, facts)
        return self


@dataclass(frozen=True)
class SetLimits(_Command):
    """Per-session overrides of the engine's context budget and lookahead (None: the engine's
    value; ``unlimited_lookahead`` generates as fast as possible)."""

    context_budget: int | None = None
    lookahead_s: float | None = None
    unlimited_lookahead: bool = False

    def checked(self, facts: EngineFacts) -> SetLimits:
        cfg = facts.config
        budget = self.context_budget
        if budget is not None and not (cfg.turn_reserve < budget <= cfg.max_context):
            raise InvalidInputError(
                f"context_budget must be in ({cfg.turn_reserve}, {cfg.max_context}]"
            )
        if self.lookahead_s is not None and not self.lookahead_s > 0:
            raise InvalidInputError("lookahead_s must be > 0")
        return self


@dataclass(frozen=True)
class Reset(_Command):
    """Forgets every turn (keeps the system prompt and voice); ends an open turn ("closed")."""


@dataclass(frozen=True)
class Snapshot(_Command):
    """Result: the conversation's rows and cache bookkeeping (tests, debugging)."""


@dataclass(frozen=True)
class RestoreHistory(_Command):
    """Gives a conversation with no turns yet the history a client kept of it (after its
    server was lost): the voice, the turns (``TurnRecord``, oldest first) and, when given,
    the sampling noise's key and position. The rows are rebuilt exactly as the engine built
    them; the next prefill feeds them. Result: None."""

    turns: tuple[TurnRecord, ...] = ()
    voice: torch.Tensor | None = field(default=None, compare=False)  # codec frames [R, rvq]
    seed: int | None = None
    noise_counter: int = 0

    def checked(self, facts: EngineFacts) -> RestoreHistory:
        if not isinstance(self.turns, tuple) or any(
            not isinstance(t, TurnRecord) for t in self.turns
        ):
            raise InvalidInputError("turns must be a tuple of TurnRecord")
        if not _is_int(self.noise_counter) or not 0 <= self.noise_counter < 2**62:
            raise InvalidInputError(
                f"noise_counter must be an int >= 0, got {self.noise_counter!r}"
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise InvalidInputError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        voice = None if self.voice is None else facts.layout.check_frames(self.voice, "voice")
        turns = check_records(facts, self.turns)
        return dataclasses.replace(self, turns=turns, voice=voice)


@dataclass(frozen=True)
class HistoryDelta(_Command):
    """Result: what changed in the history since ``cursor`` (a ``records.HistoryCursor``
    that only this command touches), as a ``records.HistoryChange``; ``full``: everything."""

    cursor: Any = field(compare=False)
    full: bool = False


@dataclass(frozen=True)
class Close(_Command):
    """Ends an open turn ("closed") and frees the session's slot; closing twice is a no-op."""


Command = Union[  # noqa: UP007 (a runtime alias that reads well in signatures)
    CreateSession,
    StartTurn,
    PushText,
    EndText,
    Interrupt,
    AddUserTurn,
    SetVoice,
    SetSampling,
    SetLimits,
    Reset,
    Snapshot,
    RestoreHistory,
    HistoryDelta,
    Close,
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_window(sampling: SamplingParams, facts: EngineFacts) -> None:
    if sampling.repetition_window > facts.config.repetition_window_max:
        raise InvalidInputError(
            f"repetition_window {sampling.repetition_window} exceeds the engine's "
            f"{facts.config.repetition_window_max}"
        )
