"""Server -> client messages of the wire protocol (``ServerMessage``) and their parsing on the
client (``parse_server_message``); see ``protocol`` for when each one is sent."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from moss_pipecat.errors import MossError
from moss_pipecat.protocol.client_messages import Sampling
from moss_pipecat.protocol.error_codes import error_code, error_from_wire
from moss_pipecat.protocol.errors import ProtocolError
from moss_pipecat.protocol.wire_json import WireModel, by_type, problems
from moss_pipecat.speech.events import AudioChunk, TurnSummary
from moss_pipecat.speech.units import TimedWord, is_spaced


class _Out(WireModel):
    """Server -> client: a client ignores fields it does not know (a newer server's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


Words = list[tuple[str, float]]


def spaced_indices(words: list[tuple[str, float]]) -> list[int]:
    """Which of ``words`` carry their own spacing (``units.TimedWord.spaced``): the client
    joins those without a space, as the engine does (``units.join_units``)."""
    return [i for i, w in enumerate(words) if is_spaced(w)]


def timed_words(words: Words, spaced: list[int]) -> list[TimedWord]:
    """The engine's words back from the wire (a server without ``spaced`` sends none)."""
    marked = set(spaced)
    return [TimedWord(w, t, i in marked) for i, (w, t) in enumerate(words)]


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
    resume_ticket: str | None = None  # proves the creation to the deployment's servers
    server_id: str | None = None
    audio: AudioInfo
    limits: ReadyLimits
    features: tuple[str, ...] = ()  # the optional client fields it takes (``FEATURES``)


class TurnStarted(_Out):
    type: Literal["turn.started"] = "turn.started"
    req: int
    turn_id: int


class TurnWords(_Out):
    """What frame ``index`` brings beside its audio, sent just before that frame: the word
    times the engine placed with it, and the text ids the turn received since its previous
    frame (``speech.events.TurnText``: ``text_ids``, the turn's ``text_from``-th first;
    ``lead`` and ``text_pad`` with its first ids), which with the frames' codes are the
    turn's rows. A server that sends no text ids (an older one) leaves its client unable to
    keep the turn in flight when it is lost."""

    type: Literal["turn.words"] = "turn.words"
    turn_id: int
    index: int
    words: Words
    spaced: list[int] = []  # noqa: RUF012 (indices into words; see ``spaced_indices``)
    text_from: int = 0
    text_ids: list[int] = []  # noqa: RUF012
    lead: int | None = None
    text_pad: int | None = None

    @classmethod
    def of(cls, chunk: AudioChunk) -> TurnWords:
        words = list(chunk.words)
        extra: dict[str, Any] = {"spaced": spaced} if (spaced := spaced_indices(words)) else {}
        text = chunk.text
        if text is not None:  # its first ids bring the turn's lead and pad
            extra.update(text_from=text.start, text_ids=list(text.ids))
            if text.start == 0:
                extra.update(lead=text.lead, text_pad=text.pad)
        return cls(turn_id=chunk.turn_id, index=chunk.index, words=words, **extra)

    @staticmethod
    def wanted(chunk: AudioChunk) -> bool:
        """Whether ``chunk`` has anything for this message (words or text ids)."""
        return bool(chunk.words) or chunk.text is not None

    def timed_words(self) -> list[TimedWord]:
        return timed_words(self.words, self.spaced)


class TurnTextIds(_Out):
    """The text ids the server took for a turn, as it took them (from a ``turn.text``,
    ``turn.ids`` or ``turn.end``): the turn's ids from its ``text_from``-th, the same ids
    ``turn.words`` brings with the frames. Sent to a client that keeps a journal, so the turn
    it holds when its server is lost has every id that server held, also those that came
    after the last frame it received (a cut's closing rows take them)."""

    type: Literal["turn.text_ids"] = "turn.text_ids"
    turn_id: int
    text_from: int
    text_ids: list[int]


class TurnProgress(_Out):
    """A keepalive that proves progress: the turn has sent no frame for a while, and its
    prefill (the history and prompt rows it feeds before its first frame; a restored long
    call's are many) fed more rows since. A stuck engine sends none."""

    type: Literal["turn.progress"] = "turn.progress"
    turn_id: int
    rows_done: int  # rows of the prefill fed so far
    rows_total: int  # rows it feeds in all


# The fields a ``TurnSummary`` and its wire form hold alike (the others change form).
_SUMMARY_AS_IS = (
    "turn_id",
    "stop",
    "audio_frames",
    "heard_frames",
    "text",
    "spoken_text",
    "ttfa_s",
)


class WireSummary(_Out):
    """``TurnSummary`` on the wire; ``error`` is [code, message]."""

    turn_id: int
    stop: str
    audio_frames: int = 0
    heard_frames: int = 0
    text_ids: list[int] = []  # noqa: RUF012 (pydantic copies defaults)
    text: str = ""
    spoken_text: str = ""
    words: Words = []  # noqa: RUF012
    spaced: list[int] = []  # noqa: RUF012 (indices into words; see ``spaced_indices``)
    ttfa_s: float | None = None
    error: tuple[str, str] | None = None

    @classmethod
    def of(cls, s: TurnSummary) -> WireSummary:
        extra = {"spaced": spaced} if (spaced := spaced_indices(s.words)) else {}
        return cls(
            **{name: getattr(s, name) for name in _SUMMARY_AS_IS},
            text_ids=list(s.text_ids),
            words=list(s.words),
            error=None if s.error is None else (error_code(s.error), str(s.error)),
            **extra,  # only when some words carry their own spacing: older clients see none
        )

    def to_summary(self) -> TurnSummary:
        return TurnSummary(
            **{name: getattr(self, name) for name in _SUMMARY_AS_IS},
            text_ids=list(self.text_ids),
            words=timed_words(self.words, self.spaced),
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


class HistoryTurn(_Out):
    """One finished turn as its record (``engine.records.TurnRecord``)."""

    role: str
    ids: list[int]
    lead: int = 0
    codes: str  # base64, little-endian uint16 [frames, rvq]


class History(_Out):
    """What changed in the conversation's history, sent after every change (before the
    ``result`` or ``turn.end`` of what changed it) and, with ``full``, after a ``ready`` that
    resumed. A client drops ``drop`` turns from the front of its journal, keeps the next
    ``keep`` and appends ``turns`` (``full``: starts from nothing); ``voice`` replaces the
    reference voice when ``voice_changed`` (null: none). ``rev`` counts the deltas of this
    conversation on this server: one more than the last, or ``full``. ``seed`` and ``noise``:
    the sampling noise's key and counter (a new seed sends a delta too); ``turn_noise``: the
    counter at the first frame of the last turn, when it is a reply made here (below 0: it
    began before the seed was set; a client restores it with the history). ``resume_ticket``:
    the conversation's, issued afresh (as in ``ready``)."""

    type: Literal["history"] = "history"
    rev: int
    full: bool = False
    drop: int = 0
    keep: int = 0
    turns: list[HistoryTurn] = []  # noqa: RUF012 (pydantic copies defaults)
    voice_changed: bool = False
    voice: str | None = None
    seed: int | None = None
    noise: int = 0
    turn_noise: int | None = None
    resume_ticket: str | None = None


class ErrorReply(_Out):
    type: Literal["error"] = "error"
    code: str
    message: str
    fatal: bool  # the server closes the connection after it
    req: int | None = None  # the request it answers
    turn_id: int | None = None  # the turn whose input it refuses
    subcode: str | None = None  # a finer code than ``code`` (``error_codes.ERROR_SUBCODES``)

    @classmethod
    def of(
        cls,
        code: str,
        message: str,
        *,
        req: int | None = None,
        turn_id: int | None = None,
        fatal: bool = False,
        subcode: str | None = None,
    ) -> ErrorReply:
        """An error reply (``req``, ``turn_id`` and ``subcode`` are sent only when given)."""
        given = (("req", req), ("turn_id", turn_id), ("subcode", subcode))
        extra = {k: v for k, v in given if v is not None}
        return cls(code=code, message=message, fatal=fatal, **extra)

    def to_exception(self) -> MossError:
        return error_from_wire(self.code, self.message, self.subcode)


class GoAway(_Out):
    """The server is going away (a deploy, a scale-down): it admits no new conversation; the
    client finishes the turn in flight on this connection, then reconnects (to another server)
    for what comes next. A turn still open ``deadline_s`` seconds after this message is cut
    at the frames the client received (its ``turn.end`` says so: stop ``interrupted``)."""

    type: Literal["goaway"] = "goaway"
    deadline_s: float = Field(ge=0)
    reason: str = "shutdown"


ServerMessage = Annotated[
    Ready
    | TurnStarted
    | TurnWords
    | TurnTextIds
    | TurnProgress
    | TurnEnded
    | Result
    | History
    | ErrorReply
    | GoAway,
    Field(discriminator="type"),
]
_SERVER_ADAPTER: TypeAdapter[Any] = TypeAdapter(ServerMessage)
SERVER_MESSAGES: dict[str, type[_Out]] = by_type(ServerMessage)


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
            f"invalid {data['type']!r} message from the server: {problems(e, skip=1)}"
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
