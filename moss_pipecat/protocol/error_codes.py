"""Error codes on the wire: the one table mapping codes and exception types both ways."""

from __future__ import annotations

from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    MossError,
    OverloadedError,
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
# Finer codes, for subclasses of a listed type that a client may want to tell apart. One goes
# out as ``subcode`` beside the code of its nearest listed class, so a client that predates it
# still raises that class (a parent of its own): an overloaded engine is a ``capacity``
# refusal to every client, and an ``OverloadedError`` to those that know ``overloaded``.
ERROR_SUBCODES: tuple[tuple[str, type[MossError]], ...] = (
    ("overloaded", OverloadedError),  # refused for frame time: every call would miss deadlines
)
_TYPE_OF_CODE: dict[str, type[MossError]] = dict(ERROR_CODES)
_CODE_OF_TYPE: dict[type, str] = {}
for _code, _cls in ERROR_CODES:
    _CODE_OF_TYPE.setdefault(_cls, _code)
_TYPE_OF_SUBCODE: dict[str, type[MossError]] = dict(ERROR_SUBCODES)
_SUBCODE_OF_TYPE: dict[type, str] = {cls: code for code, cls in ERROR_SUBCODES}


def error_code(exc: BaseException) -> str:
    """The wire code for an exception raised while handling a request."""
    for cls in type(exc).__mro__:
        code = _CODE_OF_TYPE.get(cls)
        if code is not None:
            return code
    return "internal"


def error_subcode(exc: BaseException) -> str | None:
    """The finer code sent beside ``error_code(exc)``: the first listed for a class of the
    exception's MRO below the class its code is for (None: none)."""
    for cls in type(exc).__mro__:
        if cls in _CODE_OF_TYPE:
            return None
        subcode = _SUBCODE_OF_TYPE.get(cls)
        if subcode is not None:
            return subcode
    return None


def error_fields(exc: BaseException) -> dict[str, str]:
    """How an exception raised while handling a request goes out: the ``error`` reply's
    ``code``, ``message`` and (when it has one) ``subcode``."""
    fields = {"code": error_code(exc), "message": str(exc)}
    subcode = error_subcode(exc)
    if subcode is not None:
        fields["subcode"] = subcode
    return fields


def error_from_wire(code: str, message: str, subcode: str | None = None) -> MossError:
    """The exception a client raises for an ``error`` reply: the subcode's type when it knows
    it, else the code's (unknown codes: ``RemoteError``)."""
    cls = _TYPE_OF_SUBCODE.get(subcode) if subcode is not None else None
    return (cls or _TYPE_OF_CODE.get(code, RemoteError))(message)
