"""``bench_capacity.py --simulate COSTS``: the capacity search on a simulated device (the real
scheduler, virtual time, a GPU run's cost table), budget off vs on. Figures are simulated."""

from __future__ import annotations

import time

from moss_pipecat.engine import EngineConfig
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.testing.sim_traffic import CallPlan, pct, run_traffic
from moss_pipecat.testing.simulated_device import simulated_engine


def probe(costs: DeviceCosts, n: int, frames: int, text: int, deadline: float | None) -> dict:
    clock = VirtualClock()
    cfg = EngineConfig(
        max_sessions=n,
        max_context=512 + frames + text,
        context_budget=500,
        turn_reserve=100,
        lookahead_s=None,
        frame_deadline_s=deadline,
    )
    engine = simulated_engine(costs, cfg, clock)
    if deadline is not None:
        costs.prime(engine.core.costs)  # a warm engine: it has seen these calls before
    r = run_traffic(engine, clock, [CallPlan(0.0, turns=(text,), frames=frames)] * n)
    return {
        "sessions": n,
        "admitted": r.admitted,
        "refused": r.refused,
        "ttfa_ms_p50": 1e3 * pct(r.ttfa_s, 0.5),
        "ttfa_ms_p99": 1e3 * pct(r.ttfa_s, 0.99),
        "gap_ms_p99": 1e3 * pct(r.gaps_s, 0.99),
        "gap_ms_max": 1e3 * max(r.gaps_s, default=float("nan")),
    }


def capacity(costs, frames, text, deadline, gap_ms, max_sessions) -> dict:
    """Largest N whose calls (all starting at once) are all admitted with p99 gap < gap_ms;
    the doubling-then-bisection of the GPU benchmark."""
    probes: list[dict] = []

    def passes(n: int) -> bool:
        p = probe(costs, n, frames, text, deadline)
        p["passed"] = p["refused"] == 0 and p["gap_ms_p99"] < gap_ms
        probes.append(p)
        return p["passed"]

    good, bad, n = 0, None, 1
    while n <= max_sessions:
        if not passes(n):
            bad = n
            break
        good, n = n, (2 * n if n < max_sessions else max_sessions + 1)
        n = min(n, max_sessions) if good < max_sessions else n
    if bad is not None:
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if passes(mid) else (good, mid)
    best = max((p for p in probes if p["passed"]), key=lambda p: p["sessions"], default=None)
    return {"capacity_sessions": good, "at_capacity": best, "probes": probes}


def run(args) -> tuple[dict, str]:
    costs = DeviceCosts.load(args.simulate)
    t0 = time.perf_counter()
    out = {
        "benchmark": "capacity",
        "simulated": True,
        "costs": costs.source,
        "gap_ms_limit": args.gap_ms,
        "frames_per_turn": args.frames,
        "text_tokens": args.text_tokens,
        "starts": "all at once",
    }
    for name, deadline in (("budget_off", None), ("budget_on", args.gap_ms / 1e3)):
        out[name] = capacity(
            costs, args.frames, args.text_tokens, deadline, args.gap_ms, args.max_sessions
        )
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    off, on = out["budget_off"], out["budget_on"]

    def ttfa(r: dict) -> str:
        return f"{r['at_capacity']['ttfa_ms_p99']:.0f}" if r["at_capacity"] else "n/a"

    line = (
        f"SIMULATED capacity ({costs.source}): {off['capacity_sessions']} calls (TTFA p99 "
        f"{ttfa(off)} ms) budget off, {on['capacity_sessions']} (TTFA p99 {ttfa(on)} ms) "
        f"budget on, p99 gap < {args.gap_ms:.0f} ms, all starting at once"
    )
    return out, line
