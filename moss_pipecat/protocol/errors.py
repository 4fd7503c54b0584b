"""Errors of the engine server and its client (all ``MossError`` subclasses)."""

from __future__ import annotations

from moss_pipecat.errors import MossError


class ServerError(MossError):
    """Base class of errors about talking to an engine server."""


class ServerUnavailableError(ServerError):
    """The server cannot be reached, went away mid-request, or did not answer in time."""


class TLSVerificationError(ServerUnavailableError):
    """The server's TLS certificate failed verification (unknown CA, wrong host name,
    expired). Retrying cannot help: give the client the CA (``ssl_ca_file``) or an
    ``ssl_context`` that trusts it."""


class ProtocolError(ServerError):
    """A message broke the wire protocol (malformed, unknown type, too large, out of order)."""


class UnauthorizedError(ServerError):
    """The server wants a (different) bearer token."""


class RemoteError(ServerError):
    """The server failed for a reason of its own (an internal error)."""


class ForbiddenError(ServerError):
    """The conversation exists and the hello did not carry its resume secret (or a wrong one),
    or the conversation was taken back by the client that made it first (its resume ticket)."""
