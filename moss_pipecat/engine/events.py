"""The thread-safe channel that carries a turn's output stream (``AudioChunk``s, then a
``TurnSummary``: ``moss_pipecat.speech.events``, re-exported here)."""

from __future__ import annotations

import asyncio
import queue

from moss_pipecat.speech.events import AudioChunk, TurnSummary

__all__ = ["AudioChunk", "Channel", "TurnSummary"]


class Channel:
    """Single-consumer queue filled by the engine thread, read from asyncio or plain threads.

    A channel created inside a running event loop delivers through that loop (no thread per
    reader); otherwise it is a plain blocking queue.
    """

    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._async: asyncio.Queue | None = asyncio.Queue() if self._loop else None
        self._sync: queue.SimpleQueue = queue.SimpleQueue()
        # (rows fed, rows to feed) of the turn's prefill, a side channel beside the chunks:
        # the engine thread replaces the tuple whole per prefill chunk, so any thread reads
        # a consistent pair without a lock. (0, 0) until the prefill starts.
        self.prefilled: tuple[int, int] = (0, 0)

    def put(self, item: object) -> None:
        if self._loop is None:
            self._sync.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)
        except RuntimeError:
            pass  # the reader's loop is gone; nobody is listening any more

    @staticmethod
    def put_all(items: list[tuple[Channel, object]]) -> None:
        """``channel.put(item)`` for each pair, in order, waking each event loop once for all
        of its items (a wake-up is a write to the loop's self-pipe: a system call per item
        when a tick sends hundreds of chunks)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for channel, item in items:
            if channel._loop is None or type(channel).put is not Channel.put:
                channel.put(item)  # a plain queue, or a channel that puts its own way
            else:
                batches.setdefault(channel._loop, []).append((channel._async, item))
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_put_batch, batch)
            except RuntimeError:
                pass  # the readers' loop is gone; nobody is listening any more

    async def get(self) -> object:
        if self._async is None:
            return await asyncio.get_running_loop().run_in_executor(None, self._sync.get)
        return await self._async.get()

    def get_sync(self, timeout: float | None = None) -> object:
        if self._loop is not None:
            raise RuntimeError("this channel belongs to an event loop; use `await get()`")
        return self._sync.get(timeout=timeout)


def _put_batch(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for q, item in batch:
        q.put_nowait(item)
