"""A conversation's history as turn records, and back: what a client keeps to rebuild it.

A ``TurnRecord`` is a finished turn with just enough to rebuild its rows exactly: a user turn's
transcript ids and codec frames (its rows are ``RowLayout.turn_rows``), an assistant turn's
text channel (``lead`` prompt ids, one id per frame row, the EOS row's id) and the frames it
kept. Every finished assistant turn has that one shape (prompt with BOS, frame rows, EOS row),
however it ended (EOS, a frame cap, an interruption), so a record rebuilt by ``turn_of`` gives
the rows the engine held, bit for bit, and the records of a restored history are the ones it
was restored from.

``HistoryCursor`` remembers which turns (and which system block) a client was last told about;
``history_delta`` says what changed since (turns dropped from the front by a trim, turns cut or
dropped at the end, new turns, a new voice). Both run on the engine thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from moss_pipecat.engine.history import AssistantTurn, Turn, UserTurn
from moss_pipecat.engine.row_store import RowStore
from moss_pipecat.errors import InvalidInputError

if TYPE_CHECKING:
    from moss_pipecat.engine.commands import EngineFacts
    from moss_pipecat.engine.rows import RowLayout
    from moss_pipecat.engine.state import SessionState

ROLES = ("user", "assistant")


@dataclass(frozen=True)
class TurnRecord:
    """One finished turn (see the module docstring).

    Attributes:
        role: "user" or "assistant".
        text_ids: a user turn's transcript ids; an assistant turn's text channel, row by row
            (``lead`` prompt ids, one per frame row, then the EOS row's).
        frames: [A, rvq] codes (user speech; the frames an assistant turn kept).
        lead: an assistant turn's prompt rows (text before its first frame); 0 for a user turn.
    """

    role: str
    text_ids: tuple[int, ...]
    frames: torch.Tensor = field(compare=False)
    lead: int = 0

    def checked(self, facts: EngineFacts) -> TurnRecord:
        """This record, validated against an engine (ids in range, codes in range, a layout
        the engine builds); raises ``InvalidInputError``."""
        layout = facts.layout
        if self.role not in ROLES:
            raise InvalidInputError(f"a turn's role must be one of {ROLES}, got {self.role!r}")
        frames = layout.check_frames(self.frames, f"{self.role} turn frames")
        ids = tuple(int(i) for i in self.text_ids)
        if any(not 0 <= i < facts.text_vocab for i in ids):
            raise InvalidInputError(f"turn text ids must be in [0, {facts.text_vocab})")
        lead, a = int(self.lead), frames.shape[0]
        if self.role == "user":
            if lead != 0 or a == 0:
                raise InvalidInputError("a user turn has lead 0 and at least one frame")
            if a > facts.config.max_user_frames:
                raise InvalidInputError(f"a user turn holds at most {facts.config.max_user_frames}")
            if len(ids) > layout.lead(len(ids)) + a + 1:
                raise InvalidInputError("a user turn's text does not fit beside its audio")
        else:
            _check_assistant(layout, ids, lead, a)
        return TurnRecord(self.role, ids, frames, lead)


def _check_assistant(layout: RowLayout, ids: tuple[int, ...], lead: int, frames: int) -> None:
    """The text channel of a finished assistant turn: ``lead`` (1..delay) prompt ids, one id
    per frame row and the EOS row's; once the text is used up (or when it was shorter than the
    delay, after the prompt) only text_pad follows."""
    if not 1 <= lead <= layout.delay:
        raise InvalidInputError(f"an assistant turn's lead must be in [1, {layout.delay}]")
    if len(ids) != lead + frames + 1:
        raise InvalidInputError(
            f"an assistant turn with lead {lead} and {frames} frames has {lead + frames + 1} "
            f"text ids, got {len(ids)}"
        )
    tail = ids[lead:]
    pad = layout.text_pad
    first_pad = next((i for i, t in enumerate(tail) if t == pad), len(tail))
    if any(t != pad for t in tail[first_pad:]):
        raise InvalidInputError("an assistant turn's text resumes after text_pad")
    if lead < layout.delay and first_pad != 0:
        raise InvalidInputError(
            "a turn whose text is shorter than the delay has only padding after it"
        )


def check_records(facts: EngineFacts, turns: tuple[TurnRecord, ...]) -> tuple[TurnRecord, ...]:
    """Every record checked, and their rows within the engine's context."""
    checked = tuple(t.checked(facts) for t in turns)
    layout, limit = facts.layout, facts.config.max_context
    rows = sum(
        layout.header_rows(t.role, first=i == 0) + body_rows(layout, t)
        for i, t in enumerate(checked)
    )
    if rows > limit:
        raise InvalidInputError(f"the restored turns hold about {rows} rows, over {limit}")
    return checked


