"""Engine server, its client, and the Ray Serve deployment.

* ``EngineServer`` (``app``): one engine per process/GPU behind ``ws://HOST:PORT/v1/ws``
  (``wss://`` with TLS); ``moss-pipecat serve`` runs it. ``app.create_app`` is the one ASGI app,
  served by uvicorn here and mounted by Ray Serve (``ray_app``); ``options`` is the settings
  model both share.
* ``RemoteEngine`` / ``RemoteSession`` (``client``): the client, mirroring the engine's
  ``Session`` API.
* ``protocol``: the wire protocol (v1); ``ray_app``: the Ray Serve deployment.
"""

from moss_pipecat.server.app import EngineServer
from moss_pipecat.server.client import RemoteEngine, RemoteSession, RemoteTurn
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
    "RemoteEngine",
    "RemoteError",
    "RemoteSession",
    "RemoteTurn",
    "ServerConfig",
    "ServerError",
    "ServerLimits",
    "ServerUnavailableError",
    "UnauthorizedError",
]
