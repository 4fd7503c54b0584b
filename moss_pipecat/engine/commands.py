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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

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
    "Interrupt",
    "PushText",
    "Reset",
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
    Close,
]
