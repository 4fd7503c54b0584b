"""Wire protocol of the engine server, version 1.

One websocket per conversation, at ``ws://HOST:PORT/v1/ws``. Control messages are JSON text
frames ``{"type": ..., ...}``; audio and uploads are binary frames. Nothing is ever pickled.

Connection
    The client may send ``Authorization: Bearer TOKEN`` (and, behind Ray Serve, the routing
    header ``x-session-id: CONVERSATION_ID``) with the upgrade request. Its first message must
    be ``hello`` (within ``hello_timeout_s``); the server answers ``ready`` or ``error`` and
    closes. A conversation outlives its connection: the server keeps its engine session (and
    with it the acoustic history in the KV cache) for ``idle_expiry_s`` after the last
    connection left, so a client that reconnects with the same ``conversation_id`` gets its
    history back (``ready.resumed`` says whether it did). A second connection for a
    conversation replaces the first (which is closed with code 4409).

    A conversation id is not a credential: ``ready`` gives the creating client the
    conversation's ``resume_secret`` (random, per conversation), and a ``hello`` for a
    conversation that exists must carry it (compared in constant time). Without it, or with a
    wrong one, the hello is refused (``error`` code ``forbidden``, close 4403) and the live
    connection and the conversation are left as they were. A client may propose the secret
    of a conversation it creates (``resume_secret`` in that hello; 22 to 256 URL-safe
    characters, i.e. at least 128 bits drawn at random): then a retry of a handshake whose
    ``ready`` was lost still holds the conversation's secret. Without one the server draws it.

Client -> server (JSON)
    ``hello``       v, conversation_id?, resume_secret?, token?, sampling?, seed?
                    (sampling/seed apply to a new conversation only; resume_secret is
                    required when conversation_id names a live conversation)
    ``turn.start``  req, max_frames?                 -> ``turn.started`` {req, turn_id}
    ``turn.text``   turn_id, text                    (no reply; a failure ends the turn)
    ``turn.ids``    turn_id, ids, text?              (token ids instead of text)
    ``turn.end``    turn_id                          (text ended)
    ``interrupt``   req, heard_frames                -> ``result`` {req, summary | null}
    ``user_turn``   req, text | text_ids, format ("pcm16" | "codes"), sample_rate (pcm16),
                    bytes                            + one binary frame -> ``result``
    ``voice``       req, format ("pcm16" | "codes" | "none"), sample_rate, bytes
                    + one binary frame unless "none" -> ``result``
    ``settings``    req, sampling?, seed?, limits? {context_budget?, lookahead_s?,
                    unlimited_lookahead?}            -> ``result``
    ``reset``       req                              -> ``result``
    ``snapshot``    req                              -> ``result`` {snapshot}
    ``close``       req                              -> ``result``; ends the conversation

    Binary uploads follow their JSON header immediately: ``pcm16`` is mono little-endian int16
    at ``sample_rate``; ``codes`` is little-endian uint16 frames, row-major ``[frames, 16]``.

Server -> client
    ``ready``        v, conversation_id, resumed, resume_secret, server_id, limits {...},
                     audio {...}
    ``turn.started`` req, turn_id
    audio (binary)   ``AUDIO_HEADER`` = magic ``b"MSA1"``, turn_id u32, index u32, n u16,
                     then n codes u16, then the frame's PCM (int16 LE, empty without a codec);
                     all little-endian. One frame (80 ms) per message, sent as generated.
    ``turn.words``   turn_id, index, words [[word, seconds], ...]: the word times the engine
                     placed with frame ``index``; sent just before that frame
    ``turn.end``     turn_id, summary {turn_id, stop, audio_frames, heard_frames, text_ids,
                     text, spoken_text, words, ttfa_s, error}
    ``result``       req, plus what the request returns (``summary``, ``snapshot``)
    ``error``        code, message, req? (the request it answers), turn_id?, fatal (the
                     server closes the connection after a fatal error)

Both directions are pydantic models (``ClientMessage``, ``ServerMessage``: one discriminated
union on ``type`` each); a message is sent as built (``to_json``): the fields given when it was
made, null included, and ``type``. Error codes and exception types map both ways through one
table, ``ERROR_CODES``.

Close codes: 4400 protocol violation before ``ready``, 4401 unauthorized, 4403 forbidden
(a resume without the conversation's secret), 4408 no hello in time, 4409 replaced by a
newer connection for the conversation, 1001 server going away, 1009 frame over the hard size
cap.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    MossError,
    SessionClosedError,
    TurnStateError,
    UnknownSessionError,
)
from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.server.errors import (
    ForbiddenError,
    ProtocolError,
    RemoteError,
    ServerUnavailableError,
    UnauthorizedError,
)

PROTOCOL_VERSION = 1
WS_PATH = "/v1/ws"
SESSION_HEADER = "x-session-id"  # Ray Serve's session-affinity header (ConsistentHashRouter)
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# ``secrets.token_urlsafe(16..192)``: a proposed secret has at least 128 bits if drawn at random
RESUME_SECRET_PATTERN = r"^[A-Za-z0-9_-]{22,256}$"
MAX_TOP_K = 4096  # above the audio vocabulary (1027): a larger top_k filters nothing more
MAX_REPETITION_WINDOW = 4096  # the engine's own cap (``repetition_window_max``) is lower

# ---- close codes ---------------------------------------------------------------------------
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_SUPERSEDED = 4409
CLOSE_GOING_AWAY = 1001

# ---- binary audio frames ---------------------------------------------------------------------
AUDIO_MAGIC = b"MSA1"
AUDIO_HEADER = struct.Struct("<4sIIH")  # magic, turn_id, index, number of codes


def pack_audio(turn_id: int, index: int, codes: Sequence[int], pcm: bytes | None) -> bytes:
    """One generated frame as a binary message (header, uint16 codes, PCM)."""
    n = len(codes)
    return (
        AUDIO_HEADER.pack(AUDIO_MAGIC, turn_id, index, n)
        + struct.pack(f"<{n}H", *codes)
        + (pcm or b"")
    )


def unpack_audio(data: bytes) -> tuple[int, int, list[int], bytes | None]:
    """Inverse of ``pack_audio``: (turn_id, index, codes, pcm or None).

    Raises:
        ProtocolError: not an audio frame.
    """
    if len(data) < AUDIO_HEADER.size:
        raise ProtocolError("binary message too short for an audio frame")
    magic, turn_id, index, n = AUDIO_HEADER.unpack_from(data)
    end = AUDIO_HEADER.size + 2 * n
    if magic != AUDIO_MAGIC or len(data) < end:
        raise ProtocolError("not an audio frame")
    codes = list(struct.unpack_from(f"<{n}H", data, AUDIO_HEADER.size))
    pcm = data[end:]
    return turn_id, index, codes, (pcm or None)


# ---- client -> server messages ---------------------------------------------------------------
class _Wire(BaseModel):
    """A message of either direction, sent as built."""

    def to_json(self) -> str:
        """Compact JSON: ``type`` and the fields given when the message was made (null
        included); fields left to their defaults are not sent (they mean the same)."""
        body = self.model_dump(mode="json", exclude_unset=True)
        return dumps({"type": self.type, **body})  # type: ignore[attr-defined]


class _Msg(_Wire):
    """Client -> server: strict, unknown fields refused (everything is checked at the edge)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Finite = Field(allow_inf_nan=False)


