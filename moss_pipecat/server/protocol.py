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

Client -> server (JSON)
    ``hello``       v, conversation_id?, token?, sampling?, seed?   (sampling/seed apply to a
                    new conversation only)
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
    ``ready``        v, conversation_id, resumed, server_id, limits {...}, audio {...}
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

Close codes: 4400 protocol violation before ``ready``, 4401 unauthorized, 4408 no hello in
time, 4409 replaced by a newer connection for the conversation, 1001 server going away,
1009 frame over the hard size cap.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    ProtocolError,
    RemoteError,
    ServerUnavailableError,
    UnauthorizedError,
)

PROTOCOL_VERSION = 1
WS_PATH = "/v1/ws"
SESSION_HEADER = "x-session-id"  # Ray Serve's session-affinity header (ConsistentHashRouter)
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_TOP_K = 4096  # above the audio vocabulary (1027): a larger top_k filters nothing more
MAX_REPETITION_WINDOW = 4096  # the engine's own cap (``repetition_window_max``) is lower

# ---- close codes ---------------------------------------------------------------------------
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHORIZED = 4401
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
class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Finite = Field(allow_inf_nan=False)


class Sampling(_Msg):
    """``SamplingParams`` on the wire (missing fields take the engine defaults).

    Ranges are checked here, at the edge: anything past them is a ``bad_message`` (finer
    checks, e.g. ``temperature > 0`` unless greedy, are the engine's ``invalid_input``)."""

    temperature: Annotated[float, Finite, Field(ge=0, le=100)] = 0.8
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] = 30  # 0: off; past the vocabulary: off
    top_p: Annotated[float, Finite, Field(gt=0, le=1)] = 0.6
    repetition_penalty: Annotated[float, Finite, Field(gt=0, le=100)] = 1.1
    repetition_window: Annotated[int, Field(ge=0, le=MAX_REPETITION_WINDOW)] = 50
    greedy: bool = False

    def to_params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump())

    @classmethod
    def of(cls, params: SamplingParams) -> Sampling:
        return cls(
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            repetition_window=params.repetition_window,
            greedy=params.greedy,
        )


