"""Capacity under phone-call traffic (``moss_pipecat.testing.call_traffic``): the largest number
of concurrent calls that meet the goal, a burst on top of running calls, on any engine maker
(a simulated device in virtual time, or a real device in real time)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import largest_passing

from moss_pipecat.testing.call_traffic import Arrival, CallShape, poisson_arrivals, run_calls
from moss_pipecat.testing.sim_traffic import pct

# (engine, clock) for a probe of n calls (slots for n + extra).
Maker = Callable[[int], tuple[Any, Any]]


def _ms(xs: list[float], q: float) -> float:
    return round(1e3 * pct(xs, q), 1)


def traffic_probe(make: Maker, n: int, args, seed: int) -> dict:
    """``n`` calls arriving (Poisson) over ``args.ramp_s``, measured for ``args.measure_s``
    after that, then hanging up."""
    engine, clock = make(n)
    rng = random.Random(seed)
    t0 = clock.now()
    arrivals = [Arrival(t) for t in poisson_arrivals(n, args.ramp_s, rng, start=t0)]
    ramp_end = t0 + args.ramp_s
    shape = CallShape(frames_per_token=args.frames_per_token)
    r = run_calls(
        engine,
        clock,
        arrivals,
        shape,
        ramp_end + args.measure_s,
        ramp_end,
        seed=seed,
        cut_at_hang_up=args.hang_up == "cut",
    )
    g = r.groups.get("calls")
    gaps = [x for _, x in g.gaps]
    return {
        "calls": n,
        "admitted": g.admitted,
        "refused": g.refused,
        "peak_calls": r.peak_calls,
        "replies": g.replies,
        "barge_ins": g.barge_ins,
        "ttfa_ms_p50": _ms(g.ttfa_s, 0.5),
        "ttfa_ms_p99": _ms(g.ttfa_s, 0.99),
        "gap_ms_p99": _ms(gaps, 0.99),
        "gap_ms_max": round(1e3 * max(gaps, default=float("nan")), 1),
        **tick_figures(r.tick_s, r.device_wait_s),
    }


def tick_figures(tick_s: list[float], device_wait_s: float | None) -> dict:
    """The ticks of a probe: how long they took and, on a real device, the share of that the
    host spent waiting on the device (the rest is the engine's own host time: near 1 the GPU
    is what limits, far below it the host is)."""
    out = {"ticks": len(tick_s), "tick_ms_p50": _ms(tick_s, 0.5), "tick_ms_p99": _ms(tick_s, 0.99)}
    if device_wait_s is not None and sum(tick_s) > 0:
        out["device_wait_share"] = round(device_wait_s / sum(tick_s), 3)
    return out


def capacity_search(
    probe: Callable[[int], dict],
    passes: Callable[[dict], bool],
    args,
    on_probe: Callable[[list[dict]], None] | None = None,
) -> dict:
    """Largest n that passes: doubling from ``args.start``, then bisection. ``on_probe`` sees
    the probes so far after each one (a real-time run saves them: a cut run keeps them)."""
    probes: list[dict] = []

    def ok(n: int) -> bool:
        p = probe(n)
        p["passed"] = passes(p)
        probes.append(p)
        if on_probe is not None:
            on_probe(probes)
        return p["passed"]

    good, capped = largest_passing(ok, args.start, args.max_sessions)
    best = [p for p in probes if p["passed"] and p["calls"] == good]
    return {
        "capacity_calls": good,
        "capped_by_max_sessions": capped,
        "at_capacity": best[0] if best else None,
        "probes": probes,
    }


def traffic_passes(args) -> Callable[[dict], bool]:
    def passes(p: dict) -> bool:
        return (
            p["refused"] == 0 and p["gap_ms_p99"] < args.gap_ms and p["ttfa_ms_p99"] <= args.ttfa_ms
        )

    return passes


def burst(make: Maker, args, seed: int = 7) -> dict:
    """``args.burst_running`` calls running (arrived over the ramp), then
    ``args.burst_calls`` more starting within ``args.burst_within_s``: the running calls'
    largest frame gap from the burst on (goal: < ``args.burst_gap_ms``)."""
    running, extra = args.burst_running, args.burst_calls
    engine, clock = make(running + extra)
    rng = random.Random(seed)
    t0 = clock.now()
    arrivals = [Arrival(t) for t in poisson_arrivals(running, args.ramp_s, rng, start=t0)]
    t_burst = t0 + args.ramp_s + 2.0
    arrivals += [
        Arrival(t_burst + rng.uniform(0, args.burst_within_s), "burst") for _ in range(extra)
    ]
    watch = t_burst + args.burst_watch_s
    shape = CallShape(frames_per_token=args.frames_per_token)
    r = run_calls(
        engine,
        clock,
        arrivals,
        shape,
        watch,
        t_burst - 1.0,
        seed=seed,
        cut_at_hang_up=args.hang_up == "cut",
    )
    calls, new = r.groups["calls"], r.groups.get("burst")
    during = [g for when, g in calls.gaps if t_burst <= when <= watch]
    worst = max(during, default=float("nan"))
    return {
        "running": running,
        "running_admitted": calls.admitted,
        "burst_calls": extra,
        "burst_within_s": args.burst_within_s,
        "burst_admitted": new.admitted if new else 0,
        "burst_refused": new.refused if new else 0,
        "running_gap_ms_max": round(1e3 * worst, 1),
        "running_gap_ms_p99": _ms(during, 0.99),
        "burst_ttfa_ms_p99": _ms(new.ttfa_s, 0.99) if new else None,
        "passed": 1e3 * worst < args.burst_gap_ms,
    }


def add_traffic_args(ap) -> None:
    ap.add_argument("--ttfa-ms", type=float, default=200.0, help="p99 TTFA limit (traffic)")
    ap.add_argument("--ramp-s", type=float, default=10.0, help="calls arrive over this long")
    ap.add_argument("--measure-s", type=float, default=20.0, help="then measured this long")
    ap.add_argument("--burst-running", type=int, default=200, help="calls running at a burst")
    ap.add_argument("--burst-calls", type=int, default=64, help="calls in the burst")
    ap.add_argument("--burst-within-s", type=float, default=0.1, help="the burst's spread")
    ap.add_argument("--burst-watch-s", type=float, default=5.0, help="gaps watched after it")
    ap.add_argument("--burst-gap-ms", type=float, default=120.0, help="running calls' max gap")
    ap.add_argument(
        "--frames-per-token",
        type=float,
        help="cap each reply at 8 + this many frames per text token (random weights seldom "
        "end a turn themselves; real speech is ~4)",
    )
    ap.add_argument(
        "--traffic", action="store_true", help="this device: phone-call traffic and the burst"
    )
    ap.add_argument("--admission", action="store_true", help="with --traffic: budget + refusals")
    ap.add_argument("--cost-table", help="with --admission: a gpu_bench.sh folder to start from")
    ap.add_argument("--overlap", action="store_true", help="with --traffic: codec overlap")
    ap.add_argument(
        "--hang-up",
        choices=["finish", "cut"],
        default="finish",
        help="at the window's end each call finishes its reply, or hangs up at once (a reply in "
        "flight kept as far as it got; a real-time probe then lasts exactly its window)",
    )
    ap.add_argument(
        "--max-context",
        type=int,
        default=4096,
        help="traffic: positions per call (KV memory: sessions x this; a short run needs ~1024)",
    )


def context_limits(max_context: int) -> dict:
    """A traffic engine's context settings (real and simulated alike)."""
    return {
        "max_context": max_context,
        "context_budget": max_context * 7 // 8,
        "turn_reserve": max_context // 8,
    }