_DEFAULTS = SamplingParams()


class Sampling(_Msg):
    """``SamplingParams`` on the wire (missing fields take the engine defaults).

    Ranges are checked here, at the edge: anything past them is a ``bad_message`` (finer
    checks, e.g. ``temperature > 0`` unless greedy, are the engine's ``invalid_input``)."""

    # Defaults: the engine's own (SamplingParams), never restated here.
    temperature: Annotated[float, Finite, Field(ge=0, le=100)] = _DEFAULTS.temperature
    # top_k 0: off; past the vocabulary: off.
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] = _DEFAULTS.top_k
    top_p: Annotated[float, Finite, Field(gt=0, le=1)] = _DEFAULTS.top_p
    repetition_penalty: Annotated[float, Finite, Field(gt=0, le=100)] = _DEFAULTS.repetition_penalty
    repetition_window: Annotated[int, Field(ge=0, le=MAX_REPETITION_WINDOW)] = (
        _DEFAULTS.repetition_window
    )
    greedy: bool = _DEFAULTS.greedy

    def to_params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump())

    @classmethod
    def of(cls, params: SamplingParams) -> Sampling:
        return cls(**{name: getattr(params, name) for name in cls.model_fields})


ReqId = Annotated[int, Field(ge=0, lt=2**53)]
TurnId = Annotated[int, Field(ge=0, lt=2**32)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    v: int = PROTOCOL_VERSION
    conversation_id: Annotated[str, Field(pattern=CONVERSATION_ID_PATTERN)] | None = None
    resume_secret: Annotated[str, Field(pattern=RESUME_SECRET_PATTERN)] | None = None
    token: str | None = None
    sampling: Sampling | None = None
    seed: Seed | None = None


class TurnStart(_Msg):
    type: Literal["turn.start"] = "turn.start"
    req: ReqId
    max_frames: Annotated[int, Field(ge=1)] | None = None
    min_frames: Annotated[int, Field(ge=0, lt=2**31)] | None = None  # None: the engine's
    eos_after_text: bool | None = None  # None: the engine's


class TurnText(_Msg):
    type: Literal["turn.text"] = "turn.text"
    turn_id: TurnId
    text: str


class TurnIds(_Msg):
    type: Literal["turn.ids"] = "turn.ids"
    turn_id: TurnId
    ids: list[Annotated[int, Field(ge=0, lt=2**31)]]
    text: str = ""


class TurnEnd(_Msg):
    type: Literal["turn.end"] = "turn.end"
    turn_id: TurnId


class Interrupt(_Msg):
    type: Literal["interrupt"] = "interrupt"
    req: ReqId
    heard_frames: Annotated[int, Field(ge=0, lt=2**31)]


class UserTurn(_Msg):
    type: Literal["user_turn"] = "user_turn"
    req: ReqId
    text: str | None = None
    text_ids: list[Annotated[int, Field(ge=0, lt=2**31)]] | None = None
    format: Literal["pcm16", "codes"]
    sample_rate: Annotated[int, Field(ge=1)] | None = None
    bytes: Annotated[int, Field(ge=1)]


class Voice(_Msg):
    type: Literal["voice"] = "voice"
    req: ReqId
    format: Literal["pcm16", "codes", "none"]
    sample_rate: Annotated[int, Field(ge=1)] | None = None
    bytes: Annotated[int, Field(ge=0)] = 0


class Limits(_Msg):
    """Per-conversation overrides of the engine's context budget and lookahead."""

    context_budget: Annotated[int, Field(gt=0, le=1 << 20)] | None = None
    lookahead_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    unlimited_lookahead: bool = False


class Settings(_Msg):
    type: Literal["settings"] = "settings"
    req: ReqId
    sampling: Sampling | None = None
    seed: Seed | None = None
    limits: Limits | None = None


class Reset(_Msg):
    type: Literal["reset"] = "reset"
    req: ReqId


class Snapshot(_Msg):
    type: Literal["snapshot"] = "snapshot"
    req: ReqId


class Close(_Msg):
    type: Literal["close"] = "close"
    req: ReqId


ClientMessage = Annotated[
    Hello
    | TurnStart
    | TurnText
    | TurnIds
    | TurnEnd
    | Interrupt
    | UserTurn
    | Voice
    | Settings
    | Reset
    | Snapshot
    | Close,
    Field(discriminator="type"),
]
_CLIENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientMessage)


