"""``RemoteTurn``: one assistant turn on the server, fed text by the caller; it reads its audio
from the inbox the link's reader fills."""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from moss_pipecat import protocol as P
from moss_pipecat.client.wire import _build
from moss_pipecat.errors import InvalidInputError, SessionClosedError, TurnStateError
from moss_pipecat.protocol.errors import ServerUnavailableError
from moss_pipecat.speech import fields as F
from moss_pipecat.speech.commands import PushText
from moss_pipecat.speech.events import AudioChunk, TurnSummary
from moss_pipecat.speech.pieces import SurrogateJoiner

if TYPE_CHECKING:
    from moss_pipecat.client.inbox import TurnInbox
    from moss_pipecat.client.link import Link
    from moss_pipecat.client.remote_session import RemoteSession

_TEXT_PIECE = 4096  # characters per turn.text message (stays far below the message cap)


class RemoteTurn:
    """One assistant turn on a server; mirrors ``TurnStream`` (async iteration only)."""

    def __init__(self, session: RemoteSession, link: Link, inbox: TurnInbox) -> None:
        self.session = session
        self.turn_id = inbox.turn_id
        self.summary: TurnSummary | None = None
        self._link = link
        self._inbox = inbox
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._surrogates = SurrogateJoiner()  # str pieces may split a pair: UTF-8 cannot
        self._chars = 0
        self._text_ended = False
        self._cancelled = False
        # (rows fed, rows to feed) of the turn's prefill, as the server last told
        # (``turn.progress``); (0, 0) until it does (a short prefill, an older server).
        self.prefilled: tuple[int, int] = (0, 0)

    # ---- text in ---------------------------------------------------------------------------
    def push_text(self, piece: str | bytes) -> None:
        """Feeds the next piece of text exactly as the LLM streamed it (bytes may split
        UTF-8 sequences)."""
        self._check_open()
        piece = F.text_piece(piece)
        self._chars += len(piece)
        limit = self._link.limits.max_text_chars
        if limit is not None and self._chars > limit:
            raise InvalidInputError(f"turn text exceeds {limit} characters")
        if isinstance(piece, bytes):
            text = self._decoder.decode(piece)
        else:
            text = self._surrogates.push(piece)
        for i in range(0, len(text), _TEXT_PIECE):
            self._send(_build(P.TurnText, turn_id=self.turn_id, text=text[i : i + _TEXT_PIECE]))

    def push_ids(self, ids: Sequence[int], text: str = "") -> None:
        """Feeds text token ids (model vocabulary)."""
        self._check_open()
        ids = list(PushText(self.turn_id, ids, text).ids)  # the engine command's checks
        step = int(self._link.limits.max_ids_per_message or 4096)
        msgs = [
            _build(P.TurnIds, turn_id=self.turn_id, ids=ids[i : i + step], text="" if i else text)
            for i in range(0, max(len(ids), 1), step)
        ]  # all built (checked) before any is sent
        for msg in msgs:
            self._send(msg)

    def end_text(self) -> None:
        """No more text: the turn speaks what it has, then ends."""
        self._check_open()
        tail = self._surrogates.finish() + self._decoder.decode(b"", final=True)
        if tail:
            self._send(_build(P.TurnText, turn_id=self.turn_id, text=tail))
        self._text_ended = True
        self._send(_build(P.TurnEnd, turn_id=self.turn_id))

    def _check_open(self) -> None:
        if self.session.closed:
            raise SessionClosedError(f"session {self.session.id!r} is closed")
        if self._text_ended:
            raise TurnStateError("text already ended for this turn")
        err = self._inbox.take_deferred()
        if err is not None:
            raise err
        if self._link.failure is not None and not self.ended:
            raise ServerUnavailableError(f"connection lost: {self._link.failure}")

    @property
    def ended(self) -> bool:
        """The server ended the turn (its summary came, read or not)."""
        return self.summary is not None or self._inbox.ended

    @property
    def lost(self) -> bool:
        """Its connection failed before the server ended it."""
        return self._link.failure is not None and not self.ended

    def _send(self, msg: P._Msg) -> None:
        if self.ended:
            return  # the turn already ended: late text is dropped (as in the engine)
        self._link.send_nowait(msg.to_json())

    # ---- audio out ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Drops every chunk not yet read (``RemoteSession.interrupt`` does the rest)."""
        self._cancelled = True

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[AudioChunk]:
        limit = self.session.engine.frame_timeout
        last = time.monotonic()
        while self.summary is None:
            try:
                if not self._inbox.empty():
                    item = self._inbox.get_nowait()  # the common case: no timer needed
                else:
                    item = await asyncio.wait_for(self._inbox.get(), 1.0)
            except TimeoutError:
                # A live socket with a stuck engine answers pings but sends nothing: once the
                # text has ended, silence longer than ``frame_timeout`` is a failure.
                if self._text_ended and limit and time.monotonic() - last > limit:
                    err = ServerUnavailableError(f"no audio from the server for {limit} s")
                    await self._link.fail(err)
                    raise err from None
                continue
            last = time.monotonic()  # audio, or a prefill's progress: the server is alive
            if isinstance(item, TurnSummary):
                self.summary = item
            elif isinstance(item, P.TurnProgress):
                self.prefilled = (item.rows_done, item.rows_total)
            elif isinstance(item, BaseException):
                raise item
            elif not self._cancelled:
                yield item

    async def wait(self) -> TurnSummary:
        """Reads (and drops) the remaining chunks; returns the summary."""
        async for _ in self:
            pass
        return self.summary