def real_traffic(args) -> tuple[dict, str]:
    """``bench_capacity.py --traffic``: the traffic search and the burst on this device, in
    real time (one engine, driven on this thread with a clock that sleeps between events)."""
    import torch
    from _common import environment
    from _setup import DTYPES, build_codec, build_model, capture_graphs, layout_for

    from moss_pipecat.engine import EngineConfig, MossEngine
    from moss_pipecat.engine.clock import SleepingClock

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model, codec = build_model(args, device, dtype), build_codec(args, device, dtype)
    config = EngineConfig(
        max_sessions=max(args.max_sessions, args.burst_running + args.burst_calls),
        **context_limits(args.max_context),
        lookahead_s=None,
        graphed_decode={"auto": None, "on": True, "off": False}[args.graphed],
        compile_decode=args.compile,
        graphed_prefill=args.graphed_prefill == "on",
        fused=args.fused == "on",
        kernel_cache_dir=args.kernel_cache_dir,
        frame_deadline_s=args.gap_ms / 1e3 if args.admission else None,
        cost_table=args.cost_table,
        overlap_codec=args.overlap,
    )
    clock = SleepingClock()
    engine = MossEngine(model, layout_for(model), codec=codec, config=config, clock=clock)
    capture = capture_graphs(engine)  # not started: the driver ticks it on this thread

    def make(n: int):
        return engine, clock

    seeds = iter(range(1000))
    out: dict = {
        "benchmark": "capacity_traffic",
        "model": args.checkpoint or ("real-size random" if args.real_size else "tiny fixture"),
        "dtype": args.dtype,
        "graphed_decode": engine.graphed,
        "graph_capture": capture,
        "admission": args.admission,
        "overlap_codec": args.overlap,
        "max_context": args.max_context,
        "ramp_s": args.ramp_s,
        "measure_s": args.measure_s,
        "frames_per_token": args.frames_per_token,
        "hang_up": args.hang_up,
        "env": environment(engine.device),
        "complete": False,  # True once the search and the burst are both in
    }

    def save(probes: list[dict]) -> None:  # a run cut short (a time limit) keeps its probes
        if args.out:
            Path(args.out).write_text(json.dumps({**out, "probes_so_far": probes}, indent=2))

    out["traffic"] = capacity_search(
        lambda n: traffic_probe(make, n, args, next(seeds)), traffic_passes(args), args, save
    )
    save(out["traffic"]["probes"])
    out["burst"] = burst(make, args)
    out["complete"] = True
    line = (
        f"traffic capacity: {out['traffic']['capacity_calls']} calls; burst of "
        f"{args.burst_calls} on {args.burst_running}: running max gap "
        f"{out['burst']['running_gap_ms_max']:g} ms ({args.device}, {args.dtype})"
    )
    return out, line