def _by_type(union: Any) -> dict[str, type[_Wire]]:
    """``type`` value -> model, for the members of a discriminated union."""
    members = get_args(get_args(union)[0])  # Annotated[A | B | ..., ...] -> (A, B, ...)
    return {m.model_fields["type"].default: m for m in members}


CLIENT_MESSAGES: dict[str, type[_Msg]] = _by_type(ClientMessage)


class MessageError(Exception):
    """A client message that cannot be handled; carries the error reply's code."""

    def __init__(self, code: str, message: str, req: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.req = req


def _problems(e: ValidationError, skip: int = 0) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'][skip:])}: {err['msg']}" for err in e.errors()[:5]
    )


def parse_client_message(text: str | bytes) -> _Msg:
    """Parses and validates one JSON control message (a ``ClientMessage``).

    Raises:
        MessageError: code ``bad_message`` (not JSON, not an object, invalid fields) or
            ``unknown_type``; ``req`` is set when the message had a usable one.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MessageError("bad_message", f"not valid JSON: {e}") from None
    if "\\u" in (text if isinstance(text, str) else text.decode("utf-8", "replace")):
        _check_unicode(data)
    if not isinstance(data, dict):
        raise MessageError("bad_message", "a message must be a JSON object")
    req = data.get("req")
    req = req if isinstance(req, int) and not isinstance(req, bool) and req >= 0 else None
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGES:
        raise MessageError("unknown_type", f"unknown message type {kind!r}", req)
    try:
        return _CLIENT_ADAPTER.validate_python(data)
    except ValidationError as e:  # locations start with the union's tag: dropped
        raise MessageError(
            "bad_message", f"invalid {kind!r} message: {_problems(e, skip=1)}", req
        ) from None


def _check_unicode(data: Any) -> None:
    """JSON ``\\uD800``-style escapes can make strings that are not Unicode (a lone surrogate):
    nothing could encode them (the tokenizer, a reply that quotes them), so they are refused."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        req = data.get("req") if isinstance(data, dict) else None
        req = req if isinstance(req, int) and not isinstance(req, bool) and req >= 0 else None
        raise MessageError(
            "bad_message", "a string holds a lone surrogate (\\ud800-\\udfff): not Unicode", req
        ) from None


