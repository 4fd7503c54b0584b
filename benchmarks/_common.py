"""Helpers shared by the benchmark scripts: timing, environment description, JSON output."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from moss_pipecat.engine.factory import tiny_fixtures_dir

REPO = Path(__file__).resolve().parent.parent


def fixtures_root() -> Path:
    return tiny_fixtures_dir()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> dict:
    """Wall-clock milliseconds per call: median, p90, mean, min."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))],
        "mean_ms": statistics.fmean(samples),
        "min_ms": samples[0],
        "iters": iters,
    }


def environment(device: torch.device) -> dict:
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    from moss_pipecat.model.device_kernels import ATTENTION_KERNEL_ENV, KV_WRITE_KERNEL_ENV

    # the kernels not yet measured, if fused
    env["attention_kernel"] = os.environ.get(ATTENTION_KERNEL_ENV, "library")
    env["kv_write_kernel"] = os.environ.get(KV_WRITE_KERNEL_ENV, "formula")
    return env


def emit(result: dict, out: str | None, summary: str) -> None:
    """Prints the JSON result (and writes it to ``out``), then a one-line summary."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(summary, file=sys.stderr)


def largest_passing(passes: Callable[[int], bool], start: int, cap: int) -> tuple[int, bool]:
    """The largest n in 1..cap for which ``passes(n)`` holds, assuming it holds up to a point:
    grows geometrically from ``start`` while it passes, then bisects between the last pass and
    the first failure. Returns (n, whether the cap was reached without a failure); n is 0 when
    even the first probe fails."""
    good, bad, n = 0, None, max(1, min(start, cap))
    while n <= cap:
        if not passes(n):
            bad = n
            break
        good = n
        if n == cap:
            break
        n = min(2 * n, cap)
    if bad is not None:
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if passes(mid) else (good, mid)
    return good, bad is None


class HostPauses:
    """What stalls a running engine's ticks, recorded while it runs (``with HostPauses(engine)
    as pauses: ...; pauses.fields()``): the garbage collector's collections by generation
    (``gc.callbacks``, any thread: a collection holds the GIL, so it stalls the engine thread
    wherever it runs) with their longest wall-clock pause, and the wall time of each engine
    tick that did work. A GC stall shows as ``gc_full_max_ms`` beside ``tick_ms_max``; a slow
    tick shows without one. Field names as ``bench_host_work``'s (``gc_full_*``)."""

    def __init__(self, engine) -> None:
        self.core = engine.core
        self.count = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self.total_ns = 0
        self.tick_ns: list[int] = []
        self._t = 0

    def _gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._t = now
            return
        gen, pause = info["generation"], now - self._t
        self.count[gen] += 1
        self.max_ns[gen] = max(self.max_ns[gen], pause)
        self.total_ns += pause

    def __enter__(self) -> HostPauses:
        core, tick, stats = self.core, self.core.tick, self.core.stats

        def timed_tick():  # the engine thread looks ``core.tick`` up on every loop
            before, t0 = stats["ticks"], time.perf_counter_ns()
            out = tick()
            if stats["ticks"] != before:  # a tick that stepped something (not an idle wait)
                self.tick_ns.append(time.perf_counter_ns() - t0)
            return out

        core.tick = timed_tick
        gc.callbacks.append(self._gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._gc)
        del self.core.tick  # the method again

    def fields(self) -> dict:
        ms = sorted(t / 1e6 for t in self.tick_ns)

        def q(p: float) -> float | None:
            return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3) if ms else None

        return {
            "ticks_timed": len(ms),
            "tick_ms_p50": q(0.5),
            "tick_ms_p99": q(0.99),
            "tick_ms_max": round(ms[-1], 3) if ms else None,
            "gc_collections": list(self.count),  # by generation (0, 1, 2)
            "gc_max_ms": [round(n / 1e6, 3) for n in self.max_ns],  # longest pause, by gen.
            "gc_ms_total": round(self.total_ns / 1e6, 3),
            "gc_full_collections": self.count[2],
            "gc_full_max_ms": round(self.max_ns[2] / 1e6, 3),
        }
