"""``TurnInbox``: what the link's reader has received for one turn (audio chunks, progress of
its prefill, the summary or a failure, the words of frames still to come, an input error to
raise on the next call). The link owns and fills it; the ``RemoteTurn`` reads it, so the link
needs to know no turn."""

from __future__ import annotations

import asyncio

from moss_pipecat.errors import MossError
from moss_pipecat.protocol.server_messages import TurnProgress
from moss_pipecat.speech.events import AudioChunk, TurnSummary


class TurnInbox:
    """One turn's mail from the server, filled by the link's reader (one event loop)."""

    def __init__(self, turn_id: int) -> None:
        self.turn_id = turn_id
        self._queue: asyncio.Queue = asyncio.Queue()
        self._words: dict[int, list[tuple[str, float]]] = {}  # by frame index, until it comes
        self._deferred: MossError | None = None  # an input error the server reported
        self.ended = False  # its summary came: the link may go (a move) without failing it

    # ---- filled by the link -------------------------------------------------------------------
    def put(self, item: AudioChunk | TurnProgress | TurnSummary | BaseException) -> None:
        if isinstance(item, TurnSummary):
            self.ended = True
        self._queue.put_nowait(item)

    def add_words(self, index: int, words: list[tuple[str, float]]) -> None:
        """The words placed by frame ``index`` (the server sends them before the frame)."""
        self._words[index] = words

    def take_words(self, index: int) -> tuple[tuple[str, float], ...]:
        return tuple(self._words.pop(index, ()))

    def defer(self, err: MossError) -> None:
        """An input error of this turn: raised by the turn's next call."""
        self._deferred = err

    # ---- read by the turn ---------------------------------------------------------------------
    def take_deferred(self) -> MossError | None:
        err, self._deferred = self._deferred, None
        return err

    def empty(self) -> bool:
        return self._queue.empty()

    def get_nowait(self) -> AudioChunk | TurnProgress | TurnSummary | BaseException:
        return self._queue.get_nowait()

    async def get(self) -> AudioChunk | TurnProgress | TurnSummary | BaseException:
        return await self._queue.get()
