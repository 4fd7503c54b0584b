"""Client -> server messages of the wire protocol (``ClientMessage``), parsed and validated
at the edge (``parse_client_message``); see ``protocol`` for what each one does."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from moss_pipecat.protocol.wire_json import WireModel, by_type, problems
from moss_pipecat.speech.sampling import SamplingParams

PROTOCOL_VERSION = 1
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# ``secrets.token_urlsafe(16..192)``: a proposed secret has at least 128 bits if drawn at random
RESUME_SECRET_PATTERN = r"^[A-Za-z0-9_-]{22,256}$"
MAX_TOP_K = 4096  # above the audio vocabulary (1027): a larger top_k filters nothing more
MAX_REPETITION_WINDOW = 4096  # the engine's own cap (``repetition_window_max``) is lower


class _Msg(WireModel):
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
    history: bool = False  # send ``history`` deltas (the client keeps a journal)


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


class Restore(_Msg):
    """A conversation's history back (the client's journal), for a conversation with no turns
    yet: ``turns`` records and ``voice_frames`` voice frames in one binary frame of ``bytes``
    (layout: ``protocol.history``) -> ``result``."""

    type: Literal["restore"] = "restore"
    req: ReqId
    turns: Annotated[int, Field(ge=0, lt=2**20)]
    voice_frames: Annotated[int, Field(ge=1, lt=2**20)] | None = None
    seed: Seed | None = None
    noise: Annotated[int, Field(ge=0, lt=2**62)] = 0
    bytes: Annotated[int, Field(ge=1)]


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
    | Restore
    | Close,
    Field(discriminator="type"),
]
_CLIENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientMessage)


CLIENT_MESSAGES: dict[str, type[_Msg]] = by_type(ClientMessage)


class MessageError(Exception):
    """A client message that cannot be handled; carries the error reply's code."""

    def __init__(self, code: str, message: str, req: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.req = req


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
            "bad_message", f"invalid {kind!r} message: {problems(e, skip=1)}", req
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
