"""Engine-server settings: where it listens, who may talk to it, and how much."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from moss_pipecat.errors import InvalidInputError

TOKEN_ENV = "MOSS_PIPECAT_TOKEN"


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client may ask of the server.

    Attributes:
        max_connections: open websockets of authenticated clients (a valid ``Authorization:
            Bearer`` header with the upgrade, or no token configured); further upgrades get
            HTTP 503.
        max_pending_connections: open websockets that came without the header while a token
            is configured: they must authenticate in their ``hello`` within
            ``pending_hello_timeout_s`` and then move to ``max_connections``. A separate, small
            budget, so sockets that never say hello cannot lock authenticated clients out.
        max_message_bytes: largest JSON control message.
        max_audio_seconds: longest user-turn or voice upload.
        min_sample_rate, max_sample_rate: accepted rates of PCM uploads.
        max_ids_per_message: token ids in one ``turn.ids`` / ``user_turn`` message.
        max_ids_per_turn: token ids one assistant turn may be sent (``turn.ids``; text pushed
            as ``turn.text`` is capped by the engine's ``max_text_chars``). A conversation holds
            no more than its history's rows after a turn ends (the engine drops a finished
            turn's unfed ids), so per conversation the cap is this plus the context.
        max_text_chars: characters of one user transcript (turn text is capped by the engine's
            ``max_text_chars`` too).
        handshake_timeout_s: time a new TCP connection has to send its whole HTTP request
            (the websocket upgrade): a socket that sends nothing, or trickles a request, is
            closed.
        hello_timeout_s: time an authenticated connection has to send ``hello``.
        pending_hello_timeout_s: time a connection without the header has to send ``hello``.
        upload_timeout_s: time between an upload's JSON header and its binary frame.
        idle_expiry_s: how long a conversation without a connection keeps its session.
        write_timeout_s: the longest any one send to a client may wait (its socket buffers
            full because it reads nothing); past it the connection is dropped, and its turn
            ends as if the client had disconnected.
        drain_timeout_s: how long a draining server (SIGTERM, a Ray replica shutdown) lets
            turns in flight run after telling its clients to move (``goaway``); then it cuts
            them at the frames sent and exits. Keep it below the orchestrator's kill grace
            period (Kubernetes: 30 s).
    """

    max_connections: int = 256
    max_pending_connections: int = 16
    max_message_bytes: int = 64 * 1024
    max_audio_seconds: float = 60.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 48000
    max_ids_per_message: int = 8192
    max_ids_per_turn: int = 20000
    max_text_chars: int = 20000
    handshake_timeout_s: float = 10.0
    hello_timeout_s: float = 10.0
    pending_hello_timeout_s: float = 3.0
    upload_timeout_s: float = 10.0
    idle_expiry_s: float = 300.0
    write_timeout_s: float = 10.0
    drain_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_message_bytes < 1024:
            raise InvalidInputError("max_connections >= 1 and max_message_bytes >= 1024 needed")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise InvalidInputError("need 0 < min_sample_rate <= max_sample_rate")
        if self.max_audio_seconds <= 0 or self.idle_expiry_s < 0:
            raise InvalidInputError("max_audio_seconds must be > 0 and idle_expiry_s >= 0")
        if not self.write_timeout_s > 0:
            raise InvalidInputError("write_timeout_s must be > 0")
        if self.drain_timeout_s < 0:
            raise InvalidInputError("drain_timeout_s must be >= 0")
        if self.max_pending_connections < 0:
            raise InvalidInputError("max_pending_connections must be >= 0")
        if min(self.hello_timeout_s, self.pending_hello_timeout_s, self.handshake_timeout_s) <= 0:
            raise InvalidInputError("handshake and hello timeouts must be > 0")

    @property
    def max_pcm_bytes(self) -> int:
        return int(self.max_audio_seconds * self.max_sample_rate) * 2

    def max_code_bytes(self, rvq: int = 16) -> int:
        return int(self.max_audio_seconds * 12.5 + 1) * rvq * 2

    @property
    def max_frame_bytes(self) -> int:
        """Hard cap of the transport: larger frames close the connection (code 1009)."""
        return max(self.max_message_bytes, self.max_pcm_bytes, self.max_code_bytes()) + 4096


@dataclass(frozen=True)
class ServerConfig:
    """How the websocket server runs.

    Attributes:
        host: bind address; loopback by default, so exposing the server is a choice.
        port: TCP port (0 picks a free one).
        token: bearer token clients must present (header or ``hello``); None = no auth.
            Defaults to ``$MOSS_PIPECAT_TOKEN``.
        limits: per-client bounds.
        ssl_certfile, ssl_keyfile: PEM certificate chain and private key: serve ``wss://``
            and ``https://`` (TLS) instead of plain ``ws://``.
        ping_interval_s, ping_timeout_s: websocket keepalive; a silent peer is dropped.
        reap_interval_s: how often expired conversations are closed.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    limits: ServerLimits = field(default_factory=ServerLimits)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    reap_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise InvalidInputError("TLS needs both ssl_certfile and ssl_keyfile")

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None
