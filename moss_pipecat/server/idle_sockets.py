"""The bounded pool of idle HTTP sockets: connected, with no request in flight.

A socket is idle from the moment it connects, and again after each response on a kept-alive
connection, until its next whole request arrives (a websocket upgrade leaves the pool for
good). Idle sockets cost a file descriptor each and do no work, so flooding the server with
them (slowloris) must not lock out the requests that do: past ``limit``, the socket idle the
longest is closed to make room. A health probe or a client connects and sends its request at
once, so it is never the oldest idle socket; a flood evicts its own sockets first.

Pure bookkeeping, on the event loop (no locks): the uvicorn protocol that reports the state
changes is ``uvicorn_protocols``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable


class IdleSockets:
    """Idle sockets, oldest first, at most ``limit``; ``on_evict`` runs per socket evicted."""

    def __init__(self, limit: int, on_evict: Callable[[], None] = lambda: None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._on_evict = on_evict
        self._idle: dict[Hashable, Callable[[], None]] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._idle)

    def idle(self, sock: Hashable, close: Callable[[], None]) -> None:
        """``sock`` has no request in flight from now on (it is the newest idle socket); past
        the limit the oldest idle one is closed (``close``) and leaves the pool."""
        self._idle.pop(sock, None)
        self._idle[sock] = close
        while len(self._idle) > self.limit:
            oldest = next(iter(self._idle))
            self._idle.pop(oldest)()
            self._on_evict()

    def busy(self, sock: Hashable) -> None:
        """``sock`` has a request in flight, was upgraded, or is gone (idempotent)."""
        self._idle.pop(sock, None)