def body_rows(layout: RowLayout, r: TurnRecord) -> int:
    """Rows of a record's body (header aside)."""
    if r.role == "assistant":
        return len(r.text_ids)
    return layout.lead(len(r.text_ids)) + r.frames.shape[0] + 1


def record_of(layout: RowLayout, turn: Turn) -> TurnRecord:
    """The record of a finished turn (a copy: the engine's tensors stay the engine's)."""
    if isinstance(turn, UserTurn):
        return TurnRecord("user", tuple(turn.text_ids), turn.frames.to("cpu", torch.int64).clone())
    body = turn.body().cpu()  # [lead + k + 1, 17]
    frames = body[turn.lead : -1, 1:].clone()  # [k, rvq]
    return TurnRecord("assistant", tuple(body[:, 0].tolist()), frames, turn.lead)


def turn_of(layout: RowLayout, r: TurnRecord) -> Turn:
    """The turn a (checked) record describes, with the rows the engine built for it."""
    if r.role == "user":
        header = layout.header("user", first=True)
        body = layout.turn_rows(header, r.text_ids, r.frames)[header.shape[0] :]
        return UserTurn(list(r.text_ids), r.frames, body)
    ids, lead = list(r.text_ids), r.lead
    prompt = layout.text_rows(ids[:lead])
    prompt[-1, 1] = layout.audio_bos
    k = r.frames.shape[0]
    text = torch.tensor(ids[lead : lead + k], dtype=torch.int64)[:, None]  # [k, 1]
    steps = RowStore(torch.cat((text, r.frames.to(torch.int64)), dim=1))  # [k, 17]
    closing = layout.closing_rows(iter(ids[lead + k :]))
    return AssistantTurn(ids, lead, prompt, steps, RowStore(r.frames), closing)


def voice_of(layout: RowLayout, system: torch.Tensor) -> torch.Tensor | None:
    """The reference-voice frames [R, rvq] a system block holds (None: no voice)."""
    voice = system[system[:, 0] == layout.ref_audio_pad, 1:]
    return voice.cpu().clone() if voice.shape[0] else None


class HistoryCursor:
    """What a client was last told of a session's history (engine thread only): the turns and
    system block it holds, as the engine's own objects (kept alive, so ``is`` is sound)."""

    def __init__(self) -> None:
        self.turns: list[tuple[Turn, object]] = []
        self.system: torch.Tensor | None = None
        self.started = False


@dataclass
class HistoryChange:
    """What changed since a cursor: the client drops ``drop`` turns from the front, keeps the
    next ``keep`` and appends ``turns``; ``voice`` when ``voice_changed``; all of it when
    ``full`` (a client starting afresh)."""

    full: bool
    drop: int
    keep: int
    turns: list[TurnRecord]
    voice_changed: bool
    voice: torch.Tensor | None
    seed: int
    noise_counter: int
    # The counter at the first frame of the last finished turn, when it is a reply drawn here
    # (``AssistantTurn.noise_start``): a restore gives it back, so a cut there rolls back.
    turn_noise: int | None = None


def _key(turn: Turn) -> tuple[Turn, object]:
    # An assistant turn cut again gets new closing rows; a user turn never changes.
    return (turn, turn.closing if isinstance(turn, AssistantTurn) else turn.rows)


def finished_turns(s: SessionState) -> list[Turn]:
    """The history's turns, less an assistant turn still being generated."""
    return [t for t in s.history.turns if not (isinstance(t, AssistantTurn) and t.closing is None)]


def history_delta(
    layout: RowLayout, s: SessionState, cursor: HistoryCursor, full: bool
) -> HistoryChange:
    """What changed in ``s``'s history since ``cursor`` (which then holds the present)."""
    finished = finished_turns(s)
    now = [_key(t) for t in finished]
    full = full or not cursor.started
    old = [] if full else cursor.turns
    present = {id(t) for t, _ in now}
    drop = 0
    while drop < len(old) and id(old[drop][0]) not in present:
        drop += 1  # trimmed from the front (or all gone: a reset)
    keep = 0
    while keep < min(len(old) - drop, len(now)):
        (a, ka), (b, kb) = old[drop + keep], now[keep]
        if a is not b or ka is not kb:
            break
        keep += 1
    changed = full or s.history.system is not cursor.system
    change = HistoryChange(
        full=full,
        drop=drop,
        keep=keep,
        turns=[record_of(layout, t) for t, _ in now[keep:]],
        voice_changed=changed,
        voice=voice_of(layout, s.history.system) if changed else None,
        seed=s.seed,
        noise_counter=s.noise_counter,
        turn_noise=finished[-1].noise_start
        if finished and isinstance(finished[-1], AssistantTurn)
        else None,
    )
    cursor.turns, cursor.system, cursor.started = now, s.history.system, True
    return change
