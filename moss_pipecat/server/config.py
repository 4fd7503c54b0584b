"""Engine-server settings: where it listens, who may talk to it, and how much."""

from __future__ import annotations

import os
import warnings
from dataclasses import Field, InitVar, dataclass, field, fields
from typing import Any

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.speech.frames import FRAME_SECONDS

TOKEN_ENV = "MOSS_PIPECAT_TOKEN"
RESUME_KEY_ENV = "MOSS_PIPECAT_RESUME_KEY"
MIN_RESUME_KEY_CHARS = 32
DEPRECATED_TEXT_CHARS = (
    "max_text_chars as the user transcript's limit is deprecated: use max_transcript_chars "
    "(max_text_chars is the reply text's, the engine's)"
)


def _limit(
    default: float,
    what: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    option: bool = True,
) -> Any:
    """One row of the limits table: default, what it limits (the CLI's help), its bound, and
    whether it is an option of ``moss-pipecat serve`` / the Ray app (``server.options``)."""
    meta = {"what": what, "ge": ge, "gt": gt, "option": option}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client may ask of the server: the one table of the server's limits,
    their defaults and bounds. ``moss-pipecat serve``'s flags and the options model the CLI and
    Ray's ``build_app`` share are made from it (``option_limits``).

    Attributes:
        max_connections: open websockets of authenticated clients (a valid ``Authorization:
            Bearer`` header with the upgrade, or no token configured); further upgrades get
            HTTP 503.
        max_pending_connections: open websockets that came without the header while a token
            is configured: they must authenticate in their ``hello`` within
            ``pending_hello_timeout_s`` and then move to ``max_connections``. A separate, small
            budget, so sockets that never say hello cannot lock authenticated clients out.
        max_idle_sockets: idle TCP sockets (``moss-pipecat serve``; under Ray Serve its proxy
            holds them): connected and no request in flight, i.e. not yet a whole request
            (e.g. the websocket upgrade), or kept alive between requests. Past it the one idle
            the longest is closed, so a flood of idle sockets cannot lock out health probes
            and clients, which send their request at once (``server.idle_sockets``).
        max_message_bytes: largest JSON control message.
        max_audio_seconds: longest user-turn or voice upload.
        min_sample_rate, max_sample_rate: accepted rates of PCM uploads.
        max_ids_per_message: token ids in one ``turn.ids`` / ``user_turn`` message.
        max_ids_per_turn: token ids one assistant turn may be sent (``turn.ids``; the reply's
            text is capped by the engine's ``max_text_chars``). A conversation holds no more
            than its history's rows after a turn ends (the engine drops a finished turn's unfed
            ids), so per conversation the cap is this plus the context.
        max_transcript_chars: characters of one user transcript (``user_turn.text``); the
            reply's text is the engine's ``max_text_chars``. ``max_text_chars=`` is accepted
            as its deprecated old name.
        handshake_timeout_s: time a new TCP connection has to send its whole HTTP request
            (the websocket upgrade), and a kept-alive one its next request after a response:
            a socket that sends nothing, or trickles a request, is closed.
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
        progress_interval_s: how long a turn may go without a frame before its pump checks
            its prefill: if the prefill fed more rows since, the client gets a
            ``turn.progress`` (its sign of life while a long prefill runs, e.g. a restored
            long call); a stuck engine feeds none, and the client's ``frame_timeout`` fails the
            turn. Keep it well below the clients' ``frame_timeout`` (30 s by default).
        takeover_wait_s: how long a connection that takes a conversation over (a resume, a
            reconnect) waits for the request its previous connection was handling (an
            upload's encode, an engine call) before it is told the conversation's history:
            what that request did is in it, and a client never sends it again for nothing.
            A request whose upload or encode outlasts the wait is not applied (its client
            sends it again on the new connection). Keep it below the clients'
            ``connect_timeout`` (5 s by default), which bounds their wait for ``ready``.
        resume_ticket_max_age_s: how long a resume ticket (``server.tickets``) is good after
            its server issued it (in ``ready`` and each ``history`` delta): a client that
            proves with one that it created a conversation takes it back from whoever made
            it anew after the conversation's server was lost.
    """

    max_connections: int = _limit(256, "authenticated websockets", ge=1)
    max_pending_connections: int = _limit(
        16, "websockets without an Authorization header, until their hello", ge=0
    )
    max_idle_sockets: int = _limit(
        512, "idle TCP sockets (no request in flight); past it the oldest is closed", ge=1
    )
    max_message_bytes: int = _limit(64 * 1024, "bytes of one JSON message", ge=1024)
    max_audio_seconds: float = _limit(60.0, "seconds of one audio upload", gt=0)
    min_sample_rate: int = _limit(8000, "lowest PCM upload rate", gt=0, option=False)
    max_sample_rate: int = _limit(48000, "highest PCM upload rate", gt=0, option=False)
    max_ids_per_message: int = _limit(8192, "token ids in one message", ge=1, option=False)
    max_ids_per_turn: int = _limit(20000, "token ids sent to one turn", ge=1, option=False)
    max_transcript_chars: int = _limit(20000, "characters of one user transcript", ge=1)
    handshake_timeout_s: float = _limit(
        10.0, "seconds a socket has for its whole HTTP request (e.g. the upgrade)", gt=0
    )
    hello_timeout_s: float = _limit(10.0, "seconds an authenticated socket has for hello", gt=0)
    pending_hello_timeout_s: float = _limit(
        3.0, "seconds a socket without the header has for hello", gt=0
    )
    upload_timeout_s: float = _limit(
        10.0, "seconds for an upload's binary frame", gt=0, option=False
    )
    idle_expiry_s: float = _limit(
        300.0, "seconds a conversation without a connection is kept", ge=0
    )
    write_timeout_s: float = _limit(
        10.0, "seconds a send to a client may wait before the client is dropped", gt=0
    )
    drain_timeout_s: float = _limit(
        20.0, "seconds a draining server lets turns in flight end after its goaway", ge=0
    )
    progress_interval_s: float = _limit(
        5.0, "seconds a turn goes without a frame before a turn.progress", gt=0
    )
    takeover_wait_s: float = _limit(
        3.0, "seconds a resume waits for the previous connection's request in hand", ge=0
    )
    resume_ticket_max_age_s: float = _limit(
        900.0, "seconds a resume ticket is good after it was issued", gt=0
    )
    max_text_chars: InitVar[int | None] = None  # deprecated: max_transcript_chars

    def __post_init__(self, max_text_chars: int | None) -> None:
        if max_text_chars is not None:
            warnings.warn(DEPRECATED_TEXT_CHARS, DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "max_transcript_chars", max_text_chars)
        for f in fields(self):
            value, ge, gt = getattr(self, f.name), f.metadata["ge"], f.metadata["gt"]
            if (ge is not None and not value >= ge) or (gt is not None and not value > gt):
                bound = f">= {ge}" if ge is not None else f"> {gt}"
                raise InvalidInputError(f"{f.name} must be {bound}, got {value!r}")
        if self.min_sample_rate > self.max_sample_rate:
            raise InvalidInputError("need min_sample_rate <= max_sample_rate")

    @property
    def max_pcm_bytes(self) -> int:
        return int(self.max_audio_seconds * self.max_sample_rate) * 2

    def max_code_bytes(self, rvq: int = 16) -> int:
        return int(self.max_audio_seconds * (1 / FRAME_SECONDS) + 1) * rvq * 2  # 12.5 frames/s

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
        resume_key: the key of the resume tickets (``server.tickets``), shared by every server
            of a deployment so that one server's tickets hold on the others and after a
            restart; None: one drawn per process (tickets then hold on this process only).
            Defaults to ``$MOSS_PIPECAT_RESUME_KEY``.
        limits: per-client bounds.
        ssl_certfile, ssl_keyfile: PEM certificate chain and private key: serve ``wss://``
            and ``https://`` (TLS) instead of plain ``ws://``.
        ping_interval_s, ping_timeout_s: websocket keepalive; a silent peer is dropped.
        reap_interval_s: how often expired conversations are closed.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    resume_key: str | None = field(
        default_factory=lambda: os.environ.get(RESUME_KEY_ENV) or None, repr=False
    )
    limits: ServerLimits = field(default_factory=ServerLimits)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    reap_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise InvalidInputError("TLS needs both ssl_certfile and ssl_keyfile")
        if self.resume_key is not None and len(self.resume_key) < MIN_RESUME_KEY_CHARS:
            raise InvalidInputError(
                f"the resume key needs at least {MIN_RESUME_KEY_CHARS} characters "
                "(e.g. openssl rand -base64 32)"
            )

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None


def option_limits() -> tuple[Field, ...]:
    """The rows of the limits table that are options of the CLI and the Ray app."""
    return tuple(f for f in fields(ServerLimits) if f.metadata["option"])
