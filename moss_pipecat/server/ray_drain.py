"""A Ray Serve replica drains (``ConversationHub.drain``) when Ray starts stopping it.

Ray Serve stops a replica (scale-down, a new version, ``serve.delete``) by waiting until it
has no ongoing request, for up to ``graceful_shutdown_timeout_s``, and only then runs the
replica's ``__del__`` and the app's lifespan shutdown. A websocket is one ongoing request for
its whole life, so a replica that says nothing holds its calls until the timeout and then
drops them. Ray (2.60) calls no user code when the stop begins; this module wraps the method
that begins it, ``Replica.perform_graceful_shutdown`` (not Ray's public API, so it is checked
first; on a Ray without it a replica shutdown does not drain, and the log says so). The
wrapper starts the registered drains, then lets Ray wait for the open requests as usual:
they end as the clients move. By then the controller has taken the replica off the routing
table, so a moved conversation's reconnect is routed to a live replica.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from loguru import logger

_DRAINS: list[Callable[[], None]] = []  # this process's replicas (one, in practice)
_MARK = "_moss_pipecat_drains"


def drain_on_replica_shutdown(start_drain: Callable[[], None]) -> bool:
    """Calls ``start_drain`` (from Ray's event loop thread; it must not block) when Ray
    begins to stop the replica in this process. Returns False when this Ray has no such
    hook (the replica then does not drain)."""
    try:
        from ray.serve._private.replica import Replica
    except ImportError:
        Replica = None
    original = getattr(Replica, "perform_graceful_shutdown", None)
    if original is None or not inspect.iscoroutinefunction(original):
        logger.warning(
            "this Ray Serve has no Replica.perform_graceful_shutdown: a replica that is "
            "stopped does not tell its clients to move (its calls drop at Ray's timeout)"
        )
        return False
    if not getattr(original, _MARK, False):

        async def perform_graceful_shutdown(self: Any, *args: Any, **kwargs: Any) -> Any:
            for start in list(_DRAINS):
                try:
                    start()
                except Exception:
                    logger.exception("starting the replica's drain failed")
            return await original(self, *args, **kwargs)

        setattr(perform_graceful_shutdown, _MARK, True)
        Replica.perform_graceful_shutdown = perform_graceful_shutdown
    _DRAINS.append(start_drain)
    return True
