"""A prefill budget changes when rows are fed, never the frames: sessions whose prefill is
spread over many ticks (a few rows each) speak exactly as without a budget (greedy)."""

from __future__ import annotations

import threading

import torch

from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams

GREEDY = SamplingParams.greedy_decoding()


def _speak_together(engine, texts, frames: int):
    sessions = [SyncSession(engine.create_session(sampling=GREEDY)) for _ in texts]
    # min_frames: every turn has frames to compare, whatever the random model.
    turns = [s.start_turn(max_frames=frames, min_frames=2) for s in sessions]
    gate = threading.Event()
    engine.call(gate.wait)  # every turn's text lands before the next tick
    for t, text in zip(turns, texts, strict=True):
        t.push_ids(text)
        t.end_text()
    gate.set()
    out = [(torch.stack([c.codes for c in t]), t.summary.stop) for t in turns]
    return out, engine.stats


def test_a_budgeted_prefill_gives_the_frames_of_an_unbounded_one(make_engine, realtime_golden):
    text = realtime_golden["session.text1"].tolist()
    texts = [text, text[: max(1, len(text) // 2)], text[::-1]]
    free, _ = _speak_together(make_engine(max_sessions=3), texts, 10)
    budget = 3  # fewer rows than any one turn's prompt: every prefill spans ticks
    tight, stats = _speak_together(
        make_engine(max_sessions=3, prefill_budget_rows=budget), texts, 10
    )
    assert stats["prefill_capped_ticks"] > 0
    for (a, stop_a), (b, stop_b) in zip(free, tight, strict=True):
        assert stop_a == stop_b
        assert torch.equal(a, b)
