"""The real scheduler on a simulated device (virtual clock, H200 cost table): hundreds of
calls on a CPU, the prefill budget, fairness and admission under load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from moss_pipecat.engine import EngineConfig
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.engine.pacing import admits
from moss_pipecat.testing.sim_traffic import CallPlan, run_traffic
from moss_pipecat.testing.simulated_device import simulated_engine

H200 = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h200-2026-11-26"


@pytest.fixture(scope="module")
def costs() -> DeviceCosts:
    return DeviceCosts.load(H200)


def _engine(costs, prime=False, **config):
    clock = VirtualClock()
    config.setdefault("lookahead_s", None)
    cfg = EngineConfig(max_context=2048, context_budget=1900, turn_reserve=200, **config)
    engine = simulated_engine(costs, cfg, clock)
    if prime:
        costs.prime(engine.core.costs)
    return engine, clock


def test_the_cost_table_is_read_from_the_gpu_bench_json(costs, tmp_path):
    assert costs.cost("decode", 64) == pytest.approx(0.019518311500000607)  # step.json, graphed
    assert costs.cost("codec", 160) == pytest.approx(0.02251083250000363)  # codec.json, graphed
    assert costs.cost("decode", 36) == pytest.approx((0.013534449 + 0.0195183115) / 2, rel=1e-6)
    assert costs.cost("prefill", 0) == 0.0
    costs.save(tmp_path / "table.json")
    again = DeviceCosts.load(tmp_path / "table.json")
    assert again.points == costs.points


def test_a_fused_table_reads_the_fused_runs_and_the_plain_ones_otherwise():
    run = H200.parent / "h200-2026-12-04"  # has step_fused.json and codec_fused.json
    fused, plain = DeviceCosts.load(run, fused=True), DeviceCosts.load(run)
    assert fused.cost("decode", 1) == pytest.approx(0.008238495499995224)  # step_fused.json
    assert fused.cost("codec", 160) == pytest.approx(0.01916915900000049)  # codec_fused.json
    assert plain.cost("decode", 1) == pytest.approx(0.011693370000003256)  # step.json
    # No engine_fused.json in that run: the prefill's fixed cost is the plain one-session
    # TTFA less the fused step and codec.
    saved = plain.cost("decode", 1) + plain.cost("codec", 1) - fused.cost("decode", 1)
    saved -= fused.cost("codec", 1)
    assert fused.cost("prefill", 1) == pytest.approx(plain.cost("prefill", 1) + saved)
    assert "step_fused, codec_fused)" in fused.source
    assert "(NVIDIA H200; step, codec)" in plain.source
    # A run without fused figures gives its plain ones.
    assert DeviceCosts.load(H200, fused=True).points == DeviceCosts.load(H200).points


def test_a_run_lacking_a_benchmark_says_which_and_fused_figures_alone_serve_both(tmp_path):
    fused_only = H200.parent / "h200-2026-12-04b"  # step_fused, codec_fused, engine_fused
    assert DeviceCosts.load(fused_only).points == DeviceCosts.load(fused_only, fused=True).points
    for name in ("step", "codec", "engine"):
        shutil.copy(H200 / f"{name}.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lacks prefill\.json: .* gpu_bench\.sh steps"):
        DeviceCosts.load(tmp_path)
    (tmp_path / "engine.json").rename(tmp_path / "prefill.json")
    with pytest.raises(FileNotFoundError, match=r"engine\.json or engine_fused\.json or capa"):
        DeviceCosts.load(tmp_path)


def test_300_calls_at_once_run_through_the_real_scheduler(costs):
    engine, clock = _engine(costs, max_sessions=300)
    result = run_traffic(engine, clock, [CallPlan(0.0, frames=50) for _ in range(300)])
    assert (result.admitted, result.refused, result.starved) == (300, 0, 0)
    assert result.stops == {"max_frames": 300}
    assert result.frames == 300 * 50 and len(result.ttfa_s) == 300
    assert engine.core.stats["frames"] == 300 * 50
    # Every call's first audio comes from the first tick (one prefill of all 300 turns).
    assert len(set(result.ttfa_s)) == 1
    assert result.tick_prefill_rows[0] == engine.core.stats["prefill_rows"]
    assert clock.now() == pytest.approx(result.virtual_s)


def _traffic(n: int, seed_spread: float = 3.0) -> list[CallPlan]:
    """Calls arriving over ``seed_spread`` s, three turns each with user speech between."""
    return [
        CallPlan(
            seed_spread * i / n, turns=(24, 40, 12), pause_s=0.5 + (i % 5) / 10, user_frames=30
        )
        for i in range(n)
    ]


def test_the_prefill_budget_holds_every_tick_and_no_turn_starves(costs):
    budget = 48
    engine, clock = _engine(costs, max_sessions=120, prefill_budget_rows=budget)
    result = run_traffic(engine, clock, _traffic(120))
    assert max(result.tick_prefill_rows) == budget  # the budget binds, and holds
    assert result.starved == 0
    assert len(result.ttfa_s) == 3 * 120
    assert set(result.stops) <= {"eos", "max_frames"}
    assert engine.core.stats["prefill_capped_ticks"] > 0


def test_a_budget_changes_when_frames_come_never_what_they_are(costs):
    """Same traffic with and without a budget: the same frames in total, every turn served."""
    runs = []
    for budget in (None, 32):
        engine, clock = _engine(costs, max_sessions=60, prefill_budget_rows=budget)
        r = run_traffic(engine, clock, _traffic(60, 1.0))
        runs.append(
            (r.frames, sorted(r.stops.items()), r.starved, engine.core.stats["prefill_rows"])
        )
    assert runs[0] == runs[1]


def test_admission_refuses_before_running_calls_miss_their_deadline(costs):
    deadline = 0.080
    engine, clock = _engine(costs, prime=True, max_sessions=400, frame_deadline_s=deadline)
    plans = [CallPlan(0.0, frames=100) for _ in range(150)]
    plans += [CallPlan(2.0, frames=50) for _ in range(150)]  # a burst onto running calls
    result = run_traffic(engine, clock, plans)
    assert result.refused > 0 and result.admitted + result.refused == 300
    assert engine.core.stats["refused_overload"] == result.refused
    assert result.starved == 0
    assert max(result.gaps_s) <= deadline  # no running call ever waited past its frame
    # The refusals are admission's: at admitted + 1 its projection no longer fits.
    core, n = engine.core, result.admitted + 1
    assert not admits(core.costs, deadline, n, True, False, core.runner.batch_of)


def test_without_admission_the_same_burst_breaks_the_deadline(costs):
    engine, clock = _engine(costs, max_sessions=400)
    plans = [CallPlan(0.0, frames=100) for _ in range(150)]
    plans += [CallPlan(2.0, frames=50) for _ in range(150)]
    result = run_traffic(engine, clock, plans)
    assert result.refused == 0
    assert max(result.gaps_s) > 0.080
