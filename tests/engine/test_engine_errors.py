"""Bad input and failures: clear errors or defined results, and other sessions unaffected."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine.session import Session, SyncSession
from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    SessionClosedError,
    TurnStateError,
    UnknownSessionError,
)
from moss_pipecat.model import SamplingParams

GREEDY = SamplingParams.greedy_decoding()


def _codes(chunks):
    return torch.stack([c.codes for c in chunks])


def _same(chunks, summary, ref) -> bool:
    return summary.stop == ref[1] and torch.equal(_codes(chunks), ref[0])


@pytest.fixture
def witness(realtime_golden):
    """A well-behaved session's expected output, to check that it is never disturbed."""
    text = realtime_golden["session.text1"].tolist()

    def expected(engine):
        s = SyncSession(engine.create_session(sampling=GREEDY))
        chunks, summary = s.say(ids=text, max_frames=20, min_frames=20)
        s.close()
        return _codes(chunks), summary.stop

    return text, expected


def test_bad_requests_give_clear_errors_and_lose_nothing(make_engine, realtime_golden, witness):
    text, expected = witness
    engine = make_engine(max_sessions=3)
    rvq = engine.layout.rvq
    ref = expected(engine)
    good = SyncSession(engine.create_session(sampling=GREEDY))
    bad = SyncSession(engine.create_session(sampling=GREEDY))
    turn = good.start_turn(max_frames=20, min_frames=20)  # runs while the other session misbehaves
    turn.push_ids(text[:5])

    # Empty text: a defined no-op turn.
    chunks, summary = bad.say(ids=[])
    assert chunks == [] and summary.stop == "empty"
    # Text ids outside the vocabulary end that turn with an error; the session lives on.
    chunks, summary = bad.say(ids=[1, 2, 10**6])
    assert summary.stop == "error" and isinstance(summary.error, InvalidInputError)
    assert bad.snapshot()["turns"] == []
    # Interrupting when nothing is being said is a no-op.
    assert bad.interrupt(5) is None
    with pytest.raises(InvalidInputError):
        bad.interrupt(-1)
    # Turn state errors.
    t = bad.start_turn()
    with pytest.raises(TurnStateError):
        bad.start_turn()
    with pytest.raises(TurnStateError):
        bad.add_user_turn([1, 2], torch.zeros(3, rvq, dtype=torch.long))
    with pytest.raises(TurnStateError):
        bad.set_voice(None)
    t.end_text()
    with pytest.raises(TurnStateError):
        t.push_ids([1])
    assert t.wait_sync().stop == "empty"
    # User turns: audio must be there and valid, ids in range.
    for ids, frames in [
        ([1], torch.zeros(0, rvq, dtype=torch.long)),
        ([1], torch.full((3, rvq), max(5000, engine.layout.audio_eos + 1))),
        ([1], torch.zeros(3, rvq - 1, dtype=torch.long)),
        ([1], torch.zeros(3, rvq)),
        ([10**6], torch.zeros(3, rvq, dtype=torch.long)),
    ]:
        with pytest.raises(InvalidInputError):
            bad.add_user_turn(ids, frames)
    with pytest.raises(InvalidInputError):
        bad.set_voice(torch.zeros(4))
    with pytest.raises(InvalidInputError):
        bad.start_turn(max_frames=0)
    with pytest.raises(InvalidInputError):
        bad.set_sampling(SamplingParams(repetition_window=10_000))
    assert bad.snapshot()["turns"] == []  # nothing half-added

    # Unknown and closed sessions.
    with pytest.raises(UnknownSessionError):
        SyncSession(Session(engine, "no-such-session")).snapshot()
    t = bad.start_turn()
    bad.close()
    assert t.wait_sync().stop == "closed"
    with pytest.raises(SessionClosedError):
        t.push_ids([1])
    with pytest.raises(SessionClosedError):
        bad.start_turn()
    bad.close()  # closing twice is fine

    turn.push_ids(text[5:])
    turn.end_text()
    assert _same(list(turn), turn.summary, ref)


def test_capacity_limit_and_slot_reuse(make_engine):
    engine = make_engine(max_sessions=2)
    a = engine.create_session()
    engine.create_session()
    with pytest.raises(CapacityError):
        engine.create_session()
    with pytest.raises(InvalidInputError):
        engine.create_session(session_id=a.id)
    SyncSession(a).close()
    engine.create_session()  # the freed slot is reused
    assert len(engine.session_ids) == 2


def test_a_failing_session_does_not_hurt_the_others(make_engine, tiny_model, monkeypatch, witness):
    text, expected = witness
    engine = make_engine(max_sessions=3)
    ref = expected(engine)
    sessions = [SyncSession(engine.create_session(sampling=GREEDY)) for _ in range(3)]
    doomed = engine.core.sessions[sessions[1].id].slot
    real = tiny_model.backbone

    def flaky(rows, cache, slots=None, *args, **kwargs):
        if slots is not None and doomed in slots.tolist():
            raise RuntimeError("simulated device fault")
        return real(rows, cache, slots, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "backbone", flaky)
    turns = [s.start_turn(max_frames=20, min_frames=20) for s in sessions]
    for t in turns:
        t.push_ids(text)
        t.end_text()
    results = [(list(t), t.summary) for t in turns]
    assert results[1][1].stop == "error" and "simulated" in str(results[1][1].error)
    for chunks, summary in (results[0], results[2]):
        assert _same(chunks, summary, ref)
    monkeypatch.setattr(tiny_model, "backbone", real)
    # The failed session rolled back and works again.
    assert sessions[1].snapshot()["turns"] == []
    chunks, summary = sessions[1].say(ids=text, max_frames=20, min_frames=20)
    assert _same(chunks, summary, ref)


async def test_async_session_creation_and_liveness(make_engine):
    engine = make_engine(max_sessions=1)
    assert engine.alive
    session = await engine.acreate_session(sampling=GREEDY)
    assert engine.session_ids == [session.id]
    with pytest.raises(CapacityError):
        await engine.acreate_session()
    await session.close()
    engine.shutdown()
    assert not engine.alive
