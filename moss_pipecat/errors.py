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
