"""A conversation the engine refuses (it is full, or overloaded: every call speaking at once
would miss its frame deadline) becomes one clear ``ErrorFrame`` instead of a failed start.

The StartFrame still reaches the processors after the TTS and the pipeline goes on. The error
marks the service unusable (pipecat's ``force_treat_as_permanent``: this call will not get a
session from this engine), so pipecat gives it no more text (no reply errors one by one as
silent audio contexts) and applies the pipeline's ``ProcessorUnusablePolicy``; a
``ServiceSwitcher`` fails over to another TTS. The category is rate-limit: the refusal is
about load, and a later call may be admitted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.errors import CapacityError, OverloadedError


def refusal_message(error: CapacityError) -> str:
    """What the ErrorFrame says: why, and what to do about it."""
    why = (
        "the engine is overloaded (one more call would make running calls miss their frame "
        "deadline)"
        if isinstance(error, OverloadedError)
        else "the engine has no free conversation slot"
    )
    return f"MOSS TTS: this call was refused: {why}; retry later or on another engine ({error})"


async def open_or_refuse(
    service: FrameProcessor, open_session: Callable[[], Awaitable[Any]]
) -> Any | None:
    """Opens the service's session; on a capacity refusal pushes the one ErrorFrame and
    returns None."""
    try:
        return await open_session()
    except CapacityError as e:
        await service.push_error(
            error_msg=refusal_message(e),
            exception=e,
            category=ErrorCategory.RATE_LIMIT,
            force_treat_as_permanent=True,
        )
        return None
