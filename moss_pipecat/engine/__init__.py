"""Sessions, conversation rows, sampling and scheduling on top of the model and codec."""

from moss_pipecat.engine.rows import DEFAULT_DELAY, RowLayout

__all__ = ["DEFAULT_DELAY", "RowLayout"]
