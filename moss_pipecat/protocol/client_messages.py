"""Client -> server messages of the wire protocol (``ClientMessage``), parsed and validated
at the edge (``parse_client_message``); see ``protocol`` for what each one does.

A message that carries a command (``_CommandMsg``: ``turn.start``, ``turn.text``/``turn.ids``,
``turn.end``, ``interrupt``, the ``limits`` of ``settings``) names the command and its fields;
its values are checked by that command (``moss_pipecat.speech.commands``), never restated here,
so the server refuses what the local engine refuses (as ``bad_message``) and a client that
builds the message gets the engine's ``InvalidInputError``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from moss_pipecat.protocol.wire_json import WireModel, by_type, problems
from moss_pipecat.speech import commands as C
from moss_pipecat.speech import fields as F
from moss_pipecat.speech.sampling import (
    SamplingParams,
    in_range,
)

PROTOCOL_VERSION = 1
# Optional client fields a server takes, named in its ``ready`` (``features``): a client sends
# one only to a server that names it (an older server refuses a field it does not know).
CUT_NAMES_TURN = "interrupt.turn_id"
RESTORE_TURN_NOISE = "restore.turn_noise"
HELLO_HISTORY_AT = "hello.history_at"
FEATURES = (CUT_NAMES_TURN, RESTORE_TURN_NOISE, HELLO_HISTORY_AT)
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# ``secrets.token_urlsafe(16..192)``: a proposed secret has at least 128 bits if drawn at random
RESUME_SECRET_PATTERN = r"^[A-Za-z0-9_-]{22,256}$"
# ``1.CREATED_MS.ISSUED_MS.MAC``: what a server issued (``server.tickets``); opaque to clients
RESUME_TICKET_PATTERN = r"^1\.[0-9]{1,15}\.[0-9]{1,15}\.[A-Za-z0-9_-]{43}$"


class _Msg(WireModel):
    """Client -> server: strict, unknown fields refused (everything is checked at the edge)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _CommandMsg(_Msg):
    """A message carrying the fields ``COMMAND_FIELDS`` of the engine command ``COMMAND``
    (same names); the command's checks are the message's."""

    COMMAND: ClassVar[type]
    COMMAND_FIELDS: ClassVar[tuple[str, ...]]

    @model_validator(mode="after")
    def _command_checks(self) -> Any:
        self.command()  # InvalidInputError is a ValueError: a validation error here
        return self

    def command_fields(self) -> dict[str, Any]:
        """The command's fields this message carries."""
        return {name: getattr(self, name) for name in self.COMMAND_FIELDS}

    def command(self) -> Any:
        """The command this message asks for (checked)."""
        return self.COMMAND(**self.command_fields())

    @classmethod
    def fields_of(cls, command: Any) -> dict[str, Any]:
        """The fields of ``command`` this message carries, as JSON values; None fields are left
        out (they mean the engine's default)."""
        values = {name: getattr(command, name) for name in cls.COMMAND_FIELDS}
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None
        }

    @classmethod
    def of(cls, command: Any, **fields: Any) -> Any:
        """The message carrying ``command`` (and ``fields``, e.g. ``req``)."""
        return cls(**cls.fields_of(command), **fields)


Finite = Field(allow_inf_nan=False)


_DEFAULTS = SamplingParams()


class Sampling(_Msg):
    """``SamplingParams`` on the wire (missing fields take the engine defaults).

    Each value's range is checked here (``speech.sampling.in_range``): past it, a
    ``bad_message``; the rules between values (``temperature > 0`` unless greedy) and the
    engine's own caps are the engine's ``invalid_input``."""

    # Defaults: the engine's own (SamplingParams), never restated here.
    temperature: float = _DEFAULTS.temperature
    top_k: int = _DEFAULTS.top_k  # 0: off; past the vocabulary: off
    top_p: float = _DEFAULTS.top_p
    repetition_penalty: float = _DEFAULTS.repetition_penalty
    repetition_window: int = _DEFAULTS.repetition_window
    greedy: bool = _DEFAULTS.greedy

    @model_validator(mode="after")
    def _ranges(self) -> Sampling:
        in_range(self.model_dump())
        return self

    def to_params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump())

    @classmethod
    def of(cls, params: SamplingParams) -> Sampling:
        return cls(**{name: getattr(params, name) for name in cls.model_fields})


REQ_LIMIT = 2**53  # a ``req`` is an int below it (exact in every JSON implementation)
ReqId = Annotated[int, Field(ge=0, lt=REQ_LIMIT)]
TurnId = Annotated[int, Field(ge=0, lt=C.MAX_TURN_ID)]
Seed = Annotated[int, AfterValidator(F.seed)]
TokenIds = Annotated[list[int], AfterValidator(lambda ids: list(F.token_ids("text ids", ids)))]


