"""Conversations over connections: the protocol handler, independent of the websocket library.

``ConversationHub`` owns the conversations of one engine (``conversation_id`` -> engine
session) and serves connections given as ``Transport`` objects. A conversation survives its
connection for ``idle_expiry_s``; a reconnect with the same id picks it up again.

No connection's I/O is ever awaited while holding what other connections need: the hub lock
(the conversation map) and a conversation's lock are held across engine calls only, every send
has a deadline (``write_timeout_s``; a peer that reads nothing for that long is dropped), and a
replaced connection gets its farewell from a background task.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from loguru import logger

from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.engine.session import Session, TurnStream
from moss_pipecat.errors import CapacityError, InvalidInputError, MossError, SessionClosedError
from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.pcm import pcm16_to_float
from moss_pipecat.server import protocol as P
from moss_pipecat.server.budget import Admission, ConnectionBudget
from moss_pipecat.server.config import ServerConfig
from moss_pipecat.server.errors import ForbiddenError, ProtocolError
from moss_pipecat.server.metrics import ServerMetrics
from moss_pipecat.server.transport import Transport, TransportClosed

_FATAL = object()  # marker: close the connection after the error reply


@dataclass(eq=False)
class Conversation:
    """One conversation held by the server: its engine session and its live turn."""

    id: str
    session: Session
    sampling: SamplingParams
    # Proves a resuming client is the one that created the conversation (the id may be known).
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    conn: Connection | None = None
    detached_at: float | None = None
    turn: TurnStream | None = None
    pump: asyncio.Task | None = None
    frames_sent: int = 0
    turn_ids: int = 0  # ids and characters sent with ``turn.ids`` for the open turn
    turn_chars: int = 0
    # The turn a departed connection left open, and the frames it received: cut by ``_settle``
    # (under ``lock``) before anyone else uses the conversation.
    cut: tuple[TurnStream, int] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # engine calls of attach/detach


@dataclass(eq=False)
class Connection:
    """One client connection (serialises sends; several tasks write to it).

    Every send waits at most ``write_timeout`` seconds (for the send lock and the socket
    together); past it the peer is taken to be reading nothing and the connection is dropped.
    """

    transport: Transport
    write_timeout: float | None = None
    on_slow: Callable[[], None] | None = None  # called when a send times out
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conversation: Conversation | None = None
    closed: bool = False
    aborted: bool = False
    admission: Admission | None = None  # its slot in the connection budget

    async def send_message(self, msg: P.ServerMessage) -> None:
        await self._send(self.transport.send_text, msg.to_json())

    async def send_bytes(self, data: bytes) -> None:
        await self._send(self.transport.send_bytes, data)

    async def _send(self, send: Callable[[Any], Awaitable[None]], data: str | bytes) -> None:
        if self.aborted:
            raise TransportClosed("connection dropped")
        try:
            await asyncio.wait_for(self._locked_send(send, data), self.write_timeout)
        except TimeoutError:
            logger.warning(f"dropping a client that read nothing for {self.write_timeout} s")
            if self.on_slow is not None and not self.aborted:
                self.on_slow()
            self.abort()
            raise TransportClosed("write timeout") from None

    async def _locked_send(self, send: Callable[[Any], Awaitable[None]], data: Any) -> None:
        async with self.send_lock:
            await send(data)

    def abort(self) -> None:
        """Drops the connection now (no closing handshake); never blocks."""
        if self.aborted:
            return
        self.aborted = self.closed = True
        try:
            self.transport.abort()
        except Exception as e:  # already gone
            logger.debug(f"abort: {e!r}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closing handshake, bounded by the write timeout (then the connection is dropped)."""
        if self.aborted:
            return
        self.closed = True
        try:
            await asyncio.wait_for(self.transport.close(code, reason), self.write_timeout)
        except TimeoutError:
            self.abort()
        except TransportClosed:
            pass