# ---- errors on the wire ----------------------------------------------------------------------
# The one table of error codes. Code -> exception type is what a client raises for an ``error``
# reply (the same types the local engine raises); exception -> code is the first code listed
# for the nearest class in the exception's MRO ("internal" if none is listed).
ERROR_CODES: tuple[tuple[str, type[MossError]], ...] = (
    ("bad_message", ProtocolError),
    ("unknown_type", ProtocolError),
    ("unsupported_version", ProtocolError),
    ("invalid_input", InvalidInputError),
    ("too_large", InvalidInputError),
    ("capacity", CapacityError),
    ("turn_state", TurnStateError),
    ("session_closed", SessionClosedError),
    ("unknown_session", UnknownSessionError),
    ("unauthorized", UnauthorizedError),
    ("forbidden", ForbiddenError),
    ("unavailable", ServerUnavailableError),
    ("superseded", ServerUnavailableError),
    ("internal", RemoteError),
)
_TYPE_OF_CODE: dict[str, type[MossError]] = dict(ERROR_CODES)
_CODE_OF_TYPE: dict[type, str] = {}
for _code, _cls in ERROR_CODES:
    _CODE_OF_TYPE.setdefault(_cls, _code)


def error_code(exc: BaseException) -> str:
    """The wire code for an exception raised while handling a request."""
    for cls in type(exc).__mro__:
        code = _CODE_OF_TYPE.get(cls)
        if code is not None:
            return code
    return "internal"


def error_from_wire(code: str, message: str) -> MossError:
    """The exception a client raises for an ``error`` reply (unknown codes: ``RemoteError``)."""
    return _TYPE_OF_CODE.get(code, RemoteError)(message)


# ---- server -> client messages ---------------------------------------------------------------
class _Out(_Wire):
    """Server -> client: a client ignores fields it does not know (a newer server's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


Words = list[tuple[str, float]]


class AudioInfo(_Out):
    """What the audio frames carry."""

    sample_rate: int
    frame_samples: int
    rvq: int
    pcm: bool  # frames carry PCM (the server has a codec)


class ReadyLimits(_Out):
    """The server's limits a client should respect before sending (None: not told)."""

    max_message_bytes: int | None = None
    max_audio_seconds: float | None = None
    max_text_chars: int | None = None
    max_ids_per_message: int | None = None
    max_ids_per_turn: int | None = None
    idle_expiry_s: float | None = None


class Ready(_Out):
    type: Literal["ready"] = "ready"
    v: int
    conversation_id: str
    resumed: bool
    resume_secret: str | None = None  # the conversation's: needed to resume it
    server_id: str | None = None
    audio: AudioInfo
    limits: ReadyLimits


class TurnStarted(_Out):
    type: Literal["turn.started"] = "turn.started"
    req: int
    turn_id: int


class TurnWords(_Out):
    """The word times the engine placed with frame ``index``; sent just before that frame."""

    type: Literal["turn.words"] = "turn.words"
    turn_id: int
    index: int
    words: Words

    @classmethod
    def of(cls, chunk: AudioChunk) -> TurnWords:
        return cls(turn_id=chunk.turn_id, index=chunk.index, words=list(chunk.words))


class WireSummary(_Out):
    """``TurnSummary`` on the wire; ``error`` is [code, message]."""

    turn_id: int
    stop: str
    audio_frames: int = 0
    heard_frames: int = 0
    text_ids: list[int] = []
    text: str = ""
    spoken_text: str = ""
    words: Words = []
    ttfa_s: float | None = None
    error: tuple[str, str] | None = None

    @classmethod
    def of(cls, s: TurnSummary) -> WireSummary:
        return cls(
            turn_id=s.turn_id,
            stop=s.stop,
            audio_frames=s.audio_frames,
            heard_frames=s.heard_frames,
            text_ids=list(s.text_ids),
            text=s.text,
            spoken_text=s.spoken_text,
            words=list(s.words),
            ttfa_s=s.ttfa_s,
            error=None if s.error is None else (error_code(s.error), str(s.error)),
        )

    def to_summary(self) -> TurnSummary:
        return TurnSummary(
            turn_id=self.turn_id,
            stop=self.stop,
            audio_frames=self.audio_frames,
            heard_frames=self.heard_frames,
            text_ids=list(self.text_ids),
            text=self.text,
            spoken_text=self.spoken_text,
            words=list(self.words),
            ttfa_s=self.ttfa_s,
            error=None if self.error is None else error_from_wire(*self.error),
        )