class HistoryAt(_Msg):
    """The history a client holds of a conversation: the server's that it came from (its
    ``ready.server_id``) and its last ``history`` delta's ``rev``."""

    server: Annotated[str, Field(min_length=1, max_length=256)]
    rev: Annotated[int, Field(ge=1, lt=REQ_LIMIT)]


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    v: int = PROTOCOL_VERSION
    conversation_id: Annotated[str, Field(pattern=CONVERSATION_ID_PATTERN)] | None = None
    resume_secret: Annotated[str, Field(pattern=RESUME_SECRET_PATTERN)] | None = None
    resume_ticket: Annotated[str, Field(pattern=RESUME_TICKET_PATTERN)] | None = None
    token: str | None = None
    sampling: Sampling | None = None
    seed: Seed | None = None
    history: bool = False  # send ``history`` deltas (the client keeps a journal)
    # Feature ``hello.history_at``: the journal holds that server's history as of that delta,
    # so a resume there sends what changed since (else the full history)
    history_at: HistoryAt | None = None


class TurnStart(_CommandMsg):
    COMMAND = C.StartTurn
    COMMAND_FIELDS = ("max_frames", "min_frames", "eos_after_text")
    type: Literal["turn.start"] = "turn.start"
    req: ReqId
    max_frames: int | None = None  # None: no cap of the caller's own
    min_frames: int | None = None  # None: the engine's
    eos_after_text: bool | None = None  # None: the engine's


class TurnText(_CommandMsg):
    COMMAND = C.PushText
    COMMAND_FIELDS = ("turn_id", "text")
    type: Literal["turn.text"] = "turn.text"
    turn_id: TurnId
    text: str


class TurnIds(_CommandMsg):
    COMMAND = C.PushText
    COMMAND_FIELDS = ("turn_id", "ids", "text")
    type: Literal["turn.ids"] = "turn.ids"
    turn_id: TurnId
    ids: list[int]
    text: str = ""


class TurnEnd(_CommandMsg):
    COMMAND = C.EndText
    COMMAND_FIELDS = ("turn_id",)
    type: Literal["turn.end"] = "turn.end"
    turn_id: TurnId


class Interrupt(_CommandMsg):
    COMMAND = C.Interrupt
    COMMAND_FIELDS = ("heard_frames", "heard_units", "turn_id")
    type: Literal["interrupt"] = "interrupt"
    req: ReqId
    heard_frames: int
    heard_units: int | None = None
    turn_id: int | None = None


class UserTurn(_Msg):
    type: Literal["user_turn"] = "user_turn"
    req: ReqId
    text: str | None = None
    text_ids: TokenIds | None = None
    format: Literal["pcm16", "codes"]
    sample_rate: Annotated[int, Field(ge=1)] | None = None
    bytes: Annotated[int, Field(ge=1)]


class Voice(_Msg):
    type: Literal["voice"] = "voice"
    req: ReqId
    format: Literal["pcm16", "codes", "none"]
    sample_rate: Annotated[int, Field(ge=1)] | None = None
    bytes: Annotated[int, Field(ge=0)] = 0


class Limits(_CommandMsg):
    """Per-conversation overrides of the engine's context budget and lookahead."""

    COMMAND = C.SetLimits
    COMMAND_FIELDS = ("context_budget", "lookahead_s", "unlimited_lookahead")
    context_budget: int | None = None
    lookahead_s: float | None = None
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
    (layout: ``protocol.history``) -> ``result``. A history of no turn and no voice is an empty
    frame: what it restores is the sampling noise's place (``noise``), so seeded replies go on
    as they would have. ``turn_noise``: the counter at the last turn's first frame (as
    ``history`` said it, or the journal's for a turn lost with its server), so a later cut of
    that reply keeps only the heard frames' draws; sent where ``ready.features`` lists it."""

    type: Literal["restore"] = "restore"
    req: ReqId
    turns: Annotated[int, Field(ge=0, lt=2**20)]
    voice_frames: Annotated[int, Field(ge=1, lt=2**20)] | None = None
    seed: Seed | None = None
    noise: Annotated[int, Field(ge=0, lt=2**62)] = 0
    turn_noise: Annotated[int, Field(gt=-(2**62), lt=2**62)] | None = None
    bytes: Annotated[int, Field(ge=0)]


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
    req = _req_of(data)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGES:
        raise MessageError("unknown_type", f"unknown message type {kind!r}", req)
    try:
        return _CLIENT_ADAPTER.validate_python(data)
    except ValidationError as e:  # locations start with the union's tag: dropped
        raise MessageError(
            "bad_message", f"invalid {kind!r} message: {problems(e, skip=1)}", req
        ) from None


def _req_of(data: Any) -> int | None:
    """The message's ``req`` when an error reply may quote it (a valid ``ReqId``), else None."""
    req = data.get("req") if isinstance(data, dict) else None
    ok = isinstance(req, int) and not isinstance(req, bool) and 0 <= req < REQ_LIMIT
    return req if ok else None


def _check_unicode(data: Any) -> None:
    """JSON ``\\uD800``-style escapes can make strings that are not Unicode (a lone surrogate):
    nothing could encode them (the tokenizer, a reply that quotes them), so they are refused.
    The check walks the message again, a few stack frames deeper than the parse did: nesting
    the parse just managed can be too deep here, and is refused the same way."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError(
            "bad_message",
            "a string holds a lone surrogate (\\ud800-\\udfff): not Unicode",
            _req_of(data),
        ) from None
    except RecursionError:
        raise MessageError(
            "bad_message", "not valid JSON: nested too deeply", _req_of(data)
        ) from None
