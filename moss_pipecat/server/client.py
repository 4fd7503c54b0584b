"""Client of the engine server: ``RemoteEngine`` -> ``RemoteSession`` -> ``RemoteTurn``.

The async API mirrors ``moss_pipecat.engine.session.Session`` / ``TurnStream``: the same
method names, arguments, return types (``AudioChunk``, ``TurnSummary``) and exception types
(``InvalidInputError``, ``TurnStateError``, ``CapacityError``, ...). What a network adds:

* every call may raise ``ServerUnavailableError`` (server unreachable, gone mid-request, or no
  reply within ``request_timeout``); iterating a turn raises it when the connection drops;
* a dropped connection is re-opened on the next call, with exponential backoff for up to
  ``reconnect_timeout`` seconds; the server keeps the conversation (its acoustic history) for
  its idle expiry, so ``RemoteSession.resumed`` is normally True after a reconnect; if the
  server lost it (restart, expiry), the session starts afresh with its voice and sampling
  re-applied, and ``resumed`` is False (``history_lost`` counts such events);
* user audio can be sent as audio (``add_user_audio_turn``) and encoded by the server's codec;
* resuming a conversation takes its resume secret (``RemoteSession.resume_secret``): a session
  draws one for the conversation it creates and proposes it in its first hello (so a retry
  after a lost ``ready`` still holds it), keeps the one in force for its reconnects, and
  another process resumes with ``create_session(conversation_id=..., resume_secret=...)``.

Messages are built and read through the protocol's models (``protocol.ClientMessage`` and
``protocol.ServerMessage``).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import torch
from loguru import logger
from pydantic import ValidationError

from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    MossError,
    SessionClosedError,
    TurnStateError,
)
from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.pcm import float_to_pcm16
from moss_pipecat.server import protocol as P
from moss_pipecat.server.errors import (
    ForbiddenError,
    ProtocolError,
    ServerUnavailableError,
    UnauthorizedError,
)

_TEXT_PIECE = 4096  # characters per turn.text message (stays far below the message cap)


def _build(cls: type[P._Msg], **fields: Any) -> P._Msg:
    """A client message; fields left None are not sent. Values the protocol refuses are the
    caller's mistake: ``InvalidInputError`` (as the local engine raises), before sending."""
    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        raise InvalidInputError(f"invalid {cls.__name__} message: {problems}") from None


