"""``bench_capacity.py --simulate COSTS``: capacity on a simulated device (the real scheduler,
virtual time, a GPU run's cost table) before and after issue #22's items 1-2: phone-call
traffic, a burst on top of running calls, and all calls starting at once. Figures are
simulated."""

from __future__ import annotations

import time

from _traffic import burst, capacity_search, context_limits, traffic_passes, traffic_probe

from moss_pipecat.engine import EngineConfig
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.testing.sim_traffic import CallPlan, pct, run_traffic
from moss_pipecat.testing.simulated_device import simulated_engine

# (name, frame deadline: the prefill budget and admission, codec overlap)
SETTINGS = (
    ("before", False, False),  # neither item
    ("budget", True, False),  # item 1: prefill budget + admission
    ("budget_overlap", True, True),  # items 1 and 2
)


def _engine(
    costs: DeviceCosts, cfg: EngineConfig, clock: VirtualClock, deadline: bool, share: float
):
    engine = simulated_engine(costs, cfg, clock, overlap_share=share)
    if deadline:
        costs.prime(engine.core.costs)  # a warm engine: it has seen these calls before
    return engine


def traffic_maker(
    costs: DeviceCosts,
    gap_ms: float,
    deadline: bool,
    overlap: bool,
    max_context: int = 4096,
    share: float = 1.0,
):
    def make(n: int):
        clock = VirtualClock()
        cfg = EngineConfig(
            max_sessions=n,
            **context_limits(max_context),
            lookahead_s=None,  # every speaking call steps every tick: the device's worst case
            frame_deadline_s=gap_ms / 1e3 if deadline else None,
            overlap_codec=overlap,
        )
        return _engine(costs, cfg, clock, deadline, share), clock

    return make


def at_once(
    costs, n, frames, text, deadline: float | None, overlap: bool, share: float = 1.0
) -> dict:
    clock = VirtualClock()
    cfg = EngineConfig(
        max_sessions=n,
        max_context=512 + frames + text,
        context_budget=500,
        turn_reserve=100,
        lookahead_s=None,
        frame_deadline_s=deadline,
        overlap_codec=overlap,
    )
    engine = _engine(costs, cfg, clock, deadline is not None, share)
    r = run_traffic(engine, clock, [CallPlan(0.0, turns=(text,), frames=frames)] * n)
    return {
        "calls": n,
        "admitted": r.admitted,
        "refused": r.refused,
        "ttfa_ms_p50": round(1e3 * pct(r.ttfa_s, 0.5), 1),
        "ttfa_ms_p99": round(1e3 * pct(r.ttfa_s, 0.99), 1),
        "gap_ms_p99": round(1e3 * pct(r.gaps_s, 0.99), 1),
    }


def run(args) -> tuple[dict, str]:
    costs = DeviceCosts.load(args.simulate, fused=args.fused == "on")
    t0 = time.perf_counter()
    out = {
        "benchmark": "capacity",
        "simulated": True,
        "costs": costs.source,
        "goal": {
            "traffic": f"every call admitted, p99 frame gap < {args.gap_ms:g} ms, p99 TTFA <= "
            f"{args.ttfa_ms:g} ms",
            "burst": f"running calls' max frame gap < {args.burst_gap_ms:g} ms",
            "all_at_once": f"every call admitted, p99 frame gap < {args.gap_ms:g} ms",
        },
        "traffic": {
            "arrivals": f"Poisson over {args.ramp_s:g} s, measured {args.measure_s:g} s after",
            "calls": "user turns (1-4 s of speech + transcript) and bot replies (10-60 tokens "
            "at 40 tokens/s, 0.35 s after the user stops), 20% cut by a barge-in",
            "hang_up": args.hang_up,
            "max_context": args.max_context,
            "frames_per_token": args.frames_per_token,
        },
        "all_at_once": {"frames_per_turn": args.frames, "text_tokens": args.text_tokens},
        "overlap_share": args.overlap_share,
        "settings": {},
    }
    for name, deadline, overlap in SETTINGS:
        share = args.overlap_share
        make = traffic_maker(costs, args.gap_ms, deadline, overlap, args.max_context, share)
        seeds = iter(range(1000))
        r = {"frame_deadline_ms": args.gap_ms if deadline else None, "overlap_codec": overlap}
        r["traffic"] = capacity_search(
            lambda n, make=make, seeds=seeds: traffic_probe(make, n, args, next(seeds)),
            traffic_passes(args),
            args,
        )
        r["burst"] = burst(make, args)
        dl = args.gap_ms / 1e3 if deadline else None

        def once(n: int, dl=dl, overlap=overlap, share=share) -> dict:
            return at_once(costs, n, args.frames, args.text_tokens, dl, overlap, share)

        r["all_at_once"] = capacity_search(
            once, lambda p: p["refused"] == 0 and p["gap_ms_p99"] < args.gap_ms, args
        )
        out["settings"][name] = r
    out["wall_s"] = round(time.perf_counter() - t0, 2)

    def brief(name: str) -> str:
        r = out["settings"][name]
        b = r["burst"]
        return (
            f"{name}: {r['traffic']['capacity_calls']} calls (traffic), burst max gap "
            f"{b['running_gap_ms_max']:g} ms, {r['all_at_once']['capacity_calls']} at once"
        )

    line = f"SIMULATED capacity ({costs.source}): " + "; ".join(brief(n) for n, *_ in SETTINGS)
    return out, line
