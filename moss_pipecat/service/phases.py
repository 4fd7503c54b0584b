"""A reply's life in the service as explicit phases, and the moves allowed between them (as the
engine's turns have ``engine.state.Phase``).

::

    WAITING ─► OPENING ─► FEEDING ─► TEXT_ENDED ─► READ ─► CLOSED ─► DONE
                  │          │            │                  ▲
                  └──────────┴────────────┴─► FAILED ────────┘
    any phase but STOPPED ─► STOPPED (an interruption dropped the reply)

What is not a phase stays a fact on ``Reply`` because it changes independently of these: pipecat
ending the reply's text (``flushed``, in any phase up to READ), playback (``start_ns``), and
whether an interruption may drop it (``interruptible``, fixed when the reply is made).
"""

from __future__ import annotations

import enum


class ReplyPhase(enum.Enum):
    WAITING = "waiting"  # its engine turn waits for the reply before it (or a rollback)
    OPENING = "opening"  # its engine turn is being opened: the replies before it stay as they are
    FEEDING = "feeding"  # the turn is open and takes the reply's text
    TEXT_ENDED = "text_ended"  # no more text goes in (all fed, refused, or the model ended it)
    READ = "read"  # every frame and word time has been read from the engine
    FAILED = "failed"  # the engine turn failed (the server went away, the engine refused it)
    CLOSED = "closed"  # its audio context ends: the TTSStoppedFrame is queued
    DONE = "done"  # its last word frame went out: later word frames were not spoken
    STOPPED = "stopped"  # an interruption dropped it


P = ReplyPhase
TRANSITIONS: dict[ReplyPhase, frozenset[ReplyPhase]] = {
    P.WAITING: frozenset({P.OPENING, P.STOPPED}),
    P.OPENING: frozenset({P.FEEDING, P.FAILED, P.STOPPED}),
    P.FEEDING: frozenset({P.TEXT_ENDED, P.FAILED, P.STOPPED}),
    P.TEXT_ENDED: frozenset({P.READ, P.FAILED, P.STOPPED}),
    P.READ: frozenset({P.CLOSED, P.STOPPED}),
    P.FAILED: frozenset({P.CLOSED, P.STOPPED}),
    P.CLOSED: frozenset({P.DONE, P.STOPPED}),
    P.DONE: frozenset({P.STOPPED}),
    P.STOPPED: frozenset(),
}
# Text the LLM streams is taken in these phases (held until the turn opens, then fed).
TAKES_TEXT = frozenset({P.WAITING, P.OPENING, P.FEEDING})
# The engine turn is being opened or was: an interruption cannot cut the turns before it.
TURN_STARTED = frozenset(set(ReplyPhase) - {P.WAITING, P.STOPPED})


class ReplyPhaseError(RuntimeError):
    """A move the reply's life does not allow: a bug in the service, never bad input."""


def check_move(context_id: str, old: ReplyPhase, new: ReplyPhase) -> None:
    """Raises ``ReplyPhaseError`` unless ``old -> new`` is in ``TRANSITIONS``."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(p.value for p in TRANSITIONS[old])) or "none"
        raise ReplyPhaseError(
            f"reply {context_id!r}: {old.value} -> {new.value} is not allowed "
            f"(from {old.value}: {allowed})"
        )
