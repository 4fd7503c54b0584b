"""What a turn's output stream carries, and the thread-safe channel that carries it."""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AudioChunk:
    """One generated audio frame (80 ms).

    Attributes:
        turn_id: the turn it belongs to; index: frame number in the turn (0-based).
        codes: [rvq] int64 codes.
        pcm: 16-bit mono PCM at the codec's rate (1920 samples at 24 kHz), or None when the
            engine runs without a codec.
        words: the words this frame lets the engine place, as (word, seconds from the
            turn's first frame): strictly increasing across a turn, always inside the audio
            generated so far (see ``engine.word_times``).
    """

    turn_id: int
    index: int
    codes: torch.Tensor
    pcm: bytes | None
    words: tuple[tuple[str, float], ...] = ()


@dataclass
class TurnSummary:
    """How a turn ended.

    Attributes:
        stop: "eos" (the model ended it), "max_frames" (frame cap), "interrupted", "empty"
            (no text to speak), "closed" (session closed) or "error".
        audio_frames: audio frames generated (an EOS frame is not audio).
        heard_frames: frames kept in the conversation (all of them unless interrupted).
        text_ids: text tokens the turn received; text: its text when given as a string.
        spoken_text: the words spoken in the heard frames (by the turn's word times).
        ttfa_s: seconds from the prefill trigger (enough text, or text end) to the first frame.
        error: the exception that ended it, for stop == "error".
        words: words placed when the turn ended ("eos", "max_frames"), after those of its
            chunks; words that were never fed to the model are never placed.
    """

    turn_id: int
    stop: str
    audio_frames: int = 0
    heard_frames: int = 0
    text_ids: list[int] = field(default_factory=list)
    text: str = ""
    spoken_text: str = ""
    ttfa_s: float | None = None
    error: BaseException | None = None
    words: list[tuple[str, float]] = field(default_factory=list)


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

    def put(self, item: object) -> None:
        if self._loop is None:
            self._sync.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)
        except RuntimeError:
            pass  # the reader's loop is gone; nobody is listening any more

    async def get(self) -> object:
        if self._async is None:
            return await asyncio.get_running_loop().run_in_executor(None, self._sync.get)
        return await self._async.get()

    def get_sync(self, timeout: float | None = None) -> object:
        if self._loop is not None:
            raise RuntimeError("this channel belongs to an event loop; use `await get()`")
        return self._sync.get(timeout=timeout)
