"""What callers ask of the engine: the commands (``moss_pipecat.speech.commands``, defined
there once so the wire and the remote client run the same checks) and the facts they are
checked against.

A command is data: ``MossEngine.submit(session_id, command)`` checks it against the engine
(``checked``, on the caller's thread, so bad input fails at once and never reaches the engine
thread), queues it, and returns a future of its result. The engine thread applies commands
between ticks, in the order they were submitted (``engine.handlers``). The wire protocol's
client messages map onto these one to one (``turn.text`` and ``turn.ids`` both push text).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch

from moss_pipecat.engine.records import TurnRecord, check_records
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.speech import fields as F
from moss_pipecat.speech.commands import (
    AddUserTurn,
    Close,
    CreateSession,
    EndText,
    Interrupt,
    PushText,
    Reset,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
    _Command,
)

if TYPE_CHECKING:
    from moss_pipecat.engine.config import EngineConfig
    from moss_pipecat.engine.rows import RowLayout

__all__ = [
    "AddUserTurn",
    "Close",
    "Command",
    "CreateSession",
    "EndText",
    "EngineFacts",
    "HistoryDelta",
    "Interrupt",
    "PushText",
    "Reset",
    "RestoreHistory",
    "SetLimits",
    "SetSampling",
    "SetVoice",
    "Snapshot",
    "StartTurn",
]


@dataclass(frozen=True)
class EngineFacts:
    """What a command is checked against: fixed for the engine's lifetime, safe to read from
    any thread."""

    layout: RowLayout
    config: EngineConfig
    text_vocab: int


# Commands only the engine side builds (the server, from a client's binary restore frame): they
# carry tensors and history records, so they live here rather than in the pure-Python
# ``speech.commands`` the remote client shares.


@dataclass(frozen=True)
class RestoreHistory(_Command):
    """Gives a conversation with no turns yet the history a client kept of it (after its
    server was lost): the voice, the turns (``TurnRecord``, oldest first) and, when given,
    the sampling noise's key and position, and where the last turn's noise began
    (``turn_noise``, ``HistoryChange``). The rows are rebuilt exactly as the engine built
    them; the next prefill feeds them. Result: None."""

    turns: tuple[TurnRecord, ...] = ()
    voice: torch.Tensor | None = field(default=None, compare=False)  # codec frames [R, rvq]
    seed: int | None = None
    noise_counter: int = 0
    turn_noise: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.turns, tuple) or any(
            not isinstance(t, TurnRecord) for t in self.turns
        ):
            raise InvalidInputError("turns must be a tuple of TurnRecord")
        object.__setattr__(self, "seed", F.seed(self.seed))
        object.__setattr__(
            self, "noise_counter", F.integer("noise_counter", self.noise_counter, 0, 2**62)
        )
        if self.turn_noise is not None:
            noise = F.integer("turn_noise", self.turn_noise, 1 - 2**62, 2**62)
            object.__setattr__(self, "turn_noise", noise)

    def checked(self, facts: EngineFacts) -> RestoreHistory:
        voice = None if self.voice is None else facts.layout.check_frames(self.voice, "voice")
        turns = check_records(facts, self.turns)
        return dataclasses.replace(self, turns=turns, voice=voice)


@dataclass(frozen=True)
class HistoryDelta(_Command):
    """Result: what changed in the history since ``cursor`` (a ``records.HistoryCursor``
    that only this command touches), as a ``records.HistoryChange``; ``full``: everything."""

    cursor: Any = field(compare=False)
    full: bool = False


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
