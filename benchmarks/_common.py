"""Helpers shared by the benchmark scripts: timing, environment description, JSON output."""

from __future__ import annotations

import json
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