class TurnEnded(_Out):
    type: Literal["turn.end"] = "turn.end"
    turn_id: int
    summary: WireSummary


class WireSnapshot(_Out):
    """The engine's snapshot of a conversation (for tests and debugging); keys the engine adds
    travel too (as JSON values)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    rows: list[list[int]]  # [N, 17]
    turns: list[tuple[str, int]]  # (role, text ids)
    phase: str
    sampling: Sampling
    cache_len: int | None = None
    device_cache_len: int | None = None
    pool_capacity: int | None = None
    system_rows: int | None = None
    slot: int | None = None
    context_budget: int | None = None

    @classmethod
    def of(cls, snap: dict[str, Any]) -> WireSnapshot:
        data = {str(k): _jsonable(v) for k, v in snap.items() if k != "sampling"}
        return cls(**data, sampling=Sampling.of(snap["sampling"]))


class Result(_Out):
    """The reply to a request; ``summary`` (``interrupt``: null when there was nothing to cut)
    and ``snapshot`` are sent only by the requests that return them."""

    type: Literal["result"] = "result"
    req: int
    summary: WireSummary | None = None
    snapshot: WireSnapshot | None = None


class ErrorReply(_Out):
    type: Literal["error"] = "error"
    code: str
    message: str
    fatal: bool  # the server closes the connection after it
    req: int | None = None  # the request it answers
    turn_id: int | None = None  # the turn whose input it refuses

    @classmethod
    def of(
        cls,
        code: str,
        message: str,
        *,
        req: int | None = None,
        turn_id: int | None = None,
        fatal: bool = False,
    ) -> ErrorReply:
        """An error reply (``req`` and ``turn_id`` are sent only when given)."""
        extra = {k: v for k, v in (("req", req), ("turn_id", turn_id)) if v is not None}
        return cls(code=code, message=message, fatal=fatal, **extra)

    def to_exception(self) -> MossError:
        return error_from_wire(self.code, self.message)


ServerMessage = Annotated[
    Ready | TurnStarted | TurnWords | TurnEnded | Result | ErrorReply,
    Field(discriminator="type"),
]
_SERVER_ADAPTER: TypeAdapter[Any] = TypeAdapter(ServerMessage)
SERVER_MESSAGES: dict[str, type[_Out]] = _by_type(ServerMessage)


def parse_server_message(text: str | bytes) -> _Out | None:
    """Parses one JSON message from the server (a ``ServerMessage``); None for a type this
    client does not know (a newer server's).

    Raises:
        ProtocolError: not JSON, or a known type with invalid fields.
    """
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ProtocolError(f"server sent invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError("server sent a JSON value that is not an object")
    if data.get("type") not in SERVER_MESSAGES:
        return None
    try:
        return _SERVER_ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ProtocolError(
            f"invalid {data['type']!r} message from the server: {_problems(e, skip=1)}"
        ) from None


def _jsonable(v: Any) -> Any:
    """Snapshot values as JSON (tensors as nested lists, dataclasses as objects)."""
    import dataclasses
    import enum

    if hasattr(v, "tolist"):  # tensors, numpy arrays and scalars
        return v.tolist()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, enum.Enum):
        return _jsonable(v.value)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def dumps(msg: dict[str, Any]) -> str:
    """Compact JSON for the wire."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "AUDIO_HEADER",
    "CLIENT_MESSAGES",
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGES",
    "SESSION_HEADER",
    "WS_PATH",
    "ClientMessage",
    "ErrorReply",
    "MessageError",
    "Ready",
    "Result",
    "Sampling",
    "ServerMessage",
    "ServerUnavailableError",
    "TurnEnded",
    "TurnStarted",
    "TurnWords",
    "WireSnapshot",
    "WireSummary",
    "dumps",
    "error_code",
    "error_from_wire",
    "pack_audio",
    "parse_client_message",
    "parse_server_message",
    "unpack_audio",
]
