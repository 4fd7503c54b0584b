"""What the garbage collector walks per session: gc-tracked objects by type after
``bench_host_work``'s ticks (the real scheduler on a simulated device), and how long a full
collection of the whole process takes then (CPU, this thread; not a GPU figure).

A full collection walks every tracked object, so objects a session keeps for its whole life
(its history's turns) make every full collection longer, inside one engine tick. ``base`` is
what the process held with the engine built and no session open (imports, the engine);
``per_session`` is what the sessions added, over N; ``full_ms``: one ``gc.collect()`` then
(thread CPU ms), nothing frozen.

    python benchmarks/bench_gc_objects.py --sessions 400 --ticks 200
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter

import torch
from _common import emit, environment
from bench_host_work import COSTS, Bench


def census(args: argparse.Namespace, n: int) -> dict:
    bench = Bench(args, n, args.scenario, None)  # the engine, no session yet
    gc.collect()
    base = Counter(type(o).__name__ for o in gc.get_objects())
    bench.measure()  # opens the sessions, runs the ticks
    gc.collect()
    now = Counter(type(o).__name__ for o in gc.get_objects())
    grown = now - base
    t0 = time.thread_time()
    gc.collect()
    full_ms = 1e3 * (time.thread_time() - t0)
    histories = [len(s.history.turns) for s in bench.core.sessions.values()]
    return {
        "sessions": n,
        "base_objects": sum(base.values()),
        "objects": sum(now.values()),
        "per_session": round(sum(grown.values()) / n, 1),
        "grown_by_type": dict(grown.most_common(args.top)),
        "turns_per_session_mean": round(sum(histories) / len(histories), 2),
        "full_ms": round(full_ms, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[400])
    ap.add_argument("--scenario", choices=("steady", "turns"), default="turns")
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--turn-frames", type=int, default=60)
    ap.add_argument("--turn-text", type=int, default=16)
    ap.add_argument("--steady-text", type=int, default=400)
    ap.add_argument("--top", type=int, default=15, help="types listed")
    ap.add_argument("--costs", default=str(COSTS), help="gpu_bench.sh folder (virtual clock)")
    ap.add_argument("--device", choices=("cpu",), default="cpu", help="host objects: CPU only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    # what ``Bench`` reads of bench_host_work's options, as its defaults have them
    args.overlap, args.gc_freeze, args.gc_policy = "on", False, False
    torch.set_num_threads(1)
    warm = argparse.Namespace(**{**vars(args), "ticks": 2, "warmup": 1})
    Bench(warm, 1, args.scenario, None).measure()  # what the first ticks import is not a session's
    rows = [census(args, n) for n in args.sessions]
    out = {
        "benchmark": "gc_objects",
        "what": "gc-tracked objects per session after the ticks, full collection CPU ms",
        "scenario": args.scenario,
        "ticks": args.ticks,
        "env": environment(torch.device("cpu")),
        "results": rows,
    }
    line = ", ".join(f"N={r['sessions']}: {r['per_session']} a session" for r in rows)
    emit(out, args.out, f"gc-tracked objects: {line}")


if __name__ == "__main__":
    main()