def pcm16_from_audio(audio: Any) -> bytes:
    """Mono audio as little-endian int16 bytes.

    Accepts PCM16 bytes, an int16 array/tensor, or float samples in [-1, 1] (numpy/torch).
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
        if len(data) % 2:
            raise InvalidInputError("PCM16 audio must have an even number of bytes")
        return data
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.ndim == 2:  # [channels, samples] or [samples, channels]: average to mono
        a = a.mean(axis=0 if a.shape[0] < a.shape[1] else 1)
    if a.ndim != 1:
        raise InvalidInputError(f"audio must be 1-D (mono), got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype("<i2", copy=False).tobytes()
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidInputError(f"audio must be int16 or float samples, got {a.dtype}")
    return float_to_pcm16(a)


def codes_bytes(frames: Any, rvq: int = 16) -> tuple[bytes, int]:
    """Codec frames [T, rvq] as little-endian uint16 bytes; returns (bytes, T)."""
    t = torch.as_tensor(frames)
    if t.dim() != 2 or t.shape[1] != rvq:
        raise InvalidInputError(f"frames must be [frames, {rvq}], got {tuple(t.shape)}")
    if t.is_floating_point():
        raise InvalidInputError(f"frames must be integer codes, got {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > 65535):
        raise InvalidInputError("codes out of range")
    return t.cpu().numpy().astype("<u2").tobytes(), int(t.shape[0])


class RemoteTurn:
    """One assistant turn on a server; mirrors ``TurnStream`` (async iteration only)."""

    def __init__(self, session: RemoteSession, link: _Link, turn_id: int) -> None:
        self.session = session
        self.turn_id = turn_id
        self.summary: TurnSummary | None = None
        self._link = link
        self._queue: asyncio.Queue = asyncio.Queue()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._chars = 0
        self._text_ended = False
        self._cancelled = False
        self._deferred: MossError | None = None  # an input error the server reported
        self._words: dict[int, list[tuple[str, float]]] = {}  # by frame index, until it comes

    # ---- text in ---------------------------------------------------------------------------
    def push_text(self, piece: str | bytes) -> None:
        """Feeds the next piece of text exactly as the LLM streamed it (bytes may split
        UTF-8 sequences)."""
        self._check_open()
        self._chars += len(piece)
        limit = self._link.limits.max_text_chars
        if limit is not None and self._chars > limit:
            raise InvalidInputError(f"turn text exceeds {limit} characters")
        text = self._decoder.decode(piece) if isinstance(piece, bytes) else piece
        for i in range(0, len(text), _TEXT_PIECE):
            self._send(_build(P.TurnText, turn_id=self.turn_id, text=text[i : i + _TEXT_PIECE]))

    def push_ids(self, ids: Sequence[int], text: str = "") -> None:
        """Feeds text token ids (model vocabulary)."""
        self._check_open()
        ids = [int(i) for i in ids]
        if any(i < 0 for i in ids):
            raise InvalidInputError("text ids must be >= 0")
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
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._send(_build(P.TurnText, turn_id=self.turn_id, text=tail))
        self._text_ended = True
        self._send(_build(P.TurnEnd, turn_id=self.turn_id))

    def _check_open(self) -> None:
        if self.session.closed:
            raise SessionClosedError(f"session {self.session.id!r} is closed")
        if self._text_ended:
            raise TurnStateError("text already ended for this turn")
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
        if self._link.failure is not None and self.summary is None:
            raise ServerUnavailableError(f"connection lost: {self._link.failure}")

    def _send(self, msg: P._Msg) -> None:
        if self.summary is not None:
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
                if not self._queue.empty():
                    item = self._queue.get_nowait()  # the common case: no timer needed
                else:
                    item = await asyncio.wait_for(self._queue.get(), 1.0)
            except TimeoutError:
                # A live socket with a stuck engine answers pings but sends nothing: once the
                # text has ended, silence longer than ``frame_timeout`` is a failure.
                if self._text_ended and limit and time.monotonic() - last > limit:
                    err = ServerUnavailableError(f"no audio from the server for {limit} s")
                    await self._link.fail(err)
                    raise err from None
                continue
            last = time.monotonic()
            if isinstance(item, TurnSummary):
                self.summary = item
            elif isinstance(item, BaseException):
                raise item
            elif not self._cancelled:
                yield item

    async def wait(self) -> TurnSummary:
        """Reads (and drops) the remaining chunks; returns the summary."""
        async for _ in self:
            pass
        return self.summary

    # ---- fed by the link's reader --------------------------------------------------------------
    def _put(self, item: AudioChunk | TurnSummary | BaseException) -> None:
        self._queue.put_nowait(item)


class _Link:
    """One websocket of a session: a writer task (keeps send order), a reader task (routes
    replies, audio and turn ends), and the pending requests."""

    def __init__(self, session: RemoteSession, ws: Any, ready: P.Ready) -> None:
        self.session = session
        self.ws = ws
        self.ready = ready
        self.limits: P.ReadyLimits = ready.limits
        self.failure: MossError | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.turns: dict[int, RemoteTurn] = {}
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._next_req = 0
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
        the reply (a ``Result``, or the ``RemoteTurn`` a ``turn.start`` opened)."""
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
        except Exception as e:
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
        turn = self.turns.get(turn_id)
        if turn is not None:
            words = tuple(turn._words.pop(index, ()))
            codes_t = torch.tensor(codes, dtype=torch.int64)
            turn._put(AudioChunk(turn_id, index, codes_t, pcm, words))

    def _control(self, text: str) -> None:
        msg = P.parse_server_message(text)
        if isinstance(msg, P.TurnStarted):
            turn = RemoteTurn(self.session, self, msg.turn_id)
            self.turns[turn.turn_id] = turn
            self._resolve(msg.req, turn)
        elif isinstance(msg, P.TurnWords):
            turn = self.turns.get(msg.turn_id)
            if turn is not None:
                turn._words[msg.index] = list(msg.words)
        elif isinstance(msg, P.TurnEnded):
            turn = self.turns.pop(msg.turn_id, None)
            if turn is not None:
                turn._put(msg.summary.to_summary())
        elif isinstance(msg, P.Result):
            self._resolve(msg.req, msg)
        elif isinstance(msg, P.ErrorReply):
            err = msg.to_exception()
            if msg.req is not None and msg.req in self.pending:
                fut = self.pending[msg.req]
                if not fut.done():
                    fut.set_exception(err)
            elif msg.turn_id is not None and msg.turn_id in self.turns:
                self.turns[msg.turn_id]._deferred = err
            else:
                logger.warning(f"server error: {msg.code}: {msg.message}")
            if msg.fatal:
                self.failure = self.failure or err
        else:  # a ``ready`` out of turn, or a type this client does not know
            logger.debug(f"ignoring server message {getattr(msg, 'type', None)!r}")

    def _resolve(self, req: int | None, value: Any) -> None:
        fut = self.pending.get(req) if req is not None else None
        if fut is not None and not fut.done():
            fut.set_result(value)

    async def fail(self, err: MossError) -> None:
        """Marks the link dead: pending requests and open turns get ``err``."""
        if self.failure is None:
            self.failure = err
        err = self.failure
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(err)
        for turn in self.turns.values():
            turn._put(err)
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


