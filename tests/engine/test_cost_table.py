"""EngineConfig.cost_table: a fresh engine paces and refuses from a measured cost table
instead of admitting everyone until its own calls have taught it."""

from __future__ import annotations

from pathlib import Path

import pytest

from moss_pipecat.engine.commands import CreateSession
from moss_pipecat.engine.costs import CostModel
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.errors import CapacityError, OverloadedError

from ..cost_tables import DEADLINE_S, write_cost_table

H200 = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h200-2026-11-26"


def test_a_seeded_engine_refuses_the_conversation_that_would_miss_the_deadline(
    make_engine, tmp_path
):
    table = write_cost_table(tmp_path / "costs.json", decode_s=0.02)
    engine = make_engine(max_sessions=4, frame_deadline_s=DEADLINE_S, cost_table=table)
    engine.submit("a", CreateSession()).result(10)
    engine.submit("b", CreateSession()).result(10)
    with pytest.raises(OverloadedError, match="80 ms frame deadline") as e:
        engine.submit("c", CreateSession()).result(10)
    assert isinstance(e.value, CapacityError)  # the wire's and the server's capacity refusal
    assert sorted(engine.session_ids) == ["a", "b"]
    assert engine.stats["refused_overload"] == 1


def test_without_a_table_a_fresh_engine_admits_until_it_has_learned(make_engine):
    engine = make_engine(max_sessions=4, frame_deadline_s=DEADLINE_S)
    for sid in "abcd":
        engine.submit(sid, CreateSession()).result(10)
    assert engine.stats["refused_overload"] == 0


def test_the_gpu_bench_folder_seeds_the_same_costs_as_priming_by_hand(make_engine):
    engine = make_engine(max_sessions=2, frame_deadline_s=DEADLINE_S, cost_table=str(H200))
    expected = CostModel()
    DeviceCosts.load(H200).prime(expected)
    got = engine.call(lambda: engine.core.costs.table()).result(10)
    assert got == expected.table()
    assert set(got) == {"codec", "decode", "first_frame", "prefill"}
