"""Engine throughput and latency vs concurrent sessions.

N sessions each speak one turn at the same moment (text pushed at once, as an LLM that is
ahead of speech). Reports, per N: time to first audio (trigger -> first PCM/codes), gaps
between consecutive frames of a session (p50/p99), aggregate frames/s, and what stalled the
ticks (``_common.HostPauses``: each tick's wall time, GC collections and their longest pause).

    python benchmarks/bench_engine.py                               # tiny fixture model + codec
    python benchmarks/bench_engine.py --sessions 1 4 16 --frames 50 --lookahead 1.0
    python benchmarks/bench_engine.py --real-size --random-weights --sessions 1 --frames 5
    python benchmarks/bench_engine.py --fused on --kernel-cache-dir DIR    # twice: no compile

``start_up`` reports what preparing the graphs cost by phase (decode, prefill, first_frame,
codec): buckets, seconds (capturing, and compiling a kernel's first run), device MiB (CUDA
only), and how many entries the kernel caches gained (0 on a second start with the same
``--kernel-cache-dir``: nothing compiled).
"""

from __future__ import annotations

import argparse
import asyncio

from _common import HostPauses, emit, environment
from _setup import add_engine_args, build_engine, run_round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()

    engine, capture = build_engine(args, max(args.sessions))
    rounds = []
    try:
        for n in args.sessions:
            with HostPauses(engine) as pauses:
                r = asyncio.run(run_round(engine, n, args.text_tokens, args.frames, n))
            rounds.append({**r, **pauses.fields()})  # GC pauses beside each tick's wall time
    finally:
        engine.shutdown()
    out = {
        "benchmark": "engine",
        "model": args.checkpoint or ("real-size random" if args.real_size else "tiny fixture"),
        "codec": None
        if engine.codec is None
        else ("real-size random" if args.real_size else "tiny"),
        "dtype": args.dtype,
        "frames_per_turn": args.frames,
        "lookahead_s": args.lookahead,
        "graphed_decode": engine.graphed,
        "compile": args.compile,
        "graphed_prefill": args.graphed_prefill,
        "fused": args.fused == "on",
        "graph_capture": capture,
        # by phase: seconds, device MiB (CUDA), kernel-cache entries added (0: no compile)
        "start_up": engine.start_up,
        "env": environment(engine.device),
        "results": rounds,
    }
    best = max(rounds, key=lambda r: r["frames_per_s"])
    start = engine.start_up
    started = (
        ""
        if start is None
        else f"; start-up {start['seconds']:.1f} s, "
        f"{start['kernel_cache_entries_added']} new kernel-cache entries"
    )
    emit(
        out,
        args.out,
        f"engine: TTFA p50 {rounds[0]['ttfa_ms_p50']:.1f} ms at 1 session; "
        f"{best['frames_per_s']:.0f} frames/s ({best['realtime_sessions_supported']:.1f} real-time "
        f"sessions) at {best['sessions']} sessions ({args.device}, {args.dtype}, "
        f"fused {args.fused}){started}",
    )


if __name__ == "__main__":
    main()
