"""Capacity: the most concurrent sessions the engine keeps in real time.

A real-time session needs a frame every 80 ms. N sessions speak at once with no lookahead
limit (text arrives ahead of speech, so every tick steps all N), and N passes when the p99
gap between consecutive frames of a session stays under ``--gap-ms`` (default 80). N
doubles until it fails, then bisects. Each N is measured in steady state, after
``--warm-rounds`` short rounds at that N; each probe also says what stalled its ticks
(``_common.HostPauses``: each tick's wall time p50/p99/max, GC collections by generation and
their longest pause, ``gc_full_max_ms``).

    python benchmarks/bench_capacity.py                                     # tiny model + codec
    python benchmarks/bench_capacity.py --real-size --random-weights --device cuda \\
        --dtype bfloat16 --max-sessions 256
    python benchmarks/bench_capacity.py --simulate benchmarks/results/h200-2026-11-26 \\
        --frames 50 --start 32 --max-sessions 512                           # virtual time, CPU

``--simulate`` runs three cases on a simulated device, before and after issue #22's items 1-2
(the prefill budget with admission; the codec beside the next decode step): phone-call traffic
(calls arriving over time, user turns and streamed bot replies with barge-ins: the most
concurrent calls with p99 frame gap < ``--gap-ms`` and p99 TTFA <= ``--ttfa-ms``), a burst
(``--burst-calls`` starting within ``--burst-within-s`` on top of ``--burst-running``: the
running calls' largest gap) and all calls starting at once (the search above).
"""

from __future__ import annotations

import argparse
import asyncio

from _common import HostPauses, emit, environment, largest_passing
from _setup import add_engine_args, build_engine, run_round
from _traffic import add_traffic_args

from moss_pipecat.testing.simulated_device import H200_OVERLAP_SHARE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--gap-ms", type=float, default=80.0, help="p99 frame-gap limit")
    ap.add_argument("--start", type=int, default=1, help="first N tried")
    ap.add_argument("--max-sessions", type=int, default=64, help="largest N tried")
    ap.add_argument(
        "--warm-rounds", type=int, default=1, help="short unmeasured rounds before each N"
    )
    add_traffic_args(ap)
    ap.add_argument(
        "--simulate",
        metavar="COSTS",
        help="no device: a gpu_bench.sh output folder (or saved cost table); the scheduler runs "
        "in virtual time on a simulated device, budget off vs on (figures are simulated)",
    )
    ap.add_argument(
        "--overlap-share",
        type=float,
        default=H200_OVERLAP_SHARE,
        help="--simulate: the share of the codec's time that runs beside the decode step with "
        "overlap (1: all; the rest slows the decode step: one GPU's bandwidth is shared); "
        "default: as measured on an H200 (testing.simulated_device.H200_OVERLAP_SHARE)",
    )
    args = ap.parse_args()
    if args.traffic and not args.simulate:
        from _traffic import real_traffic

        out, line = real_traffic(args)
        emit(out, args.out, line)
        return
    if args.simulate:
        from _simulate import run

        out, line = run(args)
        emit(out, args.out, line)
        return

    engine, capture = build_engine(args, args.max_sessions)
    probes: list[dict] = []

    def passes(n: int) -> bool:
        # Steady state: a short round at this N first, so one-time costs of its new batch
        # shapes (lazy CUDA kernel loads, allocator growth) do not count as frame gaps.
        for _ in range(args.warm_rounds):
            asyncio.run(run_round(engine, n, args.text_tokens, 6, seed=10_000 + len(probes)))
        with HostPauses(engine) as pauses:  # a GC stall told apart from a slow tick
            r = asyncio.run(run_round(engine, n, args.text_tokens, args.frames, seed=len(probes)))
        r.update(pauses.fields())
        r["passed"] = r["gap_ms_p99"] < args.gap_ms
        probes.append(r)
        return r["passed"]

    try:
        good, at_cap = largest_passing(passes, args.start, args.max_sessions)
    finally:
        engine.shutdown()
    best = max((p for p in probes if p["passed"]), key=lambda p: p["sessions"], default=None)
    out = {
        "benchmark": "capacity",
        "model": args.checkpoint or ("real-size random" if args.real_size else "tiny fixture"),
        "codec": None if args.no_codec else ("real-size random" if args.real_size else "tiny"),
        "dtype": args.dtype,
        "graphed_decode": engine.graphed,
        "compile": args.compile,
        "graphed_prefill": args.graphed_prefill,
        "graph_capture": capture,
        "gap_ms_limit": args.gap_ms,
        "frames_per_turn": args.frames,
        "warm_rounds": args.warm_rounds,
        "capacity_sessions": good,
        "capped_by_max_sessions": at_cap,
        "at_capacity": best,
        "env": environment(engine.device),
        "probes": probes,
    }
    capped = " (the --max-sessions cap)" if at_cap else ""
    emit(
        out,
        args.out,
        f"capacity: {good} real-time sessions{capped} with p99 frame gap < {args.gap_ms:.0f} ms "
        f"({args.device}, {args.dtype}, graphed={engine.graphed})",
    )


if __name__ == "__main__":
    main()
