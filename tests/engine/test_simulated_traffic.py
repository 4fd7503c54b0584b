"""The simulated device's codec stream and phone-call traffic (``testing.call_traffic``):
what the capacity benchmark's simulated figures rest on, in virtual time."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from moss_pipecat.engine import EngineConfig
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.testing.call_traffic import Arrival, CallShape, poisson_arrivals, run_calls
from moss_pipecat.testing.sim_traffic import CallPlan, run_traffic
from moss_pipecat.testing.simulated_device import simulated_engine

H200 = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h200-2026-11-26"


@pytest.fixture(scope="module")
def costs() -> DeviceCosts:
    return DeviceCosts.load(H200)


def _engine(costs, **config):
    clock = VirtualClock()
    cfg = EngineConfig(
        max_context=2048, context_budget=1900, turn_reserve=200, lookahead_s=None, **config
    )
    return simulated_engine(costs, cfg, clock), clock


@pytest.mark.parametrize("overlap", [False, True])
def test_a_decode_tick_costs_the_sum_or_with_overlap_the_longer_of_step_and_codec(costs, overlap):
    n = 64
    engine, clock = _engine(costs, max_sessions=n, overlap_codec=overlap)
    r = run_traffic(engine, clock, [CallPlan(0.0, frames=12) for _ in range(n)])
    assert r.frames == 12 * n
    decode, codec = costs.cost("decode", n), costs.cost("codec", n)
    steady = Counter(round(t, 9) for t in r.tick_s).most_common(1)[0][0]  # decode-only ticks
    assert steady == pytest.approx(max(decode, codec) if overlap else decode + codec)
    # Same frames, same chunks: only when they arrive differs.
    assert r.stops == {"max_frames": n} and len(r.gaps_s) == 11 * n


def test_phone_calls_alternate_user_turns_and_streamed_replies_with_barge_ins(costs):
    engine, clock = _engine(costs, max_sessions=12, overlap_codec=True)
    rng = random.Random(3)
    arrivals = [Arrival(t) for t in poisson_arrivals(12, 2.0, rng)]
    shape = CallShape(barge_in=0.5)
    r = run_calls(engine, clock, arrivals, shape, hang_up_s=20.0, measure_from_s=0.0, seed=3)
    g = r.groups["calls"]
    assert (g.admitted, g.refused, r.peak_calls) == (12, 0, 12)
    assert g.replies >= 12 * 3 and 0 < g.barge_ins < g.replies
    assert len(g.ttfa_s) == g.replies  # every reply spoke
    assert all(0 < gap for _, gap in g.gaps)
    assert engine.core.sessions == {}  # every call hung up (closed)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_codec_beside_the_decode_step_saves_its_share_of_the_time(costs, share):
    n = 64
    clock = VirtualClock()
    cfg = EngineConfig(
        max_sessions=n, max_context=2048, context_budget=1900, turn_reserve=200,
        lookahead_s=None, overlap_codec=True,
    )  # fmt: skip
    engine = simulated_engine(costs, cfg, clock, overlap_share=share)
    r = run_traffic(engine, clock, [CallPlan(0.0, frames=12) for _ in range(n)])
    decode, codec = costs.cost("decode", n), costs.cost("codec", n)
    steady = Counter(round(t, 9) for t in r.tick_s).most_common(1)[0][0]
    assert steady == pytest.approx(max(decode, codec) if share == 1.0 else decode + codec)


def test_admission_holds_the_running_calls_deadline_under_overloading_traffic():
    """More phone calls than the device serves (Poisson arrivals, replies, barge-ins), on the
    fused H200 costs with the codec stream sharing the GPU as measured: some are refused and
    every admitted call keeps its p99 frame gap under the 80 ms deadline."""
    from moss_pipecat.testing.simulated_device import H200_OVERLAP_SHARE

    run = DeviceCosts.load(H200.parent / "h200-2026-12-04b", fused=True)
    n, clock = 300, VirtualClock()
    cfg = EngineConfig(
        max_sessions=n, max_context=1024, context_budget=896, turn_reserve=128,
        lookahead_s=None, frame_deadline_s=0.080, overlap_codec=True,
    )  # fmt: skip
    engine = simulated_engine(run, cfg, clock, overlap_share=H200_OVERLAP_SHARE)
    run.prime(engine.core.costs)
    rng = random.Random(3)
    arrivals = [Arrival(t) for t in poisson_arrivals(n, 4.0, rng)]
    shape = CallShape(frames_per_token=4)
    r = run_calls(engine, clock, arrivals, shape, 10.0, 4.0, seed=3, cut_at_hang_up=True)
    g = r.groups["calls"]
    assert g.refused > 0 and g.admitted + g.refused == n
    assert engine.core.stats["refused_overload"] == g.refused
    gaps = sorted(x for _, x in g.gaps)
    assert gaps[int(0.99 * len(gaps))] < 0.080
