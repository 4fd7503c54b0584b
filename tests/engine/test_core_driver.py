"""``testing.core_driver`` drives a real engine's core on the caller's thread (the real-time
capacity benchmark, ``bench_capacity.py --traffic``): it must tick as the engine's own thread
does, or the prepared graph buckets' static buffers (inference tensors) cannot be updated."""

from __future__ import annotations

from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.testing.call_traffic import Arrival, CallShape, run_calls


def test_calls_on_a_real_engine_with_prepared_graph_buckets(tiny_model, golden_layout, tiny_codec):
    config = EngineConfig(
        max_sessions=2, max_context=512, context_budget=448, turn_reserve=64, lookahead_s=None,
        graphed_decode=True, eos_min_frames=4,
    )  # fmt: skip  # a random model may end a reply on its first frame: no gap to measure
    clock = VirtualClock()
    engine = MossEngine(tiny_model, golden_layout, codec=tiny_codec, config=config, clock=clock)
    assert engine.capture_graphs() > 0  # buckets prepared before the driver's first tick
    shape = CallShape(reply_tokens=(4, 6), frames_per_token=1.0, barge_in=0.0)
    r = run_calls(
        engine, clock, [Arrival(0.0), Arrival(0.05)], shape, hang_up_s=1.5, cut_at_hang_up=True
    )
    g = r.groups["calls"]
    assert (g.admitted, g.refused) == (2, 0)
    # Every reply that started spoke (before the fix every turn failed at its first frame).
    assert g.replies >= 2 and len(g.ttfa_s) >= g.replies and g.gaps
    assert engine.core.sessions == {}  # both hung up at 1.5 s
    # The ticks that did work, and (a real runner) the host's waits on the device among them.
    assert len(r.tick_s) > 0 and all(t >= 0 for t in r.tick_s)
    assert r.device_wait_s is not None and 0 <= r.device_wait_s <= sum(r.tick_s) + 1e-9


def test_a_probe_reports_its_ticks_and_the_share_spent_waiting_on_the_device():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from _traffic import tick_figures

    got = tick_figures([0.01, 0.02, 0.03, 0.04], 0.025)
    assert got["ticks"] == 4 and got["device_wait_share"] == 0.25
    assert got["tick_ms_p50"] <= got["tick_ms_p99"] <= 40.0
    assert "device_wait_share" not in tick_figures([0.01], None)  # a simulated device
