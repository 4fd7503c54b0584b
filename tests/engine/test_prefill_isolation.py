"""A failure in one session's prefill path fails that session's turn only.

Each case injects a fault for one session (the culprit) at one step of the tick's prefill path,
while several bystanders prefill in the same batch; the bystanders' turns must come out exactly
as they would alone, and the culprit's session must work again afterwards.
"""

from __future__ import annotations

import threading

import pytest
import torch

from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams

GREEDY = SamplingParams.greedy_decoding()
BYSTANDERS = 5


class Fault(RuntimeError):
    pass


def _raise_for(culprit_sid, real, batched: bool):
    """``real`` wrapped to raise for the culprit (its first argument is a session state or a
    batch of them)."""

    def wrapped(first, *args, **kwargs):
        states = first if batched else [first]
        if any(s.session_id == culprit_sid for s in states):
            raise Fault("simulated fault in the culprit's prefill path")
        return real(first, *args, **kwargs)

    return wrapped


def _collect(turns, timeout: float = 30.0):
    """Every turn's chunks and summary; fails (instead of hanging) if a turn never ends."""
    results: list = [None] * len(turns)

    def run():
        for i, t in enumerate(turns):
            results[i] = (list(t), t.summary)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        pytest.fail("a turn never ended (is the engine thread alive?)")
    return results


CASES = {
    # The step that turns a turn's text into prompt rows (one session at a time).
    "begin_prefill": lambda s, sid: ("begin_prefill", _raise_for(sid, s.begin_prefill, False)),
    # The batched backbone call over every prefilling session.
    "prefill_chunk": lambda s, sid: ("prefill_chunk", _raise_for(sid, s.prefill_chunk, True)),
    # The batched first-frame call (local transformer + sampling after the prefill).
    "first_frames": lambda s, sid: ("first_frames", _raise_for(sid, s.first_frames, True)),
    # The per-session bookkeeping of the first frame (room for the next step).
    "deliver_first": lambda s, sid: ("room_for_step", _raise_for(sid, s.room_for_step, False)),
}


@pytest.mark.parametrize("where", [*CASES, "fail_turn_too"])
def test_a_fault_in_one_sessions_prefill_fails_only_its_turn(
    make_engine, realtime_golden, monkeypatch, where
):
    text = realtime_golden["session.text1"].tolist()
    engine = make_engine(max_sessions=BYSTANDERS + 2)
    alone = SyncSession(engine.create_session(sampling=GREEDY))
    ref_chunks, ref_summary = alone.say(ids=text, max_frames=12, min_frames=12)
    ref = torch.stack([c.codes for c in ref_chunks])
    alone.close()

    sessions = [SyncSession(engine.create_session(sampling=GREEDY)) for _ in range(BYSTANDERS + 1)]
    culprit = sessions[2]
    scheduler = engine.core.scheduler
    if where == "fail_turn_too":  # the prefill fails, and so does rolling its turn back
        name, fn = CASES["prefill_chunk"](scheduler, culprit.id)
        monkeypatch.setattr(scheduler, name, fn)
        core = engine.core
        monkeypatch.setattr(core, "close_record", _raise_for(culprit.id, core.close_record, False))
    else:
        name, fn = CASES[where](scheduler, culprit.id)
        monkeypatch.setattr(scheduler, name, fn)

    turns = [s.start_turn(max_frames=12, min_frames=12) for s in sessions]
    gate = threading.Event()
    engine.call(gate.wait)  # hold the engine so every prefill lands in one tick
    for t in turns:
        t.push_ids(text)
        t.end_text()
    gate.set()
    results = _collect(turns)

    chunks, summary = results[2]
    assert summary.stop == "error" and isinstance(summary.error, Fault), summary
    for i, (chunks, summary) in enumerate(results):
        if i == 2:
            continue
        assert summary.error is None, (i, summary)
        assert summary.stop == ref_summary.stop
        assert torch.equal(torch.stack([c.codes for c in chunks]), ref), f"bystander {i}"

    monkeypatch.undo()
    # The culprit's session lives on, and its next turn is as if the failed one never was.
    chunks, summary = culprit.say(ids=text, max_frames=12, min_frames=12)
    assert summary.error is None and torch.equal(torch.stack([c.codes for c in chunks]), ref)
    assert engine.alive
    for s in sessions:
        s.close()
