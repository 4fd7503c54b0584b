"""Restoring a conversation's history from its turn records (issue #24): the rebuilt rows equal
the lost ones, deltas add up to the whole history, the next greedy reply is the same, and a
restore that does not fit the layout or the engine is refused with nothing changed."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine.records import HistoryCursor, TurnRecord
from moss_pipecat.engine.session import SyncSession
from moss_pipecat.errors import InvalidInputError, TurnStateError
from moss_pipecat.model import SamplingParams

from .helpers import random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()


def apply(records: list[TurnRecord], voice, change) -> tuple[list[TurnRecord], object]:
    """A client's journal: the change applied to the records it holds."""
    if change.full:
        records = []
    records = records[change.drop :][: change.keep] + list(change.turns)
    return records, (change.voice if change.voice_changed else voice)


def say(s: SyncSession, ids, max_frames, cut=None):
    """One assistant turn of ``max_frames`` frames (EOS masked: where a fixture set's random
    model ends a turn is not what these tests are about); ``cut``: (after chunks, heard
    frames) interrupts it."""
    turn = s.start_turn(max_frames=max_frames, min_frames=max_frames)
    turn.push_ids(ids)
    turn.end_text()
    if cut is None:
        return list(turn)
    chunks = []
    for chunk in turn:
        chunks.append(chunk)
        if len(chunks) == cut[0]:
            s.interrupt(cut[1])
            break
    turn.wait_sync()
    return chunks


def conversation(s: SyncSession, meta, gen, journal) -> None:
    """A call with every kind of change, a delta after each (as the server sends them)."""
    cursor, records, voice = HistoryCursor(), [], None

    def delta():
        nonlocal records, voice
        records, voice = apply(records, voice, s.history_delta(cursor))

    say(s, random_text(gen, meta, 20), 6)  # a frame cap
    delta()
    s.add_user_turn(random_text(gen, meta, 5), random_frames(gen, 7, meta))
    delta()
    say(s, random_text(gen, meta, 16), 12, cut=(8, 3))  # barge-in, 3 frames heard
    delta()
    say(s, random_text(gen, meta, 30), 6, cut=(4, 0))  # heard nothing: dropped
    delta()
    say(s, random_text(gen, meta, 4), 9)  # shorter than the delay: padding after its text
    delta()
    s.interrupt(5)  # an interruption after it ended cuts it again
    delta()
    s.add_user_turn(random_text(gen, meta, 3), random_frames(gen, 2, meta))
    delta()
    journal.extend([records, voice, cursor])


@pytest.mark.parametrize("with_voice", [False, True])
def test_restored_rows_equal_the_lost_ones_and_the_next_reply_is_the_same(
    make_engine, realtime_meta, voice_codes, with_voice
):
    engine = make_engine()
    gen = torch.Generator().manual_seed(5)
    voice = voice_codes if with_voice else None
    a = SyncSession(engine.create_session(sampling=GREEDY, voice=voice))
    journal: list = []
    conversation(a, realtime_meta, gen, journal)
    records, kept_voice, _ = journal
    full, _ = apply([], None, a.history_delta(HistoryCursor(), full=True))
    assert [(r.role, r.text_ids, r.lead) for r in records] == [
        (r.role, r.text_ids, r.lead) for r in full
    ]
    assert all(torch.equal(x.frames, y.frames) for x, y in zip(records, full, strict=True))
    lost = a.snapshot()
    roles = ["assistant", "user", "assistant", "assistant", "user"]
    assert [role for role, _ in lost["turns"]] == roles

    # A new session on a new engine (the server that took over) gets the journal.
    other = make_engine()
    b = SyncSession(other.create_session(sampling=GREEDY))
    b.restore(records, kept_voice)
    got = b.snapshot()
    assert torch.equal(got["rows"], lost["rows"])
    # (``turns`` counts the text ids a turn holds, which for a turn the engine generated
    # includes tokens never fed: the rows are what the model saw.)
    assert [r for r, _ in got["turns"]] == [r for r, _ in lost["turns"]]
    assert got["turn_frames"] == lost["turn_frames"]
    assert got["system_rows"] == lost["system_rows"] and got["cache_len"] == 0
    again, _ = apply([], None, b.history_delta(HistoryCursor(), full=True))
    assert [(r.text_ids, r.lead) for r in again] == [(r.text_ids, r.lead) for r in records]

    # The next greedy reply is the reply the lost server would have given (the restored rows
    # are prefilled at once, the lost ones were fed turn by turn; CPU attention of different
    # key lengths may differ in the last bits: the rows above are the exact claim, the frames
    # here are compared as the engine makes them).
    ids = random_text(gen, realtime_meta, 14)
    reply_a = torch.stack([c.codes for c in say(a, ids, 8)])
    reply_b = torch.stack([c.codes for c in say(b, ids, 8)])
    assert torch.equal(a.snapshot()["rows"], b.snapshot()["rows"])
    assert torch.equal(reply_a, reply_b)


