"""A reply still playing when the user's turn was added after it (the user spoke over its
tail, and the next reply opened): a barge-in that then cuts it, naming it, cuts it past the
user turns, as if they had come after the cut. Before, the cut was a no-op (only the last turn
was cut): the history kept the whole reply while the context kept what was heard."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams

from .helpers import random_frames, random_text


@pytest.mark.parametrize("heard", [3, 0])
@pytest.mark.parametrize("sampling", ["greedy", "seeded"])
def test_a_named_cut_of_a_reply_before_user_turns_equals_the_cut_then_the_user_turns(
    make_engine, realtime_meta, heard, sampling
):
    params = SamplingParams.greedy_decoding() if sampling == "greedy" else SamplingParams()
    gen = torch.Generator().manual_seed(7)
    text, next_text = random_text(gen, realtime_meta, 16), random_text(gen, realtime_meta, 8)
    user = [(random_text(gen, realtime_meta, 5), random_frames(gen, 4, realtime_meta))] * 2
    engine = make_engine(eos_min_frames=8)
    late, cut_first = (SyncSession(engine.create_session(sampling=params, seed=3)) for _ in "ab")
    for s in (late, cut_first):
        s.say(ids=random_text(torch.Generator().manual_seed(1), realtime_meta, 6), max_frames=4)
    _, reply = late.say(ids=text, max_frames=8, min_frames=8)
    for ids, frames in user:
        late.add_user_turn(ids, frames)
    cut = late.interrupt(heard, turn_id=reply.turn_id)
    cut_first.say(ids=text, max_frames=8, min_frames=8)
    my_cut = cut_first.interrupt(heard)
    for ids, frames in user:
        cut_first.add_user_turn(ids, frames)
    assert (cut.stop, cut.heard_frames, cut.spoken_text) == (
        my_cut.stop,
        my_cut.heard_frames,
        my_cut.spoken_text,
    )
    a, b = late.snapshot(), cut_first.snapshot()
    assert a["turn_frames"] == b["turn_frames"] and torch.equal(a["rows"], b["rows"])
    # The next reply (prefilled again past the cut; the noise rolled back) is the same.
    replies = [s.say(ids=next_text, max_frames=5, min_frames=5)[0] for s in (late, cut_first)]
    assert all(torch.equal(x.codes, y.codes) for x, y in zip(*replies, strict=True))
    assert late.snapshot()["cache_len"] == cut_first.snapshot()["cache_len"]


def test_an_unnamed_cut_after_a_user_turn_cuts_nothing(make_engine, realtime_meta):
    """Unnamed, a cut means the last turn (as it always did): a user turn is not cut."""
    gen = torch.Generator().manual_seed(8)
    s = SyncSession(make_engine().create_session(sampling=SamplingParams.greedy_decoding()))
    s.say(ids=random_text(gen, realtime_meta, 12), max_frames=6, min_frames=6)
    s.add_user_turn(random_text(gen, realtime_meta, 4), random_frames(gen, 3, realtime_meta))
    before = s.snapshot()
    assert s.interrupt(2) is None
    assert torch.equal(s.snapshot()["rows"], before["rows"])