ReqId = Annotated[int, Field(ge=0, lt=2**53)]
TurnId = Annotated[int, Field(ge=0, lt=2**32)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class Hello(_Msg):
    type: Literal["hello"]
    v: int = PROTOCOL_VERSION
    conversation_id: Annotated[str, Field(pattern=CONVERSATION_ID_PATTERN)] | None = None
    token: str | None = None
    sampling: Sampling | None = None
    seed: Seed | None = None


class TurnStart(_Msg):
    type: Literal["turn.start"]
    req: ReqId
    max_frames: Annotated[int, Field(ge=1)] | None = None


class TurnText(_Msg):
    type: Literal["turn.text"]
    turn_id: TurnId
    text: str


class TurnIds(_Msg):
    type: Literal["turn.ids"]
    turn_id: TurnId
    ids: list[Annotated[int, Field(ge=0, lt=2**31)]]
    text: str = ""


class TurnEnd(_Msg):
    type: Literal["turn.end"]
    turn_id: TurnId


class Interrupt(_Msg):
    type: Literal["interrupt"]
    req: ReqId
    heard_frames: Annotated[int, Field(ge=0, lt=2**31)]


class UserTurn(_Msg):
    type: Literal["user_turn"]
    req: ReqId
    text: str | None = None
    text_ids: list[Annotated[int, Field(ge=0, lt=2**31)]] | None = None
    format: Literal["pcm16", "codes"]
    sample_rate: Annotated[int, Field(ge=1)] | None = None
    bytes: Annotated[int, Field(ge=1)]


class Voice(_Msg):
    type: Literal["voice"]
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
    type: Literal["settings"]
    req: ReqId
    sampling: Sampling | None = None
    seed: Seed | None = None
    limits: Limits | None = None


class Reset(_Msg):
    type: Literal["reset"]
    req: ReqId


class Snapshot(_Msg):
    type: Literal["snapshot"]
    req: ReqId


class Close(_Msg):
    type: Literal["close"]
    req: ReqId


CLIENT_MESSAGES: dict[str, type[_Msg]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # the Literal's single value
    for m in (
        Hello,
        TurnStart,
        TurnText,
        TurnIds,
        TurnEnd,
        Interrupt,
        UserTurn,
        Voice,
        Settings,
        Reset,
        Snapshot,
        Close,
    )
}


class MessageError(Exception):
    """A client message that cannot be handled; carries the error reply's code."""

    def __init__(self, code: str, message: str, req: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.req = req


def parse_client_message(text: str | bytes) -> _Msg:
    """Parses and validates one JSON control message.

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
    cls = CLIENT_MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError("unknown_type", f"unknown message type {kind!r}", req)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        raise MessageError("bad_message", f"invalid {kind!r} message: {problems}", req) from None


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
# Wire code -> the exception the client raises (the same types the local engine raises).
ERROR_TYPES: dict[str, type[MossError]] = {
    "bad_message": ProtocolError,
    "unknown_type": ProtocolError,
    "unsupported_version": ProtocolError,
    "too_large": InvalidInputError,
    "invalid_input": InvalidInputError,
    "capacity": CapacityError,
    "turn_state": TurnStateError,
    "session_closed": SessionClosedError,
    "unknown_session": UnknownSessionError,
    "unauthorized": UnauthorizedError,
    "superseded": ServerUnavailableError,
    "unavailable": ServerUnavailableError,
    "internal": RemoteError,
}


def error_code(exc: BaseException) -> str:
    """The wire code for an exception raised while handling a request."""
    for cls, code in (
        (UnknownSessionError, "unknown_session"),
        (SessionClosedError, "session_closed"),
        (TurnStateError, "turn_state"),
        (CapacityError, "capacity"),
        (InvalidInputError, "invalid_input"),
        (ProtocolError, "bad_message"),
        (UnauthorizedError, "unauthorized"),
    ):
        if isinstance(exc, cls):
            return code
    return "internal"


def error_from_wire(code: str, message: str) -> MossError:
    """The exception a client raises for an ``error`` reply."""
    return ERROR_TYPES.get(code, RemoteError)(message)


# ---- summaries -------------------------------------------------------------------------------
def words_to_wire(chunk: AudioChunk) -> dict[str, Any]:
    """The word times a frame carries, sent just before that frame's binary message."""
    return {
        "type": "turn.words",
        "turn_id": chunk.turn_id,
        "index": chunk.index,
        "words": [[w, t] for w, t in chunk.words],
    }


def words_from_wire(words: Any) -> list[tuple[str, float]]:
    return [(str(w), float(t)) for w, t in (words or [])]


def summary_to_wire(s: TurnSummary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "turn_id": s.turn_id,
        "stop": s.stop,
        "audio_frames": s.audio_frames,
        "heard_frames": s.heard_frames,
        "text_ids": list(s.text_ids),
        "text": s.text,
        "spoken_text": s.spoken_text,
        "words": [[w, t] for w, t in s.words],
        "ttfa_s": s.ttfa_s,
        "error": None if s.error is None else [error_code(s.error), str(s.error)],
    }


def summary_from_wire(d: dict[str, Any] | None) -> TurnSummary | None:
    if d is None:
        return None
    err = d.get("error")
    return TurnSummary(
        turn_id=int(d["turn_id"]),
        stop=str(d["stop"]),
        audio_frames=int(d.get("audio_frames", 0)),
        heard_frames=int(d.get("heard_frames", 0)),
        text_ids=[int(i) for i in d.get("text_ids", [])],
        text=str(d.get("text", "")),
        spoken_text=str(d.get("spoken_text", "")),
        words=words_from_wire(d.get("words")),
        ttfa_s=d.get("ttfa_s"),
        error=None if not err else error_from_wire(str(err[0]), str(err[1])),
    )


def dumps(msg: dict[str, Any]) -> str:
    """Compact JSON for the wire."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "AUDIO_HEADER",
    "CLIENT_MESSAGES",
    "PROTOCOL_VERSION",
    "SESSION_HEADER",
    "WS_PATH",
    "MessageError",
    "Sampling",
    "ServerUnavailableError",
    "dumps",
    "error_code",
    "error_from_wire",
    "pack_audio",
    "parse_client_message",
    "summary_from_wire",
    "summary_to_wire",
    "unpack_audio",
    "words_from_wire",
    "words_to_wire",
]
