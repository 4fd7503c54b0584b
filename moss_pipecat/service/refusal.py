"""A conversation the engine refuses (it is full, or overloaded: every call speaking at once
would miss its frame deadline), or an engine server refuses to this client (the token, or the
conversation's resume credentials: ``resume_secret``, ``resume_ticket``), or that this client
cannot talk to (a TLS certificate that fails verification, another protocol), becomes one clear
``ErrorFrame`` instead of a failed start (which pipecat only logs, and every reply after it
then errs without saying why). For the remote service that is any connection: its first, at the
start or, when the server could not be reached then, at a later reply, and a reconnect of its
conversation (``service/remote.py``; there a full server is a failed reply, not a refusal: the
call is already under way).

The StartFrame still reaches the processors after the TTS and the pipeline goes on. The error
marks the service unusable (pipecat's ``force_treat_as_permanent``: this call will not get a
session from this engine), so pipecat gives it no more text (no reply errors one by one as
silent audio contexts) and applies the pipeline's ``ProcessorUnusablePolicy``; a
``ServiceSwitcher`` fails over to another TTS. The category is rate-limit for a refusal about
load (a later call may be admitted), authentication or authorization for the server's,
connectivity for a certificate (no retry makes it verify: the client needs the server's CA, or
the server another certificate), invalid request for a protocol the server does not speak.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.errors import CapacityError, MossError, OverloadedError
from moss_pipecat.protocol.errors import (
    ForbiddenError,
    ProtocolError,
    TLSVerificationError,
    UnauthorizedError,
)

# Refusals that no retry of this call can change, by type: (why, what to do, category).
_ACCESS = {
    UnauthorizedError: (
        "the server refused the token",
        "give the service the server's token",
        ErrorCategory.AUTHENTICATION,
    ),
    ForbiddenError: (
        "the server refused to resume the conversation",
        "give the service its conversation's resume_secret (and resume_ticket after a lost "
        "server), or another conversation_id",
        ErrorCategory.AUTHORIZATION,
    ),
    TLSVerificationError: (
        "the server's TLS certificate failed verification",
        "give the service the CA that signed it (ssl_ca_file=, or an ssl_context)",
        ErrorCategory.CONNECTIVITY,
    ),
    ProtocolError: (
        "the server did not take this client's hello",
        "run a client and a server that speak the same protocol version",
        ErrorCategory.INVALID_REQUEST,
    ),
}


def refusal(error: MossError) -> tuple[str, ErrorCategory] | None:
    """What the ErrorFrame says (why, and what to do about it) and its category; None: not a
    refusal."""
    for cls, (why, todo, category) in _ACCESS.items():
        if isinstance(error, cls):
            return f"MOSS TTS: this call was refused: {why}; {todo} ({error})", category
    if not isinstance(error, CapacityError):
        return None
    why = (
        "the engine is overloaded (one more call would make running calls miss their frame "
        "deadline)"
        if isinstance(error, OverloadedError)
        else "the engine has no free conversation slot"
    )
    todo = "retry later or on another engine"
    return f"MOSS TTS: this call was refused: {why}; {todo} ({error})", ErrorCategory.RATE_LIMIT


async def refuse(service: FrameProcessor, error: MossError) -> bool:
    """Pushes the one ErrorFrame of a refusal, which marks ``service`` unusable; False: not a
    refusal (nothing pushed)."""
    refused = refusal(error)
    if refused is None:
        return False
    message, category = refused
    await service.push_error(
        error_msg=message, exception=error, category=category, force_treat_as_permanent=True
    )
    return True


async def open_or_refuse(
    service: FrameProcessor, open_session: Callable[[], Awaitable[Any]]
) -> Any | None:
    """Opens the service's session; on a refusal pushes the one ErrorFrame and returns
    None."""
    try:
        return await open_session()
    except MossError as e:
        if not await refuse(service, e):
            raise
        return None
