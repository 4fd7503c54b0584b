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
