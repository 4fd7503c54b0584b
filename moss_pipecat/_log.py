"""The package's ``logger``: loguru's when it is installed, else a small stdlib-logging stand-in.

The model, codec and engine import ``logger`` from here, so they run on a machine that has only
torch, numpy, safetensors and transformers (a curated GPU box without network). The stand-in
takes loguru-style calls: ``logger.info("x {}", y)`` formats with ``str.format`` only when
arguments are given, as loguru does; ``exception`` adds the traceback; ``opt(depth=...,
exception=...)`` is accepted. Records go to the stdlib logger ``moss_pipecat``; while the
application configured no logging at all, INFO and above are printed to stderr (loguru's default
prints everything). The level is ``MOSS_LOG_LEVEL`` (default INFO) unless the app set one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["StdlibLogger", "logger"]


class _UntilConfigured(logging.StreamHandler):
    """Prints to stderr only while the root logger has no handlers (the app set up nothing)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


class StdlibLogger:
    """The subset of loguru's logger API the core modules use, over :mod:`logging`."""

    def __init__(self, name: str = "moss_pipecat", depth: int = 0, exc_info: Any = None):
        self._logger = logging.getLogger(name)
        self._depth = depth
        self._exc_info = exc_info

    def opt(self, *, depth: int = 0, exception: Any = None, **_ignored: Any) -> StdlibLogger:
        """loguru's ``opt``: ``depth`` (caller frames to skip) and ``exception`` are honoured."""
        return StdlibLogger(self._logger.name, depth, exception)

    def _log(self, level: int, message: object, args: tuple, kwargs: dict, exc: Any = None):
        if not self._logger.isEnabledFor(level):
            return
        text = str(message)
        if args or kwargs:
            text = text.format(*args, **kwargs)
        exc = exc if exc is not None else self._exc_info
        # stacklevel: this method, the public method, then the caller (+ opt(depth=...)).
        self._logger.log(level, "%s", text, exc_info=exc, stacklevel=3 + self._depth)

    def debug(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, message, args, kwargs)

    def info(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, message, args, kwargs)

    def success(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, message, args, kwargs)

    def warning(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, message, args, kwargs)

    def error(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, message, args, kwargs)

    def critical(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.CRITICAL, message, args, kwargs)

    def exception(self, message: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, message, args, kwargs, exc=sys.exc_info())


def _stdlib_logger() -> StdlibLogger:
    base = logging.getLogger("moss_pipecat")
    if not any(isinstance(h, _UntilConfigured) for h in base.handlers):
        handler = _UntilConfigured(sys.stderr)
        fmt = "%(asctime)s | %(levelname)-8s | %(module)s:%(funcName)s:%(lineno)d - %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
        base.addHandler(handler)
    if base.level == logging.NOTSET:
        base.setLevel(os.environ.get("MOSS_LOG_LEVEL", "INFO").upper())
    return StdlibLogger("moss_pipecat")


try:
    from loguru import logger
except ModuleNotFoundError:  # pragma: no cover - exercised by tests/test_minimal_env.py
    logger = _stdlib_logger()  # type: ignore[assignment]
