"""Typed errors shared by every layer.

Callers catch ``MossError`` for anything this package raises on purpose; the
subclasses say which kind of mistake it was so a service can report it cleanly.
"""

from __future__ import annotations


class MossError(Exception):
    """Base class of every error raised on purpose by moss-pipecat."""


class CheckpointError(MossError):
    """A checkpoint is missing, unreadable or corrupt."""


class ConfigMismatchError(CheckpointError):
    """The checkpoint's weights do not fit the architecture its config describes."""


class InvalidInputError(MossError, ValueError):
    """An input tensor, id or argument is out of range or has the wrong shape."""


class CapacityError(MossError):
    """A request would exceed a configured limit (cache length, batch slots, ...)."""


class OverloadedError(CapacityError):
    """A new conversation is refused: serving it would make running calls miss their frame
    deadlines (``EngineConfig.frame_deadline_s``). Retry later or on another engine."""


class SessionError(MossError):
    """A session-level request that cannot be honoured in the session's current state."""


class UnknownSessionError(SessionError, KeyError):
    """No session with that id (never created, or already closed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown session"


class SessionClosedError(SessionError):
    """The session was closed (by the caller, or by the engine after a failure)."""


class TurnStateError(SessionError):
    """The request does not fit the turn state (e.g. a user turn while the bot is speaking)."""
