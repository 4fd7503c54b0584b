"""``Tries``: how often a session sends a request again whose connection was lost before its
reply (one rule for every such request: a cut, a user turn, a voice, settings, a reset, a
turn's start)."""

from __future__ import annotations

from asyncio import sleep
from time import monotonic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moss_pipecat.client.remote_engine import RemoteEngine

# Tries sent at once, one per new connection: a drop is usually one, and the next connection
# (resumed, or made anew with the history restored) carries the request.
SENDS = 3


class Tries:
    """The tries of one request: ``SENDS`` at once, then after a backoff (the engine's, as for
    a connection that fails) while ``reconnect_timeout`` since the first try allows. So a
    link whose connections each die before a reply (the server answers; none lives long
    enough) is tried as long as one that cannot connect, and a request that kills its
    connection every time stops there."""

    def __init__(self, engine: RemoteEngine) -> None:
        self.sent = 1
        self._deadline = monotonic() + engine.reconnect_timeout
        self._delay, self._max = engine.backoff_initial, engine.backoff_max

    async def again(self) -> bool:
        """Whether to send the request once more (its backoff waited here), the last try
        lost with its connection; False: give up."""
        if self.sent >= SENDS:
            if monotonic() + self._delay > self._deadline:
                return False
            await sleep(self._delay)
            self._delay = min(2 * self._delay, self._max)
        self.sent += 1
        return True
