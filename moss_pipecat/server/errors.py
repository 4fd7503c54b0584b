"""The errors of the wire protocol live in ``moss_pipecat.protocol.errors`` (the client raises
them too); re-exported here, where the server's users found them."""

from moss_pipecat.protocol.errors import (
    ForbiddenError,
    ProtocolError,
    RemoteError,
    ServerError,
    ServerUnavailableError,
    TLSVerificationError,
    UnauthorizedError,
)

__all__ = [
    "ForbiddenError",
    "ProtocolError",
    "RemoteError",
    "ServerError",
    "ServerUnavailableError",
    "TLSVerificationError",
    "UnauthorizedError",
]
