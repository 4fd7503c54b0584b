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
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from moss_pipecat.client import RemoteEngine, RemoteSession
from moss_pipecat.service.base import MossTTSServiceBase
from moss_pipecat.service.user_audio import UserUtterance


class MossRemoteTTSService(MossTTSServiceBase):
    """MOSS-TTS-Realtime served by ``moss-pipecat serve`` (or its Ray Serve deployment).

    Args:
        url: the server's websocket URL (``ws://HOST:PORT/v1/ws``, ``wss://`` with TLS), or
            several servers' URLs (see ``RemoteEngine``).
        token: bearer token, when the server requires one.
        ssl_ca_file, ssl_context: the CA to trust for a ``wss://`` server's certificate, or
            the whole TLS context (see ``RemoteEngine``).
        conversation_id: keeps the conversation across reconnects (default: a random one).
        resume_secret: to resume a conversation another process created (its service's or
            session's ``resume_secret``); a new conversation gets a random one, readable as
            ``resume_secret`` once the service has started.
        resume_ticket: with ``resume_secret``, the conversation's last resume ticket (its
            service's or session's ``resume_ticket``, fresh after each turn): if the server
            lost the conversation and someone else made it anew under its id, the ticket
            takes the id back (``server.tickets``); not needed otherwise.
        remote: an existing ``RemoteEngine`` to share between pipelines (``url``/``token``
            are then ignored).
        **kwargs: ``MossTTSServiceBase`` and ``TTSService`` arguments.
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
        return self._session

    @property
    def resume_secret(self) -> str | None:
        """The conversation's resume secret (None before the session started)."""
        if self._session is not None and self._session.resume_secret is not None:
            return self._session.resume_secret
        return self._resume_secret

    @property
    def resume_ticket(self) -> str | None:
        """The conversation's last resume ticket (the server issues a fresh one when the
        session connects and after every change to the history; None before the service
        started, or from a server without tickets). Save it with ``resume_secret``."""
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
        if self._remote is None:
            self._remote = RemoteEngine(self._url, self._token, **self._tls)
        return await self._remote.create_session(
            conversation_id=self._conversation_id,
            resume_secret=self._resume_secret,
            resume_ticket=self._resume_ticket,
        )

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
        path = self._voice_file(voice)

        def read() -> tuple[Any, int]:
            import soundfile as sf

            wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
            return wav.mean(axis=1), sr

        audio, sr = await asyncio.to_thread(read)
        await self._session.set_voice_audio(audio, sr)
