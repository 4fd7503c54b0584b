"""``Link``: one websocket of a ``RemoteSession``, with its writer and reader tasks, the
requests waiting for replies, and the inboxes of the turns the reader routes audio to (the
link knows no session and no turn: they read what it receives).

A server that drains sends ``goaway``: the link then serves only what is in flight (its open
turn, the requests awaiting replies) and closes itself once that is done, so the session's
next call connects anew (``moved`` says why it went)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.client.inbox import TurnInbox
from moss_pipecat.client.wire import _build, codes_array
from moss_pipecat.errors import MossError, SessionClosedError
from moss_pipecat.protocol.errors import ForbiddenError, ServerUnavailableError, UnauthorizedError
from moss_pipecat.speech.events import AudioChunk

if TYPE_CHECKING:
    from collections.abc import Callable

    from moss_pipecat.client.journal import Journal


class Link:
    """One websocket of a session: a writer task (keeps send order), a reader task (routes
    replies, audio and turn ends into the turns' inboxes), and the pending requests."""

    def __init__(
        self,
        ws: Any,
        ready: P.Ready,
        url: str = "",
        journal: Journal | None = None,
        on_history: Callable[[P.History], None] | None = None,
    ) -> None:
        self.ws = ws
        self.url = url  # the server URL it reached
        self.ready = ready
        self.moved: P.GoAway | None = None  # the server's ``goaway``
        # Takes the server's history deltas in order, and the rows of the turn in flight.
        self.journal = journal
        self.on_history = on_history  # also told of each delta (the resume ticket it carries)
        self.limits: P.ReadyLimits = ready.limits
        self.failure: MossError | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.turns: dict[int, TurnInbox] = {}  # open turns by id
        self._history_seen = False  # a ``history`` came on this link
        self._history_waiter: asyncio.Future | None = None
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._next_req = 0
        self._leaving: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write())
        self._reader = loop.create_task(self._read())

    @property
    def alive(self) -> bool:
        return self.failure is None

    def send_nowait(self, data: str | bytes) -> None:
        if self.failure is not None:
            raise ServerUnavailableError(f"connection lost: {self.failure}")
        self._outbox.put_nowait(data)

    async def request(
        self,
        cls: type[P._Msg],
        payload: bytes | None = None,
        timeout: float = 30.0,
        **fields: Any,
    ) -> Any:
        """Sends a request of type ``cls`` with ``fields`` (and its binary payload); returns
        the reply (a ``Result``, or the ``TurnInbox`` of the turn a ``turn.start`` opened)."""
        req = self._next_req
        self._next_req += 1
        msg = _build(cls, req=req, **fields)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[req] = fut
        try:
            self.send_nowait(msg.to_json())
            if payload is not None:
                self.send_nowait(payload)
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                err = ServerUnavailableError(f"no reply to {msg.type!r} within {timeout} s")
                await self.fail(err)
                raise err from None
        finally:
            self.pending.pop(req, None)

    async def _write(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                data = await self._outbox.get()
                await self.ws.send(data)
        except ConnectionClosed as e:
            await self.fail(ServerUnavailableError(f"connection closed: {e}"))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await self.fail(ServerUnavailableError(f"send failed: {e!r}"))

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self._audio(message)
                else:
                    self._control(message)
            await self.fail(self._closed_error())
        except ConnectionClosed:
            await self.fail(self._closed_error())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a message the protocol refuses is said; anything else traced
            if isinstance(e, MossError):
                logger.warning(f"remote session: bad data from the server: {e}")
            else:
                logger.exception("remote session reader failed")
            await self.fail(ServerUnavailableError(f"bad data from server: {e!r}"))

    def _closed_error(self) -> MossError:
        rcvd = getattr(self.ws, "close_rcvd", None)
        code = rcvd.code if rcvd is not None else None
        reason = rcvd.reason if rcvd is not None else ""
        if code == P.CLOSE_UNAUTHORIZED:
            return UnauthorizedError("the server refused the token")
        if code == P.CLOSE_FORBIDDEN:
            return ForbiddenError("the server refused the conversation's resume secret")
        if code == P.CLOSE_SUPERSEDED:
            return ServerUnavailableError("another connection took over this conversation")
        return ServerUnavailableError(f"connection to the server lost (code {code} {reason})")

    def _audio(self, data: bytes) -> None:
        turn_id, index, codes, pcm = P.unpack_audio(data)
        inbox = self.turns.get(turn_id)
        if inbox is not None:
            if self.journal is not None:
                self.journal.turn_frame(turn_id, index, codes)
            words = inbox.take_words(index)
            codes_t = codes_array(codes)
            inbox.put(AudioChunk(turn_id, index, codes_t, pcm, words))

    def _control(self, text: str) -> None:
        msg = P.parse_server_message(text)
        if isinstance(msg, P.TurnStarted):
            inbox = TurnInbox(msg.turn_id)
            self.turns[msg.turn_id] = inbox
            if self.journal is not None:
                self.journal.turn_started(msg.turn_id)
            self._resolve(msg.req, inbox)
        elif isinstance(msg, P.TurnWords):
            inbox = self.turns.get(msg.turn_id)
            if inbox is not None:
                inbox.add_words(msg.index, msg.timed_words())
                if self.journal is not None:
                    self.journal.turn_text(msg)
        elif isinstance(msg, P.TurnTextIds):
            if self.journal is not None and msg.turn_id in self.turns:
                self.journal.turn_ids(msg.turn_id, msg.text_from, msg.text_ids)
        elif isinstance(msg, P.TurnProgress):
            inbox = self.turns.get(msg.turn_id)
            if inbox is not None:
                inbox.put(msg)  # the turn's sign of life while its prefill runs long
        elif isinstance(msg, P.TurnEnded):
            inbox = self.turns.pop(msg.turn_id, None)
            if inbox is not None:
                inbox.put(msg.summary.to_summary())
            if self.journal is not None:
                self.journal.turn_ended(msg.turn_id)
            self._leave_when_done()
        elif isinstance(msg, P.History):
            if self.journal is not None:
                self.journal.apply(msg)
            if self.on_history is not None:
                self.on_history(msg)
            self._history_seen = True
            self._resolve_waiter(self._history_waiter, None)
        elif isinstance(msg, P.Result):
            self._resolve(msg.req, msg)
            self._leave_when_done()
        elif isinstance(msg, P.GoAway):
            logger.info(f"{self.url}: the server is going away ({msg.reason}): moving")
            self.moved = msg
            self._leave_when_done()
        elif isinstance(msg, P.ErrorReply):
            err = msg.to_exception()
            if msg.req is not None and msg.req in self.pending:
                fut = self.pending[msg.req]
                if not fut.done():
                    fut.set_exception(err)
            elif msg.turn_id is not None and msg.turn_id in self.turns:
                self.turns[msg.turn_id].defer(err)
            else:
                logger.warning(f"server error: {msg.code}: {msg.message}")
            if msg.fatal:
                self.failure = self.failure or err
            self._leave_when_done()
        else:  # a ``ready`` out of turn, or a type this client does not know
            logger.debug(f"ignoring server message {getattr(msg, 'type', None)!r}")

    def _leave_when_done(self) -> None:
        """After a ``goaway``: once no turn is open and no request awaits its reply, the
        link stops being usable (synchronously, so no new request slips in) and closes."""
        if self.moved is None or self._leaving is not None or self.turns:
            return
        if any(not fut.done() for fut in self.pending.values()):
            return
        if self.failure is None:
            self.failure = ServerUnavailableError(f"{self.url} asked its clients to move")
        self._leaving = asyncio.get_running_loop().create_task(self.close())

    def _resolve(self, req: int | None, value: Any) -> None:
        self._resolve_waiter(self.pending.get(req) if req is not None else None, value)

    @staticmethod
    def _resolve_waiter(fut: asyncio.Future | None, value: Any) -> None:
        if fut is not None and not fut.done():
            fut.set_result(value)

    async def history_seen(self, timeout: float) -> None:
        """Returns once this link's first ``history`` has been taken (after a ``ready`` that
        resumed, the server's full history comes next); raises the link's failure."""
        if self._history_seen:
            return
        if self.failure is not None:
            raise self.failure
        if self._history_waiter is None:
            self._history_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._history_waiter, timeout)
        except TimeoutError:
            err = ServerUnavailableError(f"no history within {timeout} s of a resumed ready")
            await self.fail(err)
            raise err from None

    async def fail(self, err: MossError) -> None:
        """Marks the link dead: pending requests and open turns get ``err``."""
        if self.failure is None:
            self.failure = err
        err = self.failure
        for fut in [*self.pending.values(), self._history_waiter]:
            if fut is not None and not fut.done():
                fut.set_exception(err)
        for inbox in self.turns.values():
            inbox.put(err)
        self.turns.clear()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)

    async def close(self) -> None:
        """Closes the socket and stops both tasks."""
        if self.failure is None:
            self.failure = SessionClosedError("session closed")
        for task in (self._writer, self._reader):
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2.0)
        for task in (self._writer, self._reader):
            if task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.fail(self.failure)
