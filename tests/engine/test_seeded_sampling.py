"""Seeded sampling in the engine: a session's noise is keyed by its seed and its frame counter
(made inside the step), so its frames are reproducible and do not depend on its company, nor,
after a barge-in, on how far the cut reply had run past what was heard."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine import HistoryCursor
from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams, generate_turn

SAMPLED = SamplingParams()


def _say(session: SyncSession, text: list[int], frames: int) -> torch.Tensor:
    chunks, summary = session.say(ids=text, max_frames=frames, min_frames=frames)
    assert summary.stop == "max_frames" and len(chunks) == frames
    return torch.stack([c.codes for c in chunks])


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_sampled_turn_equals_generate_turn_with_the_same_seed(
    make_engine, tiny_model, golden_layout, realtime_golden, graphed
):
    """The engine's first turn of a fresh session is ``generate_turn(seed=...)``'s: frame k's
    noise is keyed by (seed, k) in both."""
    engine = make_engine(graphed_decode=graphed)
    session = SyncSession(engine.create_session(sampling=SAMPLED, seed=77))
    text = realtime_golden["session.text1"].tolist()
    got = _say(session, text, 12)
    rows = session.snapshot()["rows"]
    prompt = rows[: rows.shape[0] - 11 - 2]  # less the 11 step rows and the 2 closing rows
    ref = generate_turn(
        tiny_model,
        tiny_model.new_cache(1, prompt.shape[0] + 16),
        0,
        prompt,
        text[golden_layout.lead(len(text)) :],
        12,
        SAMPLED,
        seed=77,
        min_frames=12,
    )
    assert torch.equal(got, ref.frames)
    greedy = generate_turn(
        tiny_model,
        tiny_model.new_cache(1, prompt.shape[0] + 16),
        0,
        prompt,
        text[golden_layout.lead(len(text)) :],
        12,
        SamplingParams(greedy=True),
        min_frames=12,
    )
    assert not torch.equal(got, greedy.frames)  # really sampled


def test_reseeding_reproduces_and_other_seeds_differ(make_engine, realtime_golden):
    engine = make_engine(max_sessions=3)
    text = realtime_golden["session.text1"].tolist()
    a = SyncSession(engine.create_session(sampling=SAMPLED, seed=5))
    first = _say(a, text, 10)
    # Another session reseeded to 5 before it speaks: the same turn, frame for frame.
    b = SyncSession(engine.create_session(sampling=SAMPLED, seed=9))
    b.set_sampling(SAMPLED, seed=5)
    assert torch.equal(_say(b, text, 10), first)
    # The counter moves on with every frame: the same turn again draws other noise ...
    a.reset()
    again = _say(a, text, 10)
    assert not torch.equal(again, first)
    # ... and a reseed restarts it.
    a.reset()
    a.set_sampling(SAMPLED, seed=5)
    assert torch.equal(_say(a, text, 10), first)
    c = SyncSession(engine.create_session(sampling=SAMPLED, seed=6))
    assert not torch.equal(_say(c, text, 10), first)


def _speaking(session: SyncSession, text: list[int], out: int):
    """A reply of 40 frames with its first ``out`` read (the engine may have drawn more): the
    turn and the iterator of its frames."""
    turn = session.start_turn(40, min_frames=40)
    turn.push_ids(text)
    turn.end_text()
    frames = iter(turn)
    for _ in range(out):
        next(frames)
    return turn, frames


def _cut_reply(session: SyncSession, text: list[int], made: int, heard: int, live: bool) -> None:
    """A reply cut to ``heard`` frames: ``live``, one of 40 frames cut once ``made`` of them
    have come out (the engine has drawn at least that many: how many more depends on timing);
    else one of ``made`` frames cut after it ended."""
    if not live:
        _say(session, text, made)
        session.interrupt(heard)
        return
    _speaking(session, text, made)
    session.interrupt(heard)


# how a reply was cut: (live, frames made before the barge-in in each of two runs, heard)
CUTS = {
    "while it speaks": (True, (4, 16), 4),
    "while it speaks, nothing heard": (True, (4, 16), 0),
    "after it ended": (False, (12, 7), 4),
}


@pytest.mark.parametrize("case", list(CUTS))
def test_the_noise_after_a_barge_in_depends_on_what_was_heard_not_on_when(
    make_engine, realtime_golden, case
):
    """A barge-in cuts a reply to what was heard; the frames drawn past it never were, so the
    noise goes on from frame ``heard``: the next reply is the same however far the cut reply
    had run (and the counter a client restores from says so)."""
    live, made, heard = CUTS[case]
    engine = make_engine(max_sessions=2)
    text1 = realtime_golden["session.text1"].tolist()
    text2 = realtime_golden["session.text2"].tolist()
    replies = []
    for n in made:
        s = SyncSession(engine.create_session(sampling=SAMPLED, seed=11))
        _cut_reply(s, text1, n, heard, live)
        assert s.history_delta(HistoryCursor()).noise_counter == heard
        replies.append(_say(s, text2, 10))
        s.close()
    assert torch.equal(*replies)


def test_a_reply_heard_whole_rolls_nothing_back(make_engine, realtime_golden):
    s = SyncSession(make_engine().create_session(sampling=SAMPLED, seed=3))
    _say(s, realtime_golden["session.text1"].tolist(), 7)
    assert s.interrupt(7) is None  # all of it was heard
    assert s.history_delta(HistoryCursor()).noise_counter == 7


@pytest.mark.parametrize("heard", [0, 4])
def test_a_reseed_in_the_middle_of_a_cut_reply_keeps_the_noise_of_what_was_heard(
    make_engine, realtime_golden, heard
):
    """A reseed while a reply speaks (8 of its frames out, the engine may have drawn more),
    then a barge-in that heard no more than was out at the reseed: the frames drawn since the
    reseed were never heard, so the noise goes on from the new seed's frame 0, however far the
    reply ran on (before: from the frames drawn since the reseed, which depends on when)."""
    engine = make_engine(max_sessions=2)
    text1 = realtime_golden["session.text1"].tolist()
    text2 = realtime_golden["session.text2"].tolist()
    replies = []
    for made in (12, 30):
        s = SyncSession(engine.create_session(sampling=SAMPLED, seed=11))
        frames = _speaking(s, text1, 8)[1]
        s.set_sampling(SAMPLED, seed=21)
        for _ in range(made - 8):
            next(frames)
        s.interrupt(heard)
        assert s.history_delta(HistoryCursor()).noise_counter == 0
        replies.append(_say(s, text2, 10))
        s.close()
    assert torch.equal(*replies)


@pytest.mark.parametrize("reseed", [False, True], ids=["same-seed", "reseeded"])
@pytest.mark.parametrize("heard", [0, 4])
def test_a_back_to_back_barge_in_keeps_the_noise_of_what_was_heard_of_the_first_reply(
    make_engine, realtime_golden, heard, reseed
):
    """Two replies, the second opened behind the first (pipecat queues the next reply while
    one plays) and drawing when the barge-in comes (``reseed``: reseeded as it draws): the
    second is cut to nothing, then the first to what was heard. The draws of both past that
    never were: the next reply is that of a session that said the first and heard as much of
    it (before, only the newest turn's draws were rolled back, so the first's stayed)."""
    engine = make_engine(max_sessions=2)
    text1 = realtime_golden["session.text1"].tolist()
    text2 = realtime_golden["session.text2"].tolist()
    replies = []
    for back_to_back in (True, False):
        s = SyncSession(engine.create_session(sampling=SAMPLED, seed=11))
        first = s.say(ids=text1, max_frames=8, min_frames=8)[1].turn_id
        if back_to_back:
            turn = _speaking(s, text2, 5)[0]
            if reseed:
                s.set_sampling(SAMPLED, seed=21)
            assert s.interrupt(0, turn_id=turn.turn_id).heard_frames == 0
        elif reseed:
            s.set_sampling(SAMPLED, seed=21)
        assert s.interrupt(heard, turn_id=first).heard_frames == heard
        counter = s.history_delta(HistoryCursor()).noise_counter
        assert counter == (0 if reseed else heard)
        replies.append(_say(s, text2, 10))
        s.close()
    assert torch.equal(*replies)


@pytest.mark.parametrize("heard", [0, 3])
@pytest.mark.parametrize("case", ["max_frames", "eos", "back_to_back"])
def test_a_restored_history_cuts_its_last_reply_as_the_one_it_came_from(
    make_engine, realtime_golden, case, heard
):
    """A history restored elsewhere (its server lost) with its ``turn_noise``: a cut of its
    last reply there keeps only the heard frames' draws, as on the session it came from, so
    the next reply is the same on both. ``eos``: a reply that ended itself (its EOS frame
    drew too, and is in no record); ``back_to_back``: the history taken while the next reply
    drew (its server lost with it), which the source cuts to nothing first."""
    engine = make_engine(max_sessions=3)
    text1 = realtime_golden["session.text1"].tolist()
    text2 = realtime_golden["session.text2"].tolist()
    source = SyncSession(engine.create_session(sampling=SAMPLED, seed=11))
    if case == "eos":
        source.say(ids=text1, max_frames=40)
    else:
        _say(source, text1, 8)
    turn = None
    if case == "back_to_back":
        turn = _speaking(source, text2, 5)[0]
    change = source.history_delta(HistoryCursor(), full=True)
    assert change.turn_noise == 0  # the first reply's frame 0
    restored = SyncSession(engine.create_session(sampling=SAMPLED, seed=11))
    noise = change.noise_counter
    if turn is not None:  # lost with the server, heard none: the restore's counter is its start
        source.interrupt(0, turn_id=turn.turn_id)
        noise = source.history_delta(HistoryCursor()).noise_counter
    restored.restore(change.turns, change.voice, change.seed, noise, change.turn_noise)
    replies, counters = [], []
    for s in (source, restored):
        s.interrupt(heard)
        counters.append(s.history_delta(HistoryCursor()).noise_counter)
        replies.append(_say(s, text2, 10))
        s.close()
    assert counters[0] == counters[1] and (case == "eos" or counters[0] == heard)
    assert torch.equal(*replies)