class RemoteSession:
    """Async handle of one conversation on an engine server; mirrors ``Session``.

    Create it with ``RemoteEngine.create_session``.
    """

    def __init__(
        self,
        engine: RemoteEngine,
        conversation_id: str | None,
        sampling: SamplingParams | None,
        seed: int | None,
        resume_secret: str | None = None,
    ) -> None:
        self.engine = engine
        self.id = conversation_id
        # The conversation's resume secret, sent in every hello. A new conversation gets ours
        # (drawn here, before the first hello: a retry of a handshake whose ``ready`` was lost
        # must hold it too); ``ready`` says which one is in force.
        self.resume_secret = resume_secret or secrets.token_urlsafe(32)
        self.closed = False
        self.resumed = False  # did the last (re)connect find the conversation on the server?
        self.reconnects = 0
        self.history_lost = 0  # reconnects that found the conversation gone
        self.audio: P.AudioInfo | None = None  # what the server's frames carry
        self.server_id: str | None = None  # the server (replica) the last connection reached
        self._sampling = sampling
        self._seed = seed
        self._voice: tuple[str, bytes, int | None] | None = None  # re-sent after a history loss
        self._link: _Link | None = None
        self._connect_lock = asyncio.Lock()
        self._turn: RemoteTurn | None = None

    # ---- connection -------------------------------------------------------------------------
    async def _ensure(self) -> _Link:
        if self.closed:
            raise SessionClosedError(f"session {self.id!r} is closed")
        link = self._link
        if link is not None and link.alive:
            return link
        async with self._connect_lock:
            if self._link is not None and self._link.alive:
                return self._link
            if self._link is not None:
                await self._link.close()
                self._link = None
            first = self.id is None or self.audio is None
            link = await self.engine._connect(self)
            self._link = link
            if not first:
                self.reconnects += 1
            if not first and not self.resumed:
                self.history_lost += 1
                logger.warning(f"conversation {self.id}: the server lost its history")
            if not self.resumed and self._voice is not None:
                fmt, data, rate = self._voice
                await self._request(
                    link, P.Voice, data, format=fmt, sample_rate=rate, bytes=len(data)
                )
            return link

    def _hello(self) -> P.Hello:
        return _build(
            P.Hello,
            v=P.PROTOCOL_VERSION,
            conversation_id=self.id,
            resume_secret=self.resume_secret,
            token=self.engine.token or None,
            sampling=None if self._sampling is None else _wire_sampling(self._sampling),
            seed=self._seed,
        )

    def _ready(self, ready: P.Ready) -> None:
        """Takes what the server's ``ready`` says about the conversation."""
        self.id = ready.conversation_id
        self.resumed = ready.resumed
        if ready.resume_secret is not None:  # the one we sent, unless the server chose
            self.resume_secret = ready.resume_secret
        self.audio = ready.audio
        self.server_id = ready.server_id

    async def _request(
        self, link: _Link, cls: type[P._Msg], payload: bytes | None = None, **fields: Any
    ) -> Any:
        return await link.request(cls, payload, self.engine.request_timeout, **fields)

    async def _call(self, cls: type[P._Msg], payload: bytes | None = None, **fields: Any) -> Any:
        link = await self._ensure()
        return await self._request(link, cls, payload, **fields)

    # ---- turns ----------------------------------------------------------------------------------
    async def start_turn(
        self,
        max_frames: int | None = None,
        *,
        min_frames: int | None = None,
        eos_after_text: bool | None = None,
    ) -> RemoteTurn:
        """Opens an assistant turn (fails if one is open); arguments as ``Session.start_turn``."""
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise InvalidInputError(f"max_frames must be a positive int, got {max_frames!r}")
        if min_frames is not None and (not isinstance(min_frames, int) or min_frames < 0):
            raise InvalidInputError(f"min_frames must be an int >= 0, got {min_frames!r}")
        self._turn = await self._call(
            P.TurnStart,
            max_frames=max_frames,
            min_frames=min_frames,
            eos_after_text=eos_after_text,
        )
        return self._turn

    async def interrupt(self, heard_frames: int) -> TurnSummary | None:
        """Stops the current (or just finished) turn, keeping its first ``heard_frames``
        frames in the conversation. Returns None if there was nothing to cut."""
        if self._turn is not None and self._turn.summary is None:
            self._turn.cancel()
        heard = int(heard_frames)
        if heard < 0:
            raise InvalidInputError(f"heard_frames must be >= 0, got {heard}")
        reply: P.Result = await self._call(P.Interrupt, heard_frames=heard)
        return None if reply.summary is None else reply.summary.to_summary()

    async def add_user_turn(self, text_ids: Sequence[int], frames: Any) -> None:
        """Adds what the user said as transcript ids and codec frames [A, rvq] (as locally)."""
        ids = [int(i) for i in text_ids]
        if any(i < 0 for i in ids):
            raise InvalidInputError("user text ids must be >= 0")
        data, n = codes_bytes(frames)
        if n == 0:
            raise InvalidInputError("a user turn needs at least one audio frame")
        await self._call(P.UserTurn, data, text_ids=ids, format="codes", bytes=len(data))

    async def add_user_audio_turn(self, text: str, audio: Any, sample_rate: int) -> None:
        """Adds what the user said as its transcript and audio; the server encodes the audio.

        Args:
            text: the transcript.
            audio: mono PCM16 bytes, an int16 array, or float samples in [-1, 1].
            sample_rate: rate of ``audio`` (resampled by the server's codec).
        """
        data = self._check_audio(audio, sample_rate)
        await self._call(
            P.UserTurn,
            data,
            text=str(text),
            format="pcm16",
            sample_rate=int(sample_rate),
            bytes=len(data),
        )

    def _check_audio(self, audio: Any, sample_rate: int) -> bytes:
        data = pcm16_from_audio(audio)
        if not data:
            raise InvalidInputError("empty audio")
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise InvalidInputError(f"sample_rate must be a positive int, got {sample_rate!r}")
        limit = self._link.limits.max_audio_seconds if self._link else None
        if limit is not None and len(data) / 2 / sample_rate > limit:
            raise InvalidInputError(f"audio longer than the server's {limit} s")
        return data

    # ---- settings ---------------------------------------------------------------------------
    async def set_voice(self, frames: Any | None) -> None:
        """Replaces the reference voice (codec frames [R, rvq]) or removes it (None)."""
        if frames is None:
            await self._call(P.Voice, format="none")
            self._voice = None
            return
        data, _ = codes_bytes(frames)
        await self._call(P.Voice, data, format="codes", bytes=len(data))
        self._voice = ("codes", data, None)

    async def set_voice_audio(self, audio: Any, sample_rate: int) -> None:
        """Replaces the reference voice with a recording (encoded by the server's codec)."""
        data = self._check_audio(audio, sample_rate)
        await self._call(
            P.Voice, data, format="pcm16", sample_rate=int(sample_rate), bytes=len(data)
        )
        self._voice = ("pcm16", data, int(sample_rate))

    async def set_sampling(self, sampling: SamplingParams, seed: int | None = None) -> None:
        await self._call(
            P.Settings,
            sampling=_wire_sampling(sampling),
            seed=None if seed is None else int(seed),
        )
        self._sampling = sampling
        if seed is not None:
            self._seed = seed

    async def set_limits(
        self,
        context_budget: int | None = None,
        lookahead_s: float | None = None,
        unlimited_lookahead: bool = False,
    ) -> None:
        """Per-conversation context budget and lookahead (None: the server engine's)."""
        limits = _build(
            P.Limits,
            context_budget=context_budget,
            lookahead_s=lookahead_s,
            unlimited_lookahead=unlimited_lookahead,
        )
        await self._call(P.Settings, limits=limits)

    async def reset(self) -> None:
        """Forgets every turn (keeps the system prompt and voice)."""
        await self._call(P.Reset)

    async def close(self) -> None:
        """Ends the conversation on the server (best effort if the server is gone)."""
        if self.closed:
            return
        link = self._link
        if link is not None and link.alive:
            with contextlib.suppress(MossError):
                await self._request(link, P.Close)
        self.closed = True
        if link is not None:
            await link.close()
        self._link = None
        self.engine._sessions.discard(self)

    async def snapshot(self) -> dict:
        """The server's snapshot (``rows`` as a tensor), for tests and debugging."""
        reply: P.Result = await self._call(P.Snapshot)
        if reply.snapshot is None:
            raise ProtocolError("the server's snapshot result has no snapshot")
        snap = reply.snapshot.model_dump()
        snap["rows"] = torch.tensor(snap["rows"], dtype=torch.int64).reshape(-1, 17)
        snap["turns"] = [tuple(t) for t in snap["turns"]]
        snap["sampling"] = reply.snapshot.sampling.to_params()
        return snap

    async def __aenter__(self) -> RemoteSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RemoteEngine:
    """Connects sessions to an engine server.

    Args:
        url: ``ws://host:port/v1/ws`` (a bare ``ws://host:port`` gets the path added), or
            ``wss://`` for a server with TLS.
        token: bearer token (default: none), sent as ``Authorization: Bearer`` with the
            websocket upgrade.
        connect_timeout: seconds for one connection attempt (TCP + upgrade + hello).
        request_timeout: seconds to wait for any reply.
        reconnect_timeout: total seconds of retrying (exponential backoff) before a call
            gives up with ``ServerUnavailableError``.
        ping_interval, ping_timeout: websocket keepalive; a silent server is detected in at
            most their sum.
        frame_timeout: once a turn's text has ended, the longest wait for its next frame (or
            its end) before the turn fails with ``ServerUnavailableError`` (None: no limit).
        ssl_ca_file: ``wss://`` only: PEM file of the CA(s) to trust for the server's
            certificate (e.g. a self-signed one), instead of the system's.
        ssl_context: ``wss://`` only: the ``ssl.SSLContext`` to use (overrides
            ``ssl_ca_file``). A certificate that fails verification raises
            ``TLSVerificationError`` at once (no retries).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        reconnect_timeout: float = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        ping_interval: float | None = 5.0,
        ping_timeout: float | None = 10.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        frame_timeout: float | None = 30.0,
        ssl_ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if "/" not in url.split("://", 1)[-1]:
            url = url.rstrip("/") + P.WS_PATH
        self.url = url
        self.token = token
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.reconnect_timeout = reconnect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_message_bytes = max_message_bytes
        self.frame_timeout = frame_timeout
        self._ssl = _client_ssl(url, ssl_ca_file, ssl_context)
        self._sessions: set[RemoteSession] = set()

    async def create_session(
        self,
        *,
        conversation_id: str | None = None,
        voice: Any | None = None,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        resume_secret: str | None = None,
    ) -> RemoteSession:
        """Opens (or, with a known ``conversation_id``, resumes) a conversation.

        Args:
            conversation_id: id to resume or create (default: the server picks one).
            voice: reference voice as codec frames [R, rvq] (applied unless resumed).
            sampling, seed: for a new conversation (a resumed one keeps its own).
            resume_secret: the conversation's resume secret (``RemoteSession.resume_secret``
                of the session that created it), needed to resume a conversation that exists;
                for a new conversation, the secret to give it (default: a random one).

        Raises:
            ForbiddenError: the conversation exists and ``resume_secret`` is missing or wrong.
        """
        session = RemoteSession(self, conversation_id, sampling, seed, resume_secret)
        await session._ensure()
        if voice is not None and not session.resumed:
            await session.set_voice(voice)
        self._sessions.add(session)
        return session

    async def aclose(self) -> None:
        """Closes every session opened through this engine."""
        for s in list(self._sessions):
            await s.close()

    async def _connect(self, session: RemoteSession) -> _Link:
        """Opens a connection for ``session`` with exponential backoff."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = self.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._connect_once(session)
            except (
                UnauthorizedError,
                ForbiddenError,
                ProtocolError,
                CapacityError,
                InvalidInputError,
            ):
                raise  # retrying cannot help
            except ssl.SSLCertVerificationError as e:
                from moss_pipecat.server.errors import TLSVerificationError

                raise TLSVerificationError(
                    f"the TLS certificate of {self.url} failed verification "
                    f"({e.verify_message}): give RemoteEngine the server's CA (ssl_ca_file=)"
                ) from None
            except (OSError, TimeoutError, ServerUnavailableError, MossError) as e:
                last = e
            except Exception as e:  # websockets' handshake errors
                last = e
                if _http_status(e) == 401:
                    raise UnauthorizedError("the server refused the token") from None
            if time.monotonic() + delay > deadline:
                raise ServerUnavailableError(
                    f"cannot reach {self.url} after {attempt} attempts: {last!r}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _connect_once(self, session: RemoteSession) -> _Link:
        from websockets.asyncio.client import connect

        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if session.id is not None:
            headers[P.SESSION_HEADER] = session.id  # Ray Serve routes a conversation by it
        ws = await connect(
            self.url,
            additional_headers=headers,
            open_timeout=self.connect_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=2,
            max_size=self.max_message_bytes,
            compression=None,
            proxy=None,
            ssl=self._ssl,
        )
        try:
            await asyncio.wait_for(ws.send(session._hello().to_json()), self.connect_timeout)
            reply = P.parse_server_message(await asyncio.wait_for(ws.recv(), self.connect_timeout))
            if isinstance(reply, P.ErrorReply):
                raise reply.to_exception()
            if not isinstance(reply, P.Ready):
                raise ProtocolError(f"expected ready, got {getattr(reply, 'type', None)!r}")
        except BaseException as e:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
            if isinstance(e, MossError | asyncio.CancelledError):
                raise
            raise ServerUnavailableError(f"handshake with {self.url} failed: {e!r}") from None
        session._ready(reply)
        return _Link(session, ws, reply)


def _wire_sampling(params: SamplingParams) -> P.Sampling:
    try:
        return P.Sampling.of(params)
    except ValidationError as e:
        raise InvalidInputError(f"sampling values out of the protocol's range: {e}") from None


def _client_ssl(
    url: str, ca_file: str | None, context: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """The TLS context for ``url`` (None for plain ``ws://``)."""
    if not url.lower().startswith("wss://"):
        if ca_file is not None or context is not None:
            raise InvalidInputError(f"TLS options need a wss:// url, got {url!r}")
        return None
    if context is not None:
        return context
    # The system's CAs (or ``ca_file``'s), host name checked.
    return ssl.create_default_context(cafile=ca_file)


def _http_status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


__all__ = [
    "ForbiddenError",
    "RemoteEngine",
    "RemoteSession",
    "RemoteTurn",
    "ServerUnavailableError",
]
