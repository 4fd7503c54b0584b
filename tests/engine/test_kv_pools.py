"""KV pools: memory follows conversation length; moving between pools changes no output."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import SamplingParams

from .helpers import assert_matches_fresh, random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()
POOLS = dict(
    max_sessions=3,
    max_context=512,
    context_budget=500,
    turn_reserve=40,
    kv_pools=((2, 128), (1, 512)),
)


async def _conversation(session, meta, seed: int, turns: int = 4):
    gen = torch.Generator().manual_seed(seed)
    out, capacities = [], []
    for i in range(turns):
        if i:
            await session.add_user_turn(random_text(gen, meta, 6), random_frames(gen, 8, meta))
        text = random_text(gen, meta, 16)
        turn = await session.start_turn(max_frames=30)
        turn.push_ids(text)
        turn.end_text()
        chunks = [c async for c in turn]
        snap = await session.snapshot()
        capacities.append(snap["pool_capacity"])
        out.append((chunks, turn.summary, text, snap))
    return out, capacities


async def test_growing_conversation_moves_to_a_larger_pool_with_identical_output(
    make_engine, realtime_meta
):
    one_pool = make_engine(max_sessions=1, max_context=512, context_budget=500, turn_reserve=40)
    ref, _ = await _conversation(one_pool.create_session(sampling=GREEDY), realtime_meta, 7)
    pooled = make_engine(**POOLS)
    got, capacities = await _conversation(pooled.create_session(sampling=GREEDY), realtime_meta, 7)
    assert capacities[0] == 128 and capacities[-1] == 512  # started small, moved up
    stats = pooled.stats  # counted once, for the one move
    assert stats["pool_moves"] == 1 and stats["turns_dropped_no_slot"] == 0
    assert pooled.kv_slots() == [(128, 2, 0), (512, 1, 1)]
    for (c1, s1, _, snap1), (c2, s2, _, snap2) in zip(ref, got, strict=True):
        assert s1.stop == s2.stop
        assert [c.codes.tolist() for c in c1] == [c.codes.tolist() for c in c2]  # may be none
        assert torch.equal(snap1["rows"], snap2["rows"])
        assert snap2["cache_len"] == snap2["device_cache_len"]


async def test_without_a_free_larger_slot_the_conversation_trims_to_its_slot(
    make_engine, tiny_model, golden_layout, realtime_meta
):
    engine = make_engine(**POOLS)
    a = engine.create_session(sampling=GREEDY)
    engine.create_session(sampling=GREEDY)  # the other small slot
    engine.create_session(sampling=GREEDY)  # takes the only large slot
    out, capacities = await _conversation(a, realtime_meta, 9, turns=5)
    assert set(capacities) == {128}
    for chunks, summary, text, snap in out:
        assert snap["rows"].shape[0] <= 128 and snap["cache_len"] <= 128
        assert_matches_fresh(tiny_model, golden_layout, snap["rows"], chunks, summary, text, 30)
    assert len(out[-1][3]["turns"]) < 9  # older turns were dropped to fit
    # Counted as dropped for want of a slot (not past the budget, 500): what an operator
    # watches to size the pools; nothing moved.
    dropped = 9 - len(out[-1][3]["turns"])
    assert engine.stats["turns_dropped_no_slot"] == dropped
    assert engine.stats["turns_dropped_budget"] == 0 and engine.stats["pool_moves"] == 0
    assert engine.kv_slots() == [(128, 2, 2), (512, 1, 1)]


async def test_a_reply_that_fills_its_slot_with_no_larger_one_free_ends_there_counted(
    make_engine, realtime_meta
):
    # No per-turn cap below the slot's end (a turn is capped at 40 + 8 per token by default).
    engine = make_engine(**POOLS, min_turn_frames=300, max_turn_frames=300)
    a = engine.create_session(sampling=GREEDY)
    engine.create_session(sampling=GREEDY)  # the other small slot
    engine.create_session(sampling=GREEDY)  # takes the only large slot
    # More frames than the 128-position slot holds.
    turn = await a.start_turn(max_frames=200, min_frames=200)
    turn.push_ids(random_text(torch.Generator().manual_seed(3), realtime_meta, 8))
    turn.end_text()
    frames = [c async for c in turn]
    snap = await a.snapshot()
    assert turn.summary.stop == "max_frames" and 0 < len(frames) < 128
    assert snap["rows"].shape[0] <= 128 and snap["pool_capacity"] == 128
    assert engine.stats["replies_cut_no_slot"] == 1 and engine.stats["pool_moves"] == 0


def test_pool_config_is_checked():
    from moss_pipecat.engine.config import EngineConfig

    def config(max_sessions: int, max_context: int, pools) -> EngineConfig:
        return EngineConfig(
            max_sessions=max_sessions,
            max_context=max_context,
            context_budget=500,
            turn_reserve=40,
            kv_pools=pools,
        )

    with pytest.raises(InvalidInputError, match="add up"):
        config(4, 512, ((2, 128), (1, 512)))
    with pytest.raises(InvalidInputError, match="largest"):
        config(3, 1024, ((2, 128), (1, 512)))
    assert config(3, 512, ((1, 512), (2, 128))).pools() == [(2, 128), (1, 512)]
