"""Engine server, its client, and the Ray Serve deployment.

* ``EngineServer`` (``app``): one engine per process/GPU behind ``ws://HOST:PORT/v1/ws``
  (``wss://`` with TLS); ``moss-pipecat serve`` runs it. ``app.create_app`` is the one ASGI app,
  served by uvicorn here and mounted by Ray Serve (``ray_app``); ``options`` is the settings
  model both share.
* ``ray_app``: the Ray Serve deployment.

The wire protocol is ``moss_pipecat.protocol`` and the client ``moss_pipecat.client`` (both
shared with, or used without, the server). ``RemoteEngine``/``RemoteSession``/``RemoteTurn`` are
still found here (deprecated: import them from ``moss_pipecat.client``), loaded on first use so
that the server never imports the client.
"""

from typing import Any

from moss_pipecat.server.app import EngineServer
from moss_pipecat.server.config import ServerConfig, ServerLimits
from moss_pipecat.server.core import ConversationHub
from moss_pipecat.server.errors import (
    ForbiddenError,
    ProtocolError,
    RemoteError,
    ServerError,
    ServerUnavailableError,
    UnauthorizedError,
)

__all__ = [
    "ConversationHub",
    "EngineServer",
    "ForbiddenError",
    "ProtocolError",
    "RemoteError",
    "ServerConfig",
    "ServerError",
    "ServerLimits",
    "ServerUnavailableError",
    "UnauthorizedError",
]

_CLIENT_NAMES = {"RemoteEngine", "RemoteSession", "RemoteTurn"}


def __getattr__(name: str) -> Any:
    # PEP 562: the deprecated client names, imported only when asked for.
    if name in _CLIENT_NAMES:
        import warnings

        from moss_pipecat import client

        warnings.warn(
            f"moss_pipecat.server.{name} is deprecated; import it from moss_pipecat.client",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