class ConversationHub:
    """Serves one ``MossEngine`` to many clients (see ``protocol`` for the messages).

    Args:
        engine: a started engine; the hub does not own it (``shutdown`` is the caller's).
        config: limits, token, expiry.
    """

    def __init__(self, engine: MossEngine, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.limits = self.config.limits
        self.conversations: dict[str, Conversation] = {}
        self.connections: set[Connection] = set()
        self.draining = False
        # Names this server (replica) in ``ready``: shows clients (and tests) where they landed.
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The conversation map: held across engine calls, never across a connection's I/O.
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # farewells to replaced connections
        # Codec encodes run here: off the event loop and off the engine thread.
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moss-encode")
        # Open sockets, authenticated and pending apart (admitted by the app at the upgrade).
        self.budget = ConnectionBudget(
            self.limits.max_connections, self.limits.max_pending_connections
        )
        self.metrics = ServerMetrics(
            sessions=lambda: len(self.conversations),
            attached=lambda: sum(c.conn is not None for c in self.conversations.values()),
            conns=lambda: len(self.connections),
            pending=lambda: self.budget.pending,
        )

    # ================================================================== lifecycle
    def start(self) -> None:
        """Starts the expiry reaper (call inside the serving event loop)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def stop(self) -> None:
        """Closes every connection (1001) and every conversation."""
        self.draining = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        await asyncio.gather(
            *(c.close(P.CLOSE_GOING_AWAY, "server shutting down") for c in list(self.connections)),
            return_exceptions=True,
        )
        async with self._lock:
            for conv in list(self.conversations.values()):
                self._forget(conv)
                await self._end_session(conv)
        for task in list(self._tasks):
            task.cancel()
        self._encoder.shutdown(wait=False)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def ready(self) -> bool:
        """Accepting work: not draining and the engine thread is alive."""
        return not self.draining and self.engine.alive

    def audio_info(self) -> P.AudioInfo:
        codec = self.engine.codec
        return P.AudioInfo(
            sample_rate=codec.sampling_rate if codec is not None else 24000,
            frame_samples=codec.config.downsample_rate if codec is not None else 1920,
            rvq=self.engine.layout.rvq,
            pcm=codec is not None,
        )

    def check_token(self, token: str | None) -> bool:
        """True when no token is configured or ``token`` matches it (constant time)."""
        want = self.config.token
        if not want:
            return True
        return token is not None and hmac.compare_digest(token.encode(), want.encode())

    # ================================================================== one connection
    async def serve(self, transport: Transport, admission: Admission | None = None) -> None:
        """Runs one connection to its end (and then releases its ``admission``); never
        raises."""
        conn = Connection(
            transport, self.limits.write_timeout_s, on_slow=self.metrics.slow_peers.inc
        )
        conn.admission = admission
        self.connections.add(conn)
        try:
            if await self._hello(conn):
                await self._loop(conn)
        except TransportClosed:
            pass
        except Exception:
            logger.exception("connection handler failed")
        finally:
            self.connections.discard(conn)
            conv = conn.conversation
            if conv is not None:
                await self._detach(conv, conn)
            if not conn.closed:
                await conn.close()
            if admission is not None:
                admission.release()

    async def _error(
        self,
        conn: Connection,
        code: str,
        message: str,
        req: int | None = None,
        turn_id: int | None = None,
        fatal: bool = False,
    ) -> None:
        self.metrics.errors.inc(code=code)
        msg = P.ErrorReply.of(code, message, req=req, turn_id=turn_id, fatal=fatal)
        try:
            await conn.send_message(msg)
        except TransportClosed:
            pass

    async def _hello(self, conn: Connection) -> bool:
        t = conn.transport
        try:
            # Without a bearer header the socket is on the short pending budget.
            timeout = (
                self.limits.hello_timeout_s
                if t.header_authorized
                else self.limits.pending_hello_timeout_s
            )
            raw = await asyncio.wait_for(t.recv(), timeout)
        except TimeoutError:
            await self._error(conn, "bad_message", "no hello in time", fatal=True)
            await conn.close(P.CLOSE_HELLO_TIMEOUT, "no hello")
            return False
        try:
            if isinstance(raw, bytes):
                raise P.MessageError("bad_message", "expected a hello message, got binary")
            if len(raw.encode()) > self.limits.max_message_bytes:
                raise P.MessageError("too_large", "hello too large")
            hello = P.parse_client_message(raw)
            if not isinstance(hello, P.Hello):
                raise P.MessageError("bad_message", f"expected hello, got {hello.type!r}")
        except P.MessageError as e:
            await self._error(conn, e.code, str(e), fatal=True)
            await conn.close(P.CLOSE_PROTOCOL, e.code)
            return False
        if not (t.header_authorized or self.check_token(hello.token)):
            await self._error(conn, "unauthorized", "missing or wrong bearer token", fatal=True)
            await conn.close(P.CLOSE_UNAUTHORIZED, "unauthorized")
            return False
        if conn.admission is not None and not conn.admission.promote():
            await self._error(conn, "unavailable", "server at its connection limit", fatal=True)
            await conn.close(1013, "try again later")
            return False
        if hello.v != P.PROTOCOL_VERSION:
            await self._error(
                conn, "unsupported_version", f"server speaks v{P.PROTOCOL_VERSION}", fatal=True
            )
            await conn.close(P.CLOSE_PROTOCOL, "version")
            return False
        if self.draining:
            await self._error(conn, "unavailable", "server is shutting down", fatal=True)
            await conn.close(P.CLOSE_GOING_AWAY, "draining")
            return False
        try:
            conv, resumed = await self._attach(conn, hello)
        except MossError as e:
            code = P.error_code(e)
            await self._error(conn, code, str(e), fatal=True)
            close = P.CLOSE_FORBIDDEN if isinstance(e, ForbiddenError) else P.CLOSE_PROTOCOL
            await conn.close(close, code)
            return False
        await conn.send_message(
            P.Ready(
                v=P.PROTOCOL_VERSION,
                conversation_id=conv.id,
                resumed=resumed,
                resume_secret=conv.secret,
                server_id=self.server_id,
                audio=self.audio_info(),
                limits=P.ReadyLimits(
                    max_message_bytes=self.limits.max_message_bytes,
                    max_audio_seconds=self.limits.max_audio_seconds,
                    max_text_chars=self.engine.config.max_text_chars,
                    max_ids_per_message=self.limits.max_ids_per_message,
                    max_ids_per_turn=self.limits.max_ids_per_turn,
                    idle_expiry_s=self.limits.idle_expiry_s,
                ),
            )
        )
        return True

    async def _loop(self, conn: Connection) -> None:
        t = conn.transport
        while not conn.closed:
            raw = await t.recv()
            if isinstance(raw, bytes):
                await self._error(conn, "bad_message", "unexpected binary message")
                continue
            if len(raw.encode()) > self.limits.max_message_bytes:
                await self._error(
                    conn, "too_large", f"message over {self.limits.max_message_bytes} bytes"
                )
                continue
            req = None
            try:
                msg = P.parse_client_message(raw)
                req = getattr(msg, "req", None)
                reply = await self._handle(conn, msg)
                if reply is _FATAL:
                    return
                if reply is not None:
                    await conn.send_message(reply)
            except P.MessageError as e:
                await self._error(conn, e.code, str(e), req=e.req if e.req is not None else req)
                continue
            except TransportClosed:
                raise
            except MossError as e:
                await self._error(conn, P.error_code(e), str(e), req=req)
                continue
            except Exception as e:  # a bug: report it, keep serving
                logger.exception("request failed")
                await self._error(conn, "internal", f"{type(e).__name__}: {e}", req=req)
                continue

    # ================================================================== requests
    async def _handle(self, conn: Connection, msg: Any) -> Any:
        conv = conn.conversation
        if conv is None:  # taken over by a newer connection, or closed
            raise SessionClosedError("this connection no longer holds a conversation")
        s = conv.session
        if isinstance(msg, P.Hello):
            raise P.MessageError("bad_message", "hello was already sent")
        if isinstance(msg, (P.TurnText, P.TurnIds, P.TurnEnd)):
            await self._turn_input(conn, conv, msg)
            return None
        if isinstance(msg, P.TurnStart):
            turn = await s.start_turn(
                msg.max_frames, min_frames=msg.min_frames, eos_after_text=msg.eos_after_text
            )
            conv.turn, conv.frames_sent = turn, 0
            conv.turn_ids = conv.turn_chars = 0
            await conn.send_message(P.TurnStarted(req=msg.req, turn_id=turn.turn_id))
            conv.pump = asyncio.get_running_loop().create_task(self._pump(conv, turn))
            return None
        if isinstance(msg, P.Interrupt):
            summary = await s.interrupt(msg.heard_frames)
            wire = None if summary is None else P.WireSummary.of(summary)
            return P.Result(req=msg.req, summary=wire)  # null: there was nothing to cut
        if isinstance(msg, P.UserTurn):
            await self._user_turn(conn, conv, msg)
        elif isinstance(msg, P.Voice):
            await self._voice(conn, conv, msg)
        elif isinstance(msg, P.Settings):
            sampling = msg.sampling.to_params() if msg.sampling is not None else conv.sampling
            await s.set_sampling(sampling, msg.seed)
            if msg.limits is not None:
                lim = msg.limits
                await s.set_limits(lim.context_budget, lim.lookahead_s, lim.unlimited_lookahead)
            conv.sampling = sampling
        elif isinstance(msg, P.Reset):
            await s.reset()
        elif isinstance(msg, P.Snapshot):
            snap = await s.snapshot()
            return P.Result(req=msg.req, snapshot=P.WireSnapshot.of(snap))
        elif isinstance(msg, P.Close):
            async with self._lock:
                if conv.conn is not conn:  # taken over meanwhile
                    raise SessionClosedError("this connection no longer holds a conversation")
                self._forget(conv)
                await self._end_session(conv)
            await self._await_pump(conv)  # its turn.end reaches this client before the result
            conv.conn, conn.conversation = None, None
            await conn.send_message(P.Result(req=msg.req))
            await conn.close(1000, "conversation closed")
            return _FATAL
        return P.Result(req=msg.req)

    async def _turn_input(self, conn: Connection, conv: Conversation, msg: Any) -> None:
        turn = conv.turn
        if turn is None or turn.turn_id != msg.turn_id or turn.summary is not None:
            return  # the turn already ended (EOS, cap, interruption): late input is dropped
        try:
            if isinstance(msg, P.TurnText):
                turn.push_text(msg.text)
            elif isinstance(msg, P.TurnIds):
                if len(msg.ids) > self.limits.max_ids_per_message:
                    raise InvalidInputError(
                        f"more than {self.limits.max_ids_per_message} ids in one message"
                    )
                n_ids, n_chars = conv.turn_ids + len(msg.ids), conv.turn_chars + len(msg.text)
                if n_ids > self.limits.max_ids_per_turn:
                    raise P.MessageError(
                        "too_large", f"more than {self.limits.max_ids_per_turn} ids per turn"
                    )
                if n_chars > self.engine.config.max_text_chars:
                    raise P.MessageError(
                        "too_large",
                        f"turn text over {self.engine.config.max_text_chars} characters",
                    )
                conv.turn_ids, conv.turn_chars = n_ids, n_chars
                turn.push_ids(msg.ids, msg.text)
            else:
                turn.end_text()
        except MossError as e:
            await self._error(conn, P.error_code(e), str(e), turn_id=msg.turn_id)
        except P.MessageError as e:  # refused: the turn goes on with what it had
            await self._error(conn, e.code, str(e), turn_id=msg.turn_id)

    async def _pump(self, conv: Conversation, turn: TurnStream) -> None:
        """Forwards a turn's frames as they come; then its summary."""
        conn = conv.conn
        sent = 0
        try:
            async for chunk in turn:
                if conn is None or conn.closed or conv.conn is not conn:
                    continue  # the client left: keep draining so the turn can end
                try:
                    if chunk.words:  # ahead of its frame: the client attaches them to it
                        await conn.send_message(P.TurnWords.of(chunk))
                    data = P.pack_audio(chunk.turn_id, chunk.index, chunk.codes.tolist(), chunk.pcm)
                    await conn.send_bytes(data)
                    sent += 1
                    if conv.turn is turn:  # a newer turn may have started meanwhile
                        conv.frames_sent = sent
                    self.metrics.frames.inc()
                except TransportClosed:
                    conn = None
            summary = turn.summary
            self.metrics.turns.inc(stop=summary.stop)
            if summary.ttfa_s is not None:
                self.metrics.ttfa.observe(summary.ttfa_s)
            if conn is not None and conv.conn is conn:
                try:
                    await conn.send_message(
                        P.TurnEnded(turn_id=turn.turn_id, summary=P.WireSummary.of(summary))
                    )
                except TransportClosed:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(f"conversation {conv.id}: audio pump failed")
        finally:
            if conv.turn is turn:
                conv.turn = None

    async def _upload(self, conn: Connection, n_bytes: int, limit: int) -> bytes:
        """Receives the binary frame announced by an upload header.

        The frame is always consumed (even when it is refused) so the stream stays in step.
        """
        try:
            data = await asyncio.wait_for(conn.transport.recv(), self.limits.upload_timeout_s)
        except TimeoutError:
            raise P.MessageError("bad_message", "upload data did not follow its header") from None
        if not isinstance(data, bytes) or len(data) != n_bytes:
            raise P.MessageError("bad_message", f"expected a binary frame of {n_bytes} bytes")
        if n_bytes > limit:
            raise P.MessageError("too_large", f"upload of {n_bytes} bytes exceeds {limit}")
        return data

    def _check_rate(self, sample_rate: int | None) -> int:
        lo, hi = self.limits.min_sample_rate, self.limits.max_sample_rate
        if sample_rate is None or not lo <= sample_rate <= hi:
            raise InvalidInputError(f"sample_rate must be in [{lo}, {hi}], got {sample_rate}")
        return sample_rate

    async def _decode_upload(self, conn: Connection, fmt: str, n: int, rate: int | None):
        """Audio upload -> codec frames [T, rvq]."""
        rvq = self.engine.layout.rvq
        if fmt == "codes":
            data = await self._upload(conn, n, self.limits.max_code_bytes(rvq))
            if len(data) % (2 * rvq):
                raise InvalidInputError(f"codes upload is not a whole number of {rvq}-code frames")
            codes = np.frombuffer(data, dtype="<u2").astype(np.int64).reshape(-1, rvq)
            return torch.from_numpy(codes)  # [T, rvq]
        data = await self._upload(conn, n, self.limits.max_pcm_bytes)
        if n % 2:
            raise P.MessageError("bad_message", "pcm16 upload has an odd number of bytes")
        rate = self._check_rate(rate)
        if n / 2 / rate > self.limits.max_audio_seconds:
            raise InvalidInputError(f"audio longer than {self.limits.max_audio_seconds} s")
        codec = self.engine.codec
        if codec is None:
            raise InvalidInputError("this server has no codec: upload codes instead of PCM")
        wav = torch.from_numpy(pcm16_to_float(data))

        def encode() -> torch.Tensor:
            with torch.inference_mode():
                return codec.encode_frames(wav, rate).cpu()

        return await asyncio.get_running_loop().run_in_executor(self._encoder, encode)

    async def _user_turn(self, conn: Connection, conv: Conversation, msg: P.UserTurn) -> None:
        frames = await self._decode_upload(conn, msg.format, msg.bytes, msg.sample_rate)
        if (msg.text is None) == (msg.text_ids is None):
            raise InvalidInputError("a user turn needs exactly one of text and text_ids")
        if msg.text is not None:
            if len(msg.text) > self.limits.max_text_chars:
                raise InvalidInputError(f"transcript over {self.limits.max_text_chars} chars")
            ids = conv.session.user_text_ids(msg.text)
        else:
            if len(msg.text_ids) > self.limits.max_ids_per_message:
                raise InvalidInputError("too many transcript ids")
            ids = msg.text_ids
        if frames.shape[0] == 0:
            raise InvalidInputError("the user audio is shorter than one frame (80 ms)")
        await conv.session.add_user_turn(ids, frames)

    async def _voice(self, conn: Connection, conv: Conversation, msg: P.Voice) -> None:
        if msg.format == "none":
            await conv.session.set_voice(None)
            return
        frames = await self._decode_upload(conn, msg.format, msg.bytes, msg.sample_rate)
        if frames.shape[0] == 0:
            raise InvalidInputError("the voice reference is shorter than one frame (80 ms)")
        await conv.session.set_voice(frames)

    # ================================================================== conversations
    async def _attach(self, conn: Connection, hello: P.Hello) -> tuple[Conversation, bool]:
        cid = hello.conversation_id or uuid.uuid4().hex
        async with self._lock:
            conv = self.conversations.get(cid)
            if conv is not None and conv.session.closed:
                self.conversations.pop(cid, None)
                conv = None
            resumed = conv is not None
            if conv is not None and not _secret_matches(hello.resume_secret, conv.secret):
                # Refused before anything changes: the live connection and its turn go on.
                logger.warning(f"conversation {cid}: resume refused (no or wrong resume secret)")
                raise ForbiddenError(
                    f"conversation {cid!r} exists: resuming it needs its resume_secret"
                )
            if conv is None:
                sampling = hello.sampling.to_params() if hello.sampling else SamplingParams()
                session = await self._create_session(cid, sampling, hello.seed)
                conv = Conversation(cid, session, sampling)
                if hello.resume_secret is not None:  # the creator's own (see protocol)
                    conv.secret = hello.resume_secret
                self.conversations[cid] = conv
            old = conv.conn
            if old is not None:
                logger.info(f"conversation {cid}: replaced by a new connection")
                self._unlink(conv, old)
            conv.conn, conv.detached_at = conn, None
            conn.conversation = conv
        if old is not None:  # its socket may be stuck: nobody waits for the farewell
            self._spawn(self._farewell(old))
        await self._settle(conv)
        logger.debug(f"conversation {cid}: attached (resumed={resumed})")
        return conv, resumed

    async def _farewell(self, old: Connection) -> None:
        """Tells a replaced connection why, then closes it (each step within the write
        timeout, else it is dropped)."""
        await self._error(old, "superseded", "a newer connection took over", fatal=True)
        await old.close(P.CLOSE_SUPERSEDED, "superseded")

    async def _create_session(self, cid: str, sampling: SamplingParams, seed: int | None):
        """(hub lock held)"""

        def create():
            return self.engine.acreate_session(sampling=sampling, seed=seed, session_id=cid)

        try:
            return await create()
        except CapacityError:
            # Make room by closing the conversation that has waited longest for its client.
            idle = [c for c in self.conversations.values() if c.conn is None]
            if not idle:
                raise
            victim = min(idle, key=lambda c: c.detached_at or 0.0)
            logger.info(f"conversation {victim.id}: evicted to make room")
            self._forget(victim)
            await self._end_session(victim)
            return await create()

    async def _detach(self, conv: Conversation, conn: Connection) -> None:
        """The connection ended: its open turn is cut to the frames it received."""
        async with self._lock:
            if conv.conn is not conn:
                return  # already replaced or closed
            self._unlink(conv, conn)
            if self.limits.idle_expiry_s == 0:
                self._forget(conv)
                await self._end_session(conv)
                return
        await self._settle(conv)
        logger.debug(f"conversation {conv.id}: detached")

    def _unlink(self, conv: Conversation, conn: Connection) -> None:
        """Detaches ``conn`` (hub lock held; no awaits): the cut of its open turn is left to
        ``_settle``."""
        conv.conn, conv.detached_at = None, time.monotonic()
        conn.conversation = None
        turn = conv.turn
        if turn is not None and turn.summary is None:
            conv.cut = (turn, conv.frames_sent)

    async def _settle(self, conv: Conversation) -> None:
        """Cuts the turn a departed connection left open to the frames it received (an engine
        call; the next user of the conversation waits for it, no one else does)."""
        async with conv.lock:
            cut, conv.cut = conv.cut, None
            if cut is None or conv.session.closed:
                return
            turn, heard = cut
            if turn.summary is not None:
                return
            try:
                await conv.session.interrupt(heard)
            except MossError as e:
                logger.warning(f"conversation {conv.id}: interrupt on disconnect failed: {e}")

    async def _await_pump(self, conv: Conversation) -> None:
        """Lets the turn's pump send what it has left (each send bounded by the write timeout)."""
        pump = conv.pump
        if pump is not None and not pump.done():
            try:
                await asyncio.wait_for(asyncio.shield(pump), self.limits.write_timeout_s)
            except TimeoutError:
                pump.cancel()
        conv.pump = None

    def _forget(self, conv: Conversation) -> None:
        """Removes ``conv`` from the map (hub lock held): no connection finds it any more."""
        if self.conversations.get(conv.id) is conv:
            del self.conversations[conv.id]

    async def _end_session(self, conv: Conversation) -> None:
        """Closes the engine session (its open turn ends; the pump finishes on its own)."""
        try:
            await conv.session.close()
        except Exception as e:  # the engine may already be gone
            logger.warning(f"conversation {conv.id}: close failed: {e!r}")

    async def reap_expired(self) -> int:
        """Closes conversations whose client has been gone longer than ``idle_expiry_s``."""
        now = time.monotonic()
        n = 0
        async with self._lock:
            for conv in list(self.conversations.values()):
                if (
                    conv.conn is None
                    and now - (conv.detached_at or now) >= self.limits.idle_expiry_s
                ):
                    logger.info(f"conversation {conv.id}: expired")
                    self._forget(conv)
                    await self._end_session(conv)
                    self.metrics.expired.inc()
                    n += 1
        return n

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            try:
                await self.reap_expired()
            except Exception:
                logger.exception("reaper failed")


def _secret_matches(given: str | None, secret: str) -> bool:
    """Constant-time comparison (the edge admits only URL-safe ASCII secrets)."""
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())


__all__ = ["ConversationHub", "ProtocolError"]
