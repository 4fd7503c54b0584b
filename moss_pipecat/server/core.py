"""Conversations over connections: the protocol handler, independent of the websocket library.

``ConversationHub`` owns the conversations of one engine (``conversation_id`` -> engine
session) and serves connections given as ``Transport`` objects. A conversation survives its
connection for ``idle_expiry_s``; a reconnect with the same id picks it up again.

No connection's I/O is ever awaited while holding what other connections need: the hub lock
(the conversation map) and a conversation's lock are held across engine calls only, every send
has a deadline (``write_timeout_s``; a peer that reads nothing for that long is dropped), and a
replaced connection gets its farewell from a background task.

The hub keeps the conversation map (create, resume, replace, detach, expire) and the budgets.
A connection's handshake is ``handshake``, its requests ``message_handlers`` (one handler per
client message); a turn's frames go out through ``turn_pump``; ``uploads`` reads user audio
and voices; ``Conversation`` and ``Connection`` are the records they share.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.errors import CapacityError, MossError, OverloadedError, SessionClosedError
from moss_pipecat.protocol.errors import ForbiddenError, ProtocolError
from moss_pipecat.server.budget import Admission, ConnectionBudget
from moss_pipecat.server.config import ServerConfig
from moss_pipecat.server.connection import Connection
from moss_pipecat.server.conversation import Conversation
from moss_pipecat.server.handshake import run_handshake
from moss_pipecat.server.message_handlers import serve_requests
from moss_pipecat.server.metrics import ServerMetrics
from moss_pipecat.server.tickets import REFUSALS, TAKEN_OVER, ResumeTickets
from moss_pipecat.server.transport import Transport, TransportClosed
from moss_pipecat.server.turn_pump import cut_to_sent
from moss_pipecat.server.uploads import AudioUploads
from moss_pipecat.speech.sampling import SamplingParams


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
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop
        self._tasks: set[asyncio.Task] = set()  # farewells to replaced connections
        self._drain: asyncio.Future | None = None
        self._hurry = asyncio.Event()  # set: a drain waits no longer for its clients
        self._goaway_deadline = 0.0
        self._no_connections = asyncio.Event()  # set while ``connections`` is empty
        self._no_connections.set()
        self.uploads = AudioUploads(engine, self.limits)  # user audio and voices
        # Proofs of who made a conversation first, for the deployment's servers (``tickets``).
        self.tickets = ResumeTickets(self.config.resume_key, self.limits.resume_ticket_max_age_s)
        # Open sockets, authenticated and pending apart (admitted by the app at the upgrade).
        self.budget = ConnectionBudget(
            self.limits.max_connections, self.limits.max_pending_connections
        )
        self.metrics = ServerMetrics.of_hub(self)

    # ================================================================== lifecycle
    def start(self) -> None:
        """Starts the expiry reaper (call inside the serving event loop)."""
        self._loop = asyncio.get_running_loop()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def drain(self, timeout: float | None = None) -> None:
        """Drains the server for a deploy (idempotent): stops admitting (upgrades and hellos
        are refused, ``/readyz`` says not ready), tells every client to move (``goaway``),
        lets turns in flight end, and when ``timeout`` (default ``drain_timeout_s``) passes
        cuts the turns still open at the frames their clients received. Returns once every
        client has left or the turns are cut; ``stop`` closes what is left."""
        if self._drain is None:
            wait = self.limits.drain_timeout_s if timeout is None else timeout
            self._drain = asyncio.ensure_future(self._drain_once(wait))
        await asyncio.shield(self._drain)

    def drain_threadsafe(self) -> None:
        """Starts ``drain`` from any thread (e.g. Ray's own event loop); returns at once."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.draining = True  # never served: nothing to move
            return
        loop.call_soon_threadsafe(lambda: self._spawn(self.drain()))

    async def _drain_once(self, timeout: float) -> None:
        self.draining = True
        logger.info(
            f"draining: {len(self.connections)} connections told to move, "
            f"turns in flight get {timeout} s"
        )
        self._goaway_deadline = time.monotonic() + timeout
        await asyncio.gather(*(self.tell_to_move(c) for c in list(self.connections)))
        waits = [asyncio.ensure_future(e.wait()) for e in (self._no_connections, self._hurry)]
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if self._no_connections.is_set():
            return
        open_turns = [c for c in self.conversations.values() if c.turn is not None]
        why = "cut short" if self._hurry.is_set() else "deadline"
        logger.info(f"drain {why}: cutting {len(open_turns)} turns at the frames sent")
        pumps = [c.pump for c in open_turns if c.pump is not None]
        await asyncio.gather(*(cut_to_sent(c) for c in open_turns), return_exceptions=True)
        if pumps:  # their ``turn.end`` goes out before ``stop`` closes the connections
            await asyncio.wait(pumps, timeout=self.limits.write_timeout_s)

    def hurry_drain(self) -> None:
        """Ends the drain's wait for its clients now: open turns are cut as at its deadline."""
        self._hurry.set()

    async def tell_to_move(self, conn: Connection) -> None:
        """Sends ``goaway`` to a connection whose client reads server messages (it went
        ``ready``), once; the handshake calls it too, for a connection that went ready
        after the drain began."""
        if not self.draining or conn.moving or not conn.ready:
            return
        conn.moving = True
        left = max(0.0, self._goaway_deadline - time.monotonic())
        try:
            await conn.send_message(P.GoAway(deadline_s=round(left, 3), reason="shutdown"))
        except TransportClosed:
            pass

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
        self.uploads.shutdown()

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
        self._no_connections.clear()
        try:
            if await run_handshake(self, conn):
                await serve_requests(self, conn)
        except TransportClosed as e:
            if e.error_code is not None:  # the server refused a frame (and closed): counted
                self.metrics.errors.inc(code=e.error_code)
        except Exception:
            logger.exception("connection handler failed")
        finally:
            self.connections.discard(conn)
            if not self.connections:
                self._no_connections.set()
            conv = conn.conversation
            if conv is not None:
                await self._detach(conv, conn)
            if not conn.closed:
                await conn.close()
            if admission is not None:
                admission.release()

    async def send_error(
        self,
        conn: Connection,
        code: str,
        message: str,
        req: int | None = None,
        turn_id: int | None = None,
        fatal: bool = False,
        subcode: str | None = None,
    ) -> None:
        """Sends an ``error`` reply (counted by code); a closed connection gets none."""
        self.metrics.errors.inc(code=code)
        msg = P.ErrorReply.of(code, message, req=req, turn_id=turn_id, fatal=fatal, subcode=subcode)
        try:
            await conn.send_message(msg)
        except TransportClosed:
            pass

    # ================================================================== conversations
    async def attach(self, conn: Connection, hello: P.Hello) -> tuple[Conversation, bool]:
        """Gives ``conn`` the conversation its ``hello`` names: resumed (with its secret) or
        created; a connection that held it is replaced. Returns (conversation, resumed).

        A hello with another secret whose resume ticket proves an earlier creation takes the
        id back from its holder (``server.tickets``): the holder's conversation is closed (its
        connection told why) and the hello's made anew.

        Raises:
            ForbiddenError: it exists and the hello lacks its resume secret (nothing changes).
            MossError: the engine could not create a session (e.g. ``CapacityError``).
        """
        cid = hello.conversation_id or uuid.uuid4().hex
        claim = self.tickets.check(hello.resume_ticket, cid, hello.resume_secret)
        async with self._lock:
            conv = self.conversations.get(cid)
            if conv is not None and conv.session.closed:
                self.conversations.pop(cid, None)
                conv = None
            if conv is not None and not _secret_matches(hello.resume_secret, conv.secret):
                if isinstance(claim, str) or claim.created_ms >= conv.created_ms:
                    # Refused before anything changes: the live connection and its turn go on.
                    reason = claim if isinstance(claim, str) else "ticket_newer"
                    self.metrics.resume_refused.inc(reason=reason)
                    logger.warning(f"conversation {cid}: resume refused ({reason})")
                    raise ForbiddenError(REFUSALS[reason].format(cid=cid))
                await self._end_session(self._take_back(conv))
                conv = None
            resumed = conv is not None
            if conv is None:
                sampling = hello.sampling.to_params() if hello.sampling else SamplingParams()
                session = await self._create_session(cid, sampling, hello.seed)
                conv = Conversation(cid, session, sampling, tickets=self.tickets)
                # A good ticket's creation time, or now.
                conv.created_ms = (
                    self.tickets.now_ms() if isinstance(claim, str) else claim.created_ms
                )
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
            # What its request in hand does (a user turn, a voice) goes before what this
            # connection is told (``history``), else its client would send it again. One
            # still uploading or encoding after the wait is not applied (``check_held``).
            await old.requests_done(self.limits.takeover_wait_s)
        await self._settle(conv)
        logger.debug(f"conversation {cid}: attached (resumed={resumed})")
        return conv, resumed

    def _take_back(self, squatter: Conversation) -> Conversation:
        """Forgets the conversation a later creator made under an id whose first creator
        proved itself (hub lock held; the caller ends its session); its connection is told
        why and closed."""
        logger.warning(f"conversation {squatter.id}: taken back by its first creator")
        self.metrics.takeovers.inc()
        self._forget(squatter)
        conn = squatter.conn
        if conn is not None:
            self._unlink(squatter, conn)
            squatter.cut = None  # the session ends: nothing to cut
            why = TAKEN_OVER.format(cid=squatter.id)
            self._spawn(self._farewell(conn, "forbidden", why, P.CLOSE_FORBIDDEN))
        return squatter

    async def _farewell(
        self,
        old: Connection,
        code: str = "superseded",
        why: str = "a newer connection took over",
        close: int = P.CLOSE_SUPERSEDED,
    ) -> None:
        """Tells a replaced connection why, then closes it (each step within the write
        timeout, else it is dropped)."""
        await self.send_error(old, code, why, fatal=True)
        await old.close(close, code)

    async def _create_session(self, cid: str, sampling: SamplingParams, seed: int | None):
        """(hub lock held)"""

        def create():
            return self.engine.acreate_session(sampling=sampling, seed=seed, session_id=cid)

        try:
            try:
                return await create()
            except OverloadedError:
                # The engine is out of frame time, not of slots: a detached conversation costs
                # no decode time, so evicting one would end someone's call and serve no one.
                raise
            except CapacityError:
                # Out of slots: make room by closing the conversation that has waited longest
                # for its client.
                idle = [c for c in self.conversations.values() if c.conn is None]
                if not idle:
                    raise
                victim = min(idle, key=lambda c: c.detached_at or 0.0)
                logger.info(f"conversation {victim.id}: evicted to make room")
                self._forget(victim)
                await self._end_session(victim)
                return await create()
        except CapacityError as e:
            reason = "overloaded" if isinstance(e, OverloadedError) else "full"
            self.metrics.conversations_refused.inc(reason=reason)
            logger.info(f"conversation {cid}: refused ({reason}): {e}")
            raise

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

    async def end_conversation(self, conv: Conversation, conn: Connection) -> None:
        """Ends ``conv`` for its client's ``close``: no connection finds it any more and its
        engine session is closed.

        Raises:
            SessionClosedError: ``conn`` no longer holds it (taken over meanwhile).
        """
        async with self._lock:
            if conv.conn is not conn:  # taken over meanwhile
                raise SessionClosedError("this connection no longer holds a conversation")
            self._forget(conv)
            await self._end_session(conv)

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
