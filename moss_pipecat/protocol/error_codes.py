"""Error codes on the wire: the one table mapping codes and exception types both ways."""

from __future__ import annotations

from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    MossError,
    SessionClosedError,
    TurnStateError,
    UnknownSessionError,
)
from moss_pipecat.protocol.errors import (
    ForbiddenError,
    ProtocolError,
    RemoteError,
    ServerUnavailableError,
    UnauthorizedError,
)

# The one table of error codes. Code -> exception type is what a client raises for an ``error``
# reply (the same types the local engine raises); exception -> code is the first code listed
# for the nearest class in the exception's MRO ("internal" if none is listed).
ERROR_CODES: tuple[tuple[str, type[MossError]], ...] = (
    ("bad_message", ProtocolError),
    ("unknown_type", ProtocolError),
    ("unsupported_version", ProtocolError),
    ("invalid_input", InvalidInputError),
    ("too_large", InvalidInputError),
    ("capacity", CapacityError),
    ("turn_state", TurnStateError),
    ("session_closed", SessionClosedError),
    ("unknown_session", UnknownSessionError),
    ("unauthorized", UnauthorizedError),
    ("forbidden", ForbiddenError),
    ("unavailable", ServerUnavailableError),
    ("superseded", ServerUnavailableError),
    ("internal", RemoteError),
)
_TYPE_OF_CODE: dict[str, type[MossError]] = dict(ERROR_CODES)
_CODE_OF_TYPE: dict[type, str] = {}
for _code, _cls in ERROR_CODES:
    _CODE_OF_TYPE.setdefault(_cls, _code)


def error_code(exc: BaseException) -> str:
    """The wire code for an exception raised while handling a request."""
    for cls in type(exc).__mro__:
        code = _CODE_OF_TYPE.get(cls)
        if code is not None:
            return code
    return "internal"


def error_from_wire(code: str, message: str) -> MossError:
    """The exception a client raises for an ``error`` reply (unknown codes: ``RemoteError``)."""
    return _TYPE_OF_CODE.get(code, RemoteError)(message)
