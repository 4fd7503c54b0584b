"""``RemoteEngine``: connects sessions to an engine server (TLS, token, handshake, and
reconnecting with exponential backoff, over one or several server URLs)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import socket
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from moss_pipecat import protocol as P
from moss_pipecat.client.link import Link
from moss_pipecat.client.remote_session import RemoteSession
from moss_pipecat.errors import CapacityError, InvalidInputError, MossError
from moss_pipecat.protocol.errors import (
    ForbiddenError,
    ProtocolError,
    ServerUnavailableError,
    UnauthorizedError,
)
from moss_pipecat.speech.sampling import SamplingParams


@functools.cache
def _no_proxy() -> dict[str, Any]:
    """``connect``'s arguments for a direct connection: websockets >= 15 routes through the
    proxy HTTP(S)_PROXY names unless told ``proxy=None``; older ones (pipecat allows >= 13.1)
    never use a proxy and take no such argument."""
    from websockets.asyncio.client import connect

    return {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


class RemoteEngine:
    """Connects sessions to an engine server.

    Args:
        url: ``ws://host:port/v1/ws`` (a bare ``ws://host:port`` gets the path added), or
            ``wss://`` for a server with TLS; or several such URLs (servers of one
            deployment): a session reconnects to the URL it was on, goes to the next one when
            its server drains (``goaway``), and tries them in turn while none answers. One URL
            behind a load balancer (or Ray Serve) works the same way. A URL no connection
            could use (another scheme, no host, a bad port) raises ``InvalidInputError``.
        token: bearer token (default: none), sent as ``Authorization: Bearer`` with the
            websocket upgrade.
        connect_timeout: seconds for one connection attempt (TCP + upgrade, then again for
            the hello's answer); also what a ``MossRemoteTTSService`` start waits at most for
            a server that does not answer (it makes one attempt, no retries).
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
        journal: keep each conversation's history as the server reports it and restore it
            to a server that lost the conversation (a restart, a lost replica); False: such
            a conversation starts afresh with its voice (``history_lost``).
    """

    def __init__(
        self,
        url: str | Sequence[str],
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
        journal: bool = True,
    ) -> None:
        self.urls = server_urls(url)
        self.url = self.urls[0]
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
        self.journal = journal
        schemes = {u.split("://", 1)[0].lower() for u in self.urls}
        if len(schemes) > 1:
            raise InvalidInputError(f"mixed ws:// and wss:// URLs: {self.urls}")
        self._ssl = _client_ssl(self.url, ssl_ca_file, ssl_context)
        self._sessions: set[RemoteSession] = set()

    async def create_session(
        self,
        *,
        conversation_id: str | None = None,
        voice: Any | None = None,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        resume_secret: str | None = None,
        resume_ticket: str | None = None,
        connect: bool = True,
    ) -> RemoteSession:
        """Opens (or, with a known ``conversation_id``, resumes) a conversation.

        Args:
            conversation_id: id to resume or create (default: the server picks one).
            voice: reference voice as codec frames [R, rvq] (applied unless resumed).
            sampling, seed: for a new conversation (a resumed one keeps its own).
            resume_secret: the conversation's resume secret (``RemoteSession.resume_secret``
                of the session that created it), needed to resume a conversation that exists;
                for a new conversation, the secret to give it (default: a random one).
            resume_ticket: the conversation's resume ticket (``RemoteSession.resume_ticket``
                of the session that created it), which takes it back from a client that made
                it anew after its server was lost; none needed otherwise.
            connect: False: return the session unconnected (no ``voice`` then); its first call
                connects, with the backoff of every reconnect, and makes or resumes the
                conversation with this id and secret, which hold from now on
                (``RemoteSession.connected_once`` says when that happened).

        Raises:
            ForbiddenError: the conversation exists and ``resume_secret`` is missing or wrong.
        """
        session = RemoteSession(self, conversation_id, sampling, seed, resume_secret, resume_ticket)
        if not connect:
            if voice is not None:
                raise InvalidInputError("voice= needs connect=True (or set_voice once created)")
            self._sessions.add(session)
            return session
        await session.open()
        if voice is not None and not session.resumed:
            try:
                await session.set_voice(voice)
            except BaseException:
                await session.close()  # a refused voice leaves no conversation behind
                raise
        self._sessions.add(session)
        return session

    def discard(self, session: RemoteSession) -> None:
        """Forgets a closed session (``RemoteSession.close`` calls it)."""
        self._sessions.discard(session)

    async def aclose(self) -> None:
        """Closes every session opened through this engine."""
        for s in list(self._sessions):
            await s.close()

    async def connect(
        self, session: RemoteSession, after: Link | None = None, *, retry: bool = True
    ) -> Link:
        """Opens a connection for ``session`` with exponential backoff (``RemoteSession.open``
        calls it), trying the URLs in turn: first the one of the link ``after`` (the one the
        session lost), or the next one when that server asked its clients to move.
        ``retry=False``: one attempt at each URL, no backoff (a start that must not wait).

        What retrying may heal is retried until ``reconnect_timeout``, then raised as
        ``ServerUnavailableError`` naming the URL(s) and why the last attempt failed (``_why``):
        a host name that does not resolve (DNS: a name not yet registered heals), a refused
        connection (no server listening yet), no answer in ``connect_timeout``, a TLS handshake
        that failed (e.g. plain ws on the port), an upgrade the server refused (HTTP 503: full
        or draining), and a hello refused for its ``history_at`` (a server older than the
        field: said again without it). What cannot heal is raised at once: the server's
        refusals (token, resume credentials, capacity, any other bad hello) and a certificate
        that fails verification (``TLSVerificationError``: the client needs the server's CA)."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = self.backoff_initial
        attempt = 0
        at = self.urls.index(after.url) if after is not None and after.url in self.urls else 0
        if after is not None and after.moved is not None:
            at += 1
        while True:
            url = self.urls[(at + attempt) % len(self.urls)]
            attempt += 1
            try:
                return await self._connect_once(session, url)
            except (
                UnauthorizedError,
                ForbiddenError,
                ProtocolError,
                CapacityError,
                InvalidInputError,
            ):
                raise  # retrying cannot help
            except ssl.SSLCertVerificationError as e:
                from moss_pipecat.protocol.errors import TLSVerificationError

                raise TLSVerificationError(
                    f"the TLS certificate of {self.url} failed verification "
                    f"({e.verify_message}): give RemoteEngine the server's CA (ssl_ca_file=)"
                ) from None
            except (OSError, TimeoutError, ServerUnavailableError, MossError) as e:
                last = e
            except Exception as e:  # websockets' handshake errors
                last = _refusal(e, url)
                if _http_status(e) == 401:
                    raise UnauthorizedError("the server refused the token") from None
            if (not retry and attempt == len(self.urls)) or time.monotonic() + delay > deadline:
                where = self.url if len(self.urls) == 1 else ", ".join(self.urls)
                raise ServerUnavailableError(
                    f"cannot reach {where} after {attempt} attempt{'s' * (attempt > 1)}: "
                    f"{_why(last, self.connect_timeout)}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _connect_once(self, session: RemoteSession, url: str) -> Link:
        from websockets.asyncio.client import connect

        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if session.id is not None:
            headers[P.SESSION_HEADER] = session.id  # Ray Serve routes a conversation by it
        ws = await connect(
            url,
            additional_headers=headers,
            open_timeout=self.connect_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=2,
            max_size=self.max_message_bytes,
            compression=None,
            ssl=self._ssl,
            **_no_proxy(),
        )
        try:
            hello = session.hello()
            await asyncio.wait_for(ws.send(hello.to_json()), self.connect_timeout)
            reply = P.parse_server_message(await asyncio.wait_for(ws.recv(), self.connect_timeout))
            if isinstance(reply, P.ErrorReply):
                if reply.code == "bad_message" and session.refused_history_at(hello, reply.message):
                    raise ServerUnavailableError(f"{url} refused history_at: {reply.message}")
                raise reply.to_exception()
            if not isinstance(reply, P.Ready):
                raise ProtocolError(f"expected ready, got {getattr(reply, 'type', None)!r}")
            if reply.v != P.PROTOCOL_VERSION:  # its messages would mean other things
                raise ProtocolError(
                    f"{url} speaks protocol v{reply.v}, this client v{P.PROTOCOL_VERSION}"
                )
        except BaseException as e:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
            if isinstance(e, MossError | asyncio.CancelledError):
                raise
            raise ServerUnavailableError(f"handshake with {url} failed: {e!r}") from None
        session.take_ready(reply)
        return Link(
            ws,
            reply,
            url,
            journal=session.journal if self.journal else None,
            on_history=session.take_history,
        )


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


def server_urls(url: str | Sequence[str]) -> list[str]:
    """The URLs a client dials for ``url`` (one or several): each ``ws://`` or ``wss://`` with a
    host, a bare ``scheme://host[:port]`` given the endpoint's path. Anything else raises
    ``InvalidInputError`` naming it, before any connection is tried."""
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise InvalidInputError("a server URL is needed")
    out = []
    for u in urls:
        if not isinstance(u, str):
            raise InvalidInputError(f"a server URL is a string, got {type(u).__name__} {u!r}")
        parts = urllib.parse.urlsplit(u)
        if parts.scheme.lower() not in ("ws", "wss"):
            raise InvalidInputError(f"a server URL is ws://host:port or wss://host:port, got {u!r}")
        try:
            parts.port  # noqa: B018 (parsing it is the check)
        except ValueError:
            raise InvalidInputError(f"a server URL with a bad port: {u!r}") from None
        if not parts.hostname:
            raise InvalidInputError(f"a server URL with no host: {u!r}")
        out.append(u.rstrip("/") + P.WS_PATH if parts.path in ("", "/") else u)
    return out


def _refusal(e: Exception, url: str) -> Exception:
    """A refused upgrade with the server's reason (e.g. 503 ``draining``); else ``e``."""
    status = _http_status(e)
    if status is None:
        return e
    body = getattr(getattr(e, "response", None), "body", b"") or b""
    reason = body.decode("utf-8", "replace").strip()[:200]
    return ServerUnavailableError(f"{url} refused the connection: HTTP {status} {reason}")


def _why(e: BaseException, connect_timeout: float) -> str:
    """Why one connection attempt failed, in words (DNS, refused, timed out, TLS, ...)."""
    if isinstance(e, socket.gaierror):
        return f"the host name does not resolve (DNS: {e.strerror or e})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (no server is listening there)"
    if isinstance(e, TimeoutError):
        return f"no answer within connect_timeout ({connect_timeout} s)"
    if isinstance(e, ssl.SSLError):
        return f"the TLS handshake failed ({e.reason or e})"
    if isinstance(e, OSError):
        return str(e) or repr(e)  # e.g. network unreachable, several addresses refused
    if isinstance(e, MossError):
        return str(e)  # e.g. the upgrade refused (HTTP 503 draining), a handshake cut short
    return repr(e)


def _http_status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)
