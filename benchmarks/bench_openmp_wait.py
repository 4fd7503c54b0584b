"""A long CPU prefill under OpenMP's wait policies: which thread runs it, and what else is alive.

torch's OpenMP runtime on Linux (libgomp) gives every thread that runs a parallel op its own
team of ``torch.get_num_threads()`` threads. Between parallel regions a team's threads spin
(up to ~300,000 ``pause`` loops each time) while all live OpenMP threads fit in the CPUs, and
spin only ~1,000 loops once they outnumber the CPUs. So a prefill on a 2-core box with
2 threads spins when its team is the only one, and hardly at all beside a second team (the
engine's loop thread beside the team the main thread made while loading the model). On a
loaded box the spinning threads take the CPU from the thread doing the work: the same rows
cost several times the CPU. ``OMP_WAIT_POLICY=PASSIVE`` (what ``import moss_pipecat`` sets
unless the variable is set; libgomp reads it once, when torch loads) makes them sleep at once.

Each case runs in a fresh interpreter (the policy is read once per process) which loads the
fixture model and prefills ``--rows`` random rows in chunks of 1,024, ``--repeats`` times:

- ``main``: on the main thread, the only thread that runs torch ops;
- ``thread``: on a ``threading.Thread`` that also loaded the model (the main thread runs none);
- ``main_beside_team``: on the main thread while another thread keeps a team alive.

Process CPU (user + sys, every thread), wall and the process's OS threads, per prefill.

    python benchmarks/bench_openmp_wait.py --rows 4096 --repeats 2 \\
        --out benchmarks/results/cpu-tiny/openmp_wait.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
from _common import emit, environment, fixtures_root

POLICIES = {"libgomp default": None, "PASSIVE": "PASSIVE"}
CASES = ("main", "thread", "main_beside_team")
CHUNK = 1024


def prefill_runs(n_rows: int, repeats: int) -> list[dict]:
    """Loads the fixture model and times ``repeats`` prefills of ``n_rows`` rows, here."""
    from moss_pipecat.model import MossTTSRealtime

    model = MossTTSRealtime.from_pretrained(fixtures_root() / "realtime")
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, cfg.audio_vocab_size, (n_rows, cfg.channels), generator=gen)
    rows[:, 0] = torch.randint(0, cfg.text_pad, (n_rows,), generator=gen)
    cache = model.new_cache(1, n_rows + 1)
    slot = torch.zeros(1, dtype=torch.int64)
    runs = []
    for _ in range(repeats):
        cache.reset(0)
        # process_time: user+sys of every thread, at ns resolution (os.times ticks 10 ms).
        t0, w0 = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n_rows, CHUNK):
                r = rows[None, i : i + CHUNK]
                model.backbone(r, cache, slot, torch.tensor([r.shape[1]]), spare_writes=True)
        t1 = time.process_time()
        runs.append(
            {
                "cpu_s": t1 - t0,
                "wall_s": time.perf_counter() - w0,
                "load": os.getloadavg()[0],
                "os_threads": len(os.listdir("/proc/self/task")),  # this team and any other
            }
        )
    return runs


def child(case: str, n_rows: int, repeats: int) -> dict:
    out: dict = {}
    if case == "main":
        out["runs"] = prefill_runs(n_rows, repeats)
    elif case == "thread":
        t = threading.Thread(target=lambda: out.update(runs=prefill_runs(n_rows, repeats)))
        t.start()
        t.join()
    else:  # main_beside_team
        ready, stop = threading.Event(), threading.Event()

        def keep_team() -> None:
            torch.ones(1 << 22).add_(1)  # a parallel op: this thread's team now exists
            ready.set()
            stop.wait()

        helper = threading.Thread(target=keep_team)
        helper.start()
        ready.wait()
        out["runs"] = prefill_runs(n_rows, repeats)
        stop.set()
        helper.join()
    return out


def run_case(policy: str | None, case: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--child", case, "--rows", str(args.rows)]
    cmd += ["--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = [r["cpu_s"] for r in out["runs"]]
    wall = [r["wall_s"] for r in out["runs"]]
    return {
        "policy": policy or "libgomp default",
        "case": case,
        "cpu_s_median": statistics.median(cpu),
        "wall_s_median": statistics.median(wall),
        **out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096, help="history rows to prefill")
    ap.add_argument("--repeats", type=int, default=2, help="prefills per process")
    ap.add_argument("--rounds", type=int, default=1, help="every case once per round")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument(
        "--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES),
        help="the wait policies to run each case under",
    )  # fmt: skip
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="a CPU-only question")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.repeats)))
        return
    # Policies alternate within a round: on a shared box the load drifts, so the A/B pairs
    # run back to back.
    results = [
        run_case(policy, case, args)
        for _ in range(args.rounds)
        for case in args.cases
        for name, policy in POLICIES.items()
        if name in args.policies
    ]
    out = {
        "benchmark": "openmp_wait",
        "model": "tiny fixture",
        "rows": args.rows,
        "chunk": CHUNK,
        "env": environment(torch.device("cpu")),
        "cpus": os.cpu_count(),
        "results": results,
    }
    worst = max(results, key=lambda r: r["cpu_s_median"])
    best = min(results, key=lambda r: r["cpu_s_median"])
    emit(
        out,
        args.out,
        f"openmp wait: {args.rows}-row prefill CPU {best['cpu_s_median']:.2f} s "
        f"({best['case']}, {best['policy']}) .. {worst['cpu_s_median']:.2f} s "
        f"({worst['case']}, {worst['policy']})",
    )


if __name__ == "__main__":
    main()
