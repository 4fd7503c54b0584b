"""How each command changes the engine's state (engine thread, between ticks).

One function per command type, looked up in ``HANDLERS``. Commands arrive checked
(``Command.checked``); what only the engine's state can tell (is a turn open, is there room)
is checked here and raised to the caller's future.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.engine.commands import (
    AddUserTurn,
    Close,
    CreateSession,
    EndText,
    HistoryDelta,
    Interrupt,
    PushText,
    Reset,
    RestoreHistory,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
)
from moss_pipecat.engine.events import TurnSummary
from moss_pipecat.engine.history import AssistantTurn, ConversationHistory, UserTurn
from moss_pipecat.engine.pacing import admits
from moss_pipecat.engine.records import HistoryChange, history_delta, turn_of
from moss_pipecat.engine.state import OpenTurn, Phase, SessionState
from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    OverloadedError,
    TurnStateError,
)

if TYPE_CHECKING:
    from moss_pipecat.engine.core import EngineCore


def create_session(core: EngineCore, sid: str, c: CreateSession) -> None:
    if sid in core.sessions:
        raise InvalidInputError(f"session {sid!r} already exists")
    deadline = core.config.frame_deadline_s
    n, codec = len(core.sessions) + 1, core.codec is not None
    if not admits(core.costs, deadline, n, codec, core.config.overlap_codec, core.runner.batch_of):
        core.stats["refused_overload"] += 1
        raise OverloadedError(
            f"engine at capacity: {len(core.sessions) + 1} conversations speaking at once "
            f"would miss the {1e3 * deadline:.0f} ms frame deadline"
        )
    pool, slot = core.pools.allocate()
    seed = c.seed if c.seed is not None else int(torch.randint(0, 2**62, ()).item())
    history = ConversationHistory(core.layout, core.system_rows(c.voice))
    hist_row = core.pools.hist_row(pool, slot)
    state = SessionState(sid, pool, slot, hist_row, history, c.sampling, int(seed))
    core.sessions[sid] = state
    core.truncate(state, 0)


def start_turn(core: EngineCore, sid: str, c: StartTurn) -> int:
    s = core.state(sid)
    if s.phase is not Phase.IDLE:
        raise TurnStateError("an assistant turn is already open; end or interrupt it first")
    cfg = core.config
    s.turn = OpenTurn(
        turn_id=s.next_turn_id,
        channel=c.channel,
        max_frames=c.max_frames,
        min_frames=cfg.eos_min_frames if c.min_frames is None else c.min_frames,
        eos_after_text=cfg.eos_after_text if c.eos_after_text is None else c.eos_after_text,
        words=s.word_timer(),
    )
    s.next_turn_id += 1
    s.phase = Phase.WAIT_TEXT
    return s.turn.turn_id


def push_text(core: EngineCore, sid: str, c: PushText) -> None:
    s = core.sessions.get(sid)
    t = s.turn if s is not None else None
    if t is None or t.turn_id != c.turn_id or t.text_done:
        return  # the turn already ended (EOS, cap, interruption): late text is dropped
    vocab = core.model.cfg.language.vocab_size
    bad = [i for i in c.ids if not 0 <= i < vocab]
    if bad:
        core.fail_turn(s, InvalidInputError(f"text ids {bad[:5]} outside [0, {vocab})"))
        return
    t.tokens.extend(c.ids)
    t.text += c.text
    t.words.add_text(c.text)
    ends = c.ends
    if ends is None or len(ends) != len(c.ids):
        ends = [len(t.text)] * len(c.ids)
    t.token_ends.extend(min(e, len(t.text)) for e in ends)
    t.text_done = c.done
    if t.record is not None:
        t.record.text = t.text
    if c.done and not t.tokens and s.phase is Phase.WAIT_TEXT:
        core.end_turn(s, TurnSummary(t.turn_id, "empty", text=t.text))


def interrupt(core: EngineCore, sid: str, c: Interrupt) -> TurnSummary | None:
    s = core.state(sid)
    heard = c.heard_frames
    t = s.turn
    if t is not None and c.turn_id not in (None, t.turn_id):
        return None  # the turn named ended before this one
    if t is not None:
        summary = TurnSummary(t.turn_id, "interrupted", text_ids=list(t.tokens), text=t.text)
        if t.record is not None:
            core.close_record(s, len(s.history.turns) - 1, heard, summary, c.heard_units)
        s.to_feed = None
        core.end_turn(s, summary)
        return summary
    turns = s.history.turns
    index = len(turns) - 1
    while index >= 0 and not isinstance(turns[index], AssistantTurn):
        index -= 1  # user turns added while the reply still played (heard or not, it was first)
    last = turns[index] if index >= 0 else None
    named = last is not None and c.turn_id == last.turn_id
    if last is None or not (named or (c.turn_id is None and index == len(turns) - 1)):
        return None  # nothing is being said (or not the turn named): a no-op
    if heard >= last.audio_frames(core.layout.audio_eos):
        return None  # everything was heard already
    summary = TurnSummary(last.turn_id, "interrupted", text_ids=list(last.text_ids))
    summary.text = last.text
    # The user turns after it keep their rows; the cache is rolled back to the cut and they
    # are prefilled again with the next turn.
    core.close_record(s, index, heard, summary, c.heard_units)
    return summary


def add_user_turn(core: EngineCore, sid: str, c: AddUserTurn) -> None:
    s = core.state(sid)
    if s.phase is not Phase.IDLE:
        raise TurnStateError("cannot add a user turn while an assistant turn is open")
    cfg, layout = core.config, core.layout
    frames, text_ids = c.frames, list(c.text_ids)
    if frames.shape[0] > cfg.max_user_frames:
        frames = frames[-cfg.max_user_frames :]  # keep the most recent speech
    limit = layout.lead(len(text_ids)) + frames.shape[0] + 1
    if len(text_ids) > limit:
        logger.warning(f"user transcript of {len(text_ids)} tokens cut to {limit} to fit")
        text_ids = text_ids[:limit]
    header = layout.header("user", not s.history.turns)
    body = layout.turn_rows(header, text_ids, frames)[header.shape[0] :]
    s.history.turns.append(UserTurn(text_ids, frames, body))
    try:
        core.fit_budget(s, 0)
    except CapacityError:
        s.history.turns.pop()
        raise


def set_voice(core: EngineCore, sid: str, c: SetVoice) -> None:
    s = core.state(sid)
    if s.phase is not Phase.IDLE:
        raise TurnStateError("cannot change the voice while an assistant turn is open")
    s.history.system = core.system_rows(c.frames)
    core.truncate(s, 0)  # everything after the system block moved: re-prefill it all


def set_sampling(core: EngineCore, sid: str, c: SetSampling) -> None:
    s = core.state(sid)
    s.sampling = c.sampling
    if c.seed is not None:  # the noise restarts: frame k after a reseed is reproducible
        for rec in s.history.turns:
            if isinstance(rec, AssistantTurn) and rec.noise_start is not None:
                # Its frame 0 now lies that many draws before the new counter's 0, so a cut of
                # it still keeps only the heard frames' draws (``close_record``).
                rec.noise_start -= s.noise_counter
        s.seed, s.noise_counter = int(c.seed), 0


def set_limits(core: EngineCore, sid: str, c: SetLimits) -> None:
    s = core.state(sid)
    s.context_budget = c.context_budget
    s.lookahead_s = c.lookahead_s
    s.unlimited_lookahead = c.unlimited_lookahead


def reset(core: EngineCore, sid: str, c: Reset) -> None:
    s = core.state(sid)
    if s.turn is not None:
        core.end_turn(s, TurnSummary(s.turn.turn_id, "closed", text=s.turn.text))
    s.history.turns.clear()
    core.truncate(s, min(s.cache_len, s.history.system.shape[0]))


def snapshot(core: EngineCore, sid: str, c: Snapshot) -> dict:
    s = core.state(sid)
    return {
        "rows": s.history.all_rows(),
        "cache_len": s.cache_len,
        "device_cache_len": core.pools[s.pool].cache.length(s.slot),
        "pool_capacity": core.pools[s.pool].capacity,
        "system_rows": s.history.system.shape[0],
        "turns": [(t.role, len(t.text_ids)) for t in s.history.turns],
        "turn_frames": s.history.audio_frames(),
        "phase": s.phase.value,
        "slot": s.slot,
        "sampling": s.sampling,
        "context_budget": s.budget(core.config),
    }


def restore_history(core: EngineCore, sid: str, c: RestoreHistory) -> None:
    s = core.state(sid)
    if s.phase is not Phase.IDLE or s.history.turns:
        raise TurnStateError("only a conversation with no turns yet can be restored")
    system, turns = s.history.system, s.history.turns
    s.history.system = core.system_rows(c.voice)
    s.history.turns = [turn_of(core.layout, r) for r in c.turns]
    try:
        core.fit_budget(s, 0)  # this engine's budget may be smaller: trimmed as it would be
    except CapacityError:
        s.history.system, s.history.turns = system, turns
        raise
    if c.seed is not None:
        s.seed, s.noise_counter = int(c.seed), c.noise_counter
        last = s.history.turns[-1] if s.history.turns else None
        if isinstance(last, AssistantTurn):  # a cut of it keeps only the heard frames' draws
            last.noise_start = c.turn_noise
    core.truncate(s, 0)  # the next prefill feeds it all (the prefix cache serves the system)


def history_change(core: EngineCore, sid: str, c: HistoryDelta) -> HistoryChange:
    return history_delta(core.layout, core.state(sid), c.cursor, c.full)


def close(core: EngineCore, sid: str, c: Close) -> None:
    s = core.sessions.get(sid)
    if s is None:
        return
    if s.turn is not None:
        core.end_turn(s, TurnSummary(s.turn.turn_id, "closed", text=s.turn.text))
    s.phase = Phase.CLOSED
    del core.sessions[sid]
    core.truncate(s, 0)
    core.pools[s.pool].release(s.slot)


HANDLERS: dict[type, Callable[[EngineCore, str, Any], Any]] = {
    CreateSession: create_session,
    StartTurn: start_turn,
    PushText: push_text,
    EndText: push_text,
    Interrupt: interrupt,
    AddUserTurn: add_user_turn,
    SetVoice: set_voice,
    SetSampling: set_sampling,
    SetLimits: set_limits,
    Reset: reset,
    Snapshot: snapshot,
    RestoreHistory: restore_history,
    HistoryDelta: history_change,
    Close: close,
}