def test_deltas_follow_trims_and_resets(make_engine, realtime_meta):
    # A small budget: every new turn drops old ones from the front.
    engine = make_engine(context_budget=260, turn_reserve=60)
    gen = torch.Generator().manual_seed(9)
    s = SyncSession(engine.create_session(sampling=GREEDY))
    cursor, records, voice, drops = HistoryCursor(), [], None, 0
    for i in range(6):
        s.add_user_turn(random_text(gen, realtime_meta, 6), random_frames(gen, 20, realtime_meta))
        change = s.history_delta(cursor)
        drops += change.drop
        records, voice = apply(records, voice, change)
        say(s, random_text(gen, realtime_meta, 18), 20)
        change = s.history_delta(cursor)
        drops += change.drop
        records, voice = apply(records, voice, change)
        full, _ = apply([], None, s.history_delta(HistoryCursor(), full=True))
        assert [r.text_ids for r in records] == [r.text_ids for r in full], i
    assert drops > 0 and len(records) < 12
    s.reset()
    change = s.history_delta(cursor)
    assert (change.keep, change.turns) == (0, [])
    assert apply(records, voice, change)[0] == []


def _records(engine, meta, gen) -> tuple[list[TurnRecord], SyncSession]:
    s = SyncSession(engine.create_session(sampling=GREEDY))
    s.add_user_turn(random_text(gen, meta, 5), random_frames(gen, 4, meta))
    say(s, random_text(gen, meta, 20), 5)
    return apply([], None, s.history_delta(HistoryCursor(), full=True))[0], s


def test_hostile_restores_are_refused_and_change_nothing(make_engine, realtime_meta):
    engine = make_engine()
    layout = engine.layout
    gen = torch.Generator().manual_seed(3)
    (user, bot), source = _records(engine, realtime_meta, gen)
    vocab = engine.model.cfg.language.vocab_size
    ids = list(bot.text_ids)

    def assistant(**kw) -> TurnRecord:
        fields = dict(role="assistant", text_ids=tuple(ids), frames=bot.frames, lead=bot.lead)
        fields.update(kw)
        return TurnRecord(**fields)

    big = torch.full_like(bot.frames, layout.audio_eos + 1)
    bad = {
        "oov codes": [assistant(frames=big)],
        "oov text": [assistant(text_ids=(vocab, *ids[1:]))],
        "negative text": [assistant(text_ids=(-1, *ids[1:]))],
        "lead 0": [assistant(lead=0)],
        "lead over the delay": [assistant(lead=layout.delay + 1)],
        "ids do not match the frames": [assistant(text_ids=tuple(ids[:-1]))],
        "text after padding": [assistant(text_ids=(*ids[:-2], layout.text_pad, ids[0]))],
        "a role": [TurnRecord("system", user.text_ids, user.frames)],
        "user without audio": [TurnRecord("user", user.text_ids, user.frames[:0])],
        "user frames of the wrong width": [TurnRecord("user", user.text_ids, user.frames[:, :-1])],
        "float codes": [TurnRecord("user", user.text_ids, user.frames.float())],
        "over the context": [user, bot] * (engine.config.max_context // 20),
    }
    target = SyncSession(engine.create_session(sampling=GREEDY))
    before = target.snapshot()
    for name, turns in bad.items():
        with pytest.raises(InvalidInputError):
            target.restore(turns)
            pytest.fail(name)
    with pytest.raises(InvalidInputError):
        target.restore([user], voice=torch.full((3, layout.rvq), 5000))
    with pytest.raises(TurnStateError):  # a conversation with turns is not restored over
        source.restore([user, bot])
    after = target.snapshot()
    assert torch.equal(after["rows"], before["rows"]) and after["turns"] == []
    # Both still work.
    target.restore([user, bot])
    assert [r for r, _ in target.snapshot()["turns"]] == ["user", "assistant"]
    assert len(say(source, random_text(gen, realtime_meta, 6), 3)) == 3
