"""``MossRemoteTTSService``: the same pipecat service, with the model on an engine server.

The conversation (and its acoustic history) lives on the server, keyed by the conversation
id, so it survives this process reconnecting. User speech and reference voices travel as PCM
and are encoded by the server's codec. A lost server becomes an ``ErrorFrame`` for the turn in
flight; the next turn reconnects (with backoff) and goes on. A server that drains for a
deploy (``goaway``) lets the reply in flight finish; the next one goes to another server
(the next of several URLs, or the same URL behind a load balancer). The session keeps the
conversation's resume secret (what resuming it takes) and its resume ticket (the servers'
proof of who made it first) for those reconnects; another process continues the conversation
with the id, the secret and the last ticket (``resume_secret``, ``resume_ticket``).

A server that cannot be reached when the pipeline starts is the same case as one lost before
the first reply (pipecat's websocket services do the same: a failed connect at the start is a
non-permanent ``ErrorFrame``, and the next request connects). The start makes one connection
attempt (at each URL), bounded by the client's ``connect_timeout``, and does not retry: the
pipeline's StartFrame, and every frame behind it, waits for the TTS's start, so a dead server
must not hold it for the client's whole ``reconnect_timeout``. Failing that attempt, the
service starts with its session unconnected and pushes one ``ErrorFrame`` (category
connectivity) naming the URL and why (``RemoteEngine.connect``: DNS, refused, timed out, a TLS
handshake, HTTP 503); each later reply connects first (the client's backoff, up to its
``reconnect_timeout``) and, reaching no server, fails with one such ``ErrorFrame`` before it
sends anything, so the settings, voice and user turns it would have sent wait for the next
reply. The first connection that succeeds makes the conversation with the id and resume secret
the service was given or drew, and the reply speaks. What retrying cannot heal ends the service
at whichever connection meets it, as a refused start does (``service/refusal.py``: one
permanent ``ErrorFrame``): the server's refusals, and a TLS certificate that fails verification
(the client lacks the CA that signed it; waiting changes nothing, so the connection is not
retried at all). That is the first connection, whenever it comes, and every reconnect of the
conversation too (the server's token rotated, the conversation taken over by whoever holds its
resume ticket, a server that no longer speaks this protocol): pipecat counts such errors
permanent (``ErrorCategory.is_permanent``: the same result on every retry), and a service that
said "reply failed" on each reply would never heal, nor let a ``ServiceSwitcher`` fail over. A
reply whose connection the server closed for such a reason fails as a lost one; the next
reply's reconnect is refused. One refusal is not permanent on a reconnect: a server with no
room (``CapacityError``) for a conversation already under way (its server lost, the next one
full) is load, not access; the call is live and a later reply may be admitted, so that reply
fails with a rate-limit ``ErrorFrame`` and the next one tries again. At the first connection
the same refusal is admission control: the call is refused (permanent).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from pipecat.utils.errors import ErrorCategory

from moss_pipecat.client import RemoteEngine, RemoteSession
from moss_pipecat.client.remote_engine import server_urls
from moss_pipecat.errors import CapacityError, MossError, SessionClosedError
from moss_pipecat.protocol.errors import ServerUnavailableError, TLSVerificationError
from moss_pipecat.service import pipecat_compat as compat
from moss_pipecat.service.base import MossTTSServiceBase
from moss_pipecat.service.refusal import refuse
from moss_pipecat.service.user_audio import UserUtterance


class MossRemoteTTSService(MossTTSServiceBase):
    """MOSS-TTS-Realtime served by ``moss-pipecat serve`` (or its Ray Serve deployment).

    Args:
        url: the server's websocket URL (``ws://HOST:PORT/v1/ws``, ``wss://`` with TLS), or
            several servers' URLs (see ``RemoteEngine``); one no connection could use raises
            ``InvalidInputError`` here.
        token: bearer token, when the server requires one.
        ssl_ca_file, ssl_context: the CA to trust for a ``wss://`` server's certificate, or
            the whole TLS context (see ``RemoteEngine``).
        conversation_id: keeps the conversation across reconnects (default: one the server
            draws at the first connection, ``session.id`` from then on).
        resume_secret: to resume a conversation another process created (its service's or
            session's ``resume_secret``); a new conversation gets a random one, readable as
            ``resume_secret`` once the service has started (before the server was reached
            too: the first connection gives the conversation that one).
        resume_ticket: with ``resume_secret``, the conversation's last resume ticket (its
            service's or session's ``resume_ticket``, fresh after each turn): if the server
            lost the conversation and someone else made it anew under its id, the ticket
            takes the id back (``server.tickets``); not needed otherwise.
        remote: an existing ``RemoteEngine`` to share between pipelines (``url``/``token``
            are then ignored); its ``connect_timeout`` bounds how long the start waits for a
            server that does not answer (one attempt), its ``reconnect_timeout`` how long a
            reply does (retrying with backoff).
        **kwargs: ``MossTTSServiceBase`` and ``TTSService`` arguments.
            ``max_consecutive_zero_audio_contexts`` defaults to 0 here: replies that cannot
            reach the server (each reported) never write the service off, so it speaks again
            once the server is back; give a count for pipecat to write it off after that
            many silent replies (e.g. for a ``ServiceSwitcher`` to fail over).
    """

    def __init__(
        self,
        *,
        url: str | Sequence[str] | None = None,
        token: str | None = None,
        conversation_id: str | None = None,
        resume_secret: str | None = None,
        resume_ticket: str | None = None,
        remote: RemoteEngine | None = None,
        ssl_ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        if remote is None and url is None:
            raise ValueError("MossRemoteTTSService needs url= (or remote=)")
        if remote is None:
            server_urls(url)  # a URL no connection could use fails here, not at the first reply
        # A reply without audio is one whose failure the service reported with its cause; one
        # for a server not reached must not write the service off after pipecat's default 3.
        kwargs.setdefault("max_consecutive_zero_audio_contexts", 0)
        super().__init__(**kwargs)
        self._remote = remote
        self._owns_remote = remote is None
        self._url, self._token = url, token
        self._tls = {"ssl_ca_file": ssl_ca_file, "ssl_context": ssl_context}
        self._conversation_id = conversation_id
        self._resume_secret = resume_secret
        self._resume_ticket = resume_ticket

    @property
    def session(self) -> RemoteSession | None:
        """The conversation's session, from the start on (None before, after the end, or
        when refused); ``session.connected_once`` says whether a server was reached yet."""
        return self._session

    @property
    def resume_secret(self) -> str | None:
        """The conversation's resume secret: the one given, else (from the start on) the one
        the session drew, which the first connection gives the conversation, so it can be
        saved while the server is unreachable. None before the start, when none was given."""
        if self._session is not None and self._session.resume_secret is not None:
            return self._session.resume_secret
        return self._resume_secret

    @property
    def resume_ticket(self) -> str | None:
        """The conversation's last resume ticket (the server issues a fresh one when the
        session connects and after every change to the history; until the server was first
        reached, the one given, if any; None from a server without tickets). Save it with
        ``resume_secret``."""
        if self._session is not None and self._session.resume_ticket is not None:
            return self._session.resume_ticket
        return self._resume_ticket

    def _trace_attributes(self) -> dict[str, Any]:
        """The server's conversation and the session's reconnects when the reply's turn opened
        (a reply that had to reconnect shows one more than the reply before it)."""
        session = self._session
        if session is None:
            return {}
        return {
            "moss.conversation_id": session.id or "",
            "moss.reconnects": session.reconnects,
            "moss.history_lost": session.history_lost,
        }

    async def _open_session(self) -> RemoteSession:
        """The session, connected unless no server could be reached (one ErrorFrame says so;
        each reply connects first, ``_reach_engine``)."""
        if self._remote is None:
            self._remote = RemoteEngine(self._url, self._token, **self._tls)
        session = await self._remote.create_session(
            conversation_id=self._conversation_id,
            resume_secret=self._resume_secret,
            resume_ticket=self._resume_ticket,
            connect=False,
        )
        try:
            await self._open_link(session, retry=False)  # the StartFrame waits for this
        except BaseException as e:
            if not isinstance(e, ServerUnavailableError) or isinstance(e, TLSVerificationError):
                await session.close()  # will not heal: refused (``open_or_refuse``) or raised
                raise
            await self.push_error(
                f"MOSS TTS: the engine server is unreachable: {e}; each reply will try to "
                "connect again",
                exception=e,
                category=ErrorCategory.CONNECTIVITY,
            )
        return session

    async def _reach_engine(self) -> None:
        if not self.is_usable:  # refused: replies given before pipecat knew end silently
            raise SessionClosedError("the service was written off")
        try:
            await self._open_link(self._session)  # at once when connected; else with backoff
        except MossError as e:
            # Refused at a connection, the first or a reconnect: no retry heals it (pipecat's
            # permanent error), so it ends the service as a refused start does. Except a full
            # server refusing a conversation already under way (its server lost, the next one
            # full): that is load, not access, and the call is live; a later reply may be
            # admitted, so this reply fails as a rate limit and the service stays.
            if isinstance(e, CapacityError) and self._session.connected_once:
                raise
            if not await refuse(self, e):
                raise
            raise SessionClosedError("the service was written off") from e

    async def _open_link(self, session: RemoteSession, retry: bool = True) -> None:
        """Opens the session's link (``retry=False``: one attempt), telling pipecat's connection
        events (``on_connected`` when this made a connection, ``on_connection_error`` when
        none was made)."""
        before = (session.connected_once, session.reconnects)
        try:
            await session.open(retry=retry)
        except MossError as e:
            await compat.call_event(self, "on_connection_error", str(e))
            raise
        if (session.connected_once, session.reconnects) != before:
            await compat.call_event(self, "on_connected")

    async def _reply_failed(self, error: MossError, category: ErrorCategory | None = None) -> None:
        if isinstance(error, SessionClosedError) and not self.is_usable:
            return  # written off (``_reach_engine``): its one ErrorFrame is out
        if isinstance(error, ServerUnavailableError):
            category = ErrorCategory.CONNECTIVITY  # lost, or not reached: the next reply retries
        elif isinstance(error, CapacityError):
            category = ErrorCategory.RATE_LIMIT  # a reconnect the next server had no room for
        await super()._reply_failed(error, category)

    async def _after_close(self) -> None:
        if self._owns_remote and self._remote is not None:
            await self._remote.aclose()
            self._remote = None

    @property
    def _pcm_rate(self) -> int:
        audio = self._session.audio
        return audio.sample_rate if audio is not None else 24000

    async def _add_user_audio_turn(self, transcript: str, utterance: UserUtterance) -> None:
        await self._session.add_user_audio_turn(transcript, utterance.audio, utterance.sample_rate)

    async def _set_voice(self, voice: str | None) -> None:
        if not voice:
            await self._session.set_voice(None)
            return
        path = self._session_settings.voice_file(voice)

        def read() -> tuple[Any, int]:
            import soundfile as sf

            wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
            return wav.mean(axis=1), sr

        audio, sr = await asyncio.to_thread(read)
        await self._session.set_voice_audio(audio, sr)
