"""What starting an engine costs: the kernel caches that keep a restart from recompiling, and
the time and device memory each graphed phase takes to prepare.

Compiled kernels live in two on-disk caches: Triton's (the fused ops' kernels, and what
``torch.compile`` generates) and, with ``EngineConfig.compile_decode``, inductor's. Their
defaults (``~/.triton/cache``; inductor's under the temp dir) are lost when a container
restarts, so a restart compiles again; ``EngineConfig.kernel_cache_dir`` puts both in one
folder that can be kept (a volume). A start whose caches were warm adds no entries to them
(``PhaseCosts.cache_entries_added == 0``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# env variable -> the folder under ``kernel_cache_dir`` it points to
CACHE_ENV = {"TRITON_CACHE_DIR": "triton", "TORCHINDUCTOR_CACHE_DIR": "inductor"}


def use_kernel_cache(directory: str | os.PathLike | None) -> None:
    """Points Triton's and inductor's caches into ``directory`` (made if missing), over what
    the environment says (torch sets inductor's variable to its default itself once it has
    looked). Call before anything compiles: both read the variables when they compile.
    None: leaves the environment as it is."""
    if directory is None:
        return
    root = Path(directory).expanduser()
    for env, sub in CACHE_ENV.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.environ[env] = str(root / sub)


def kernel_cache_dirs() -> dict[str, Path]:
    """The caches in use (by env variable): the variable's folder, else the default."""
    try:
        from triton import knobs  # Triton's own answer (TRITON_HOME, its defaults)

        triton_dir = Path(knobs.cache.dir)
    except (ImportError, AttributeError):
        triton_dir = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton/cache")
    user = os.environ.get("USER", "user")
    inductor = Path(os.environ.get("TMPDIR", "/tmp")) / f"torchinductor_{user}"
    return {
        "TRITON_CACHE_DIR": triton_dir,
        "TORCHINDUCTOR_CACHE_DIR": Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or inductor),
    }


def cache_entries() -> int:
    """Files in the kernel caches now (0 for a cache not made yet)."""
    return sum(sum(len(files) for _, _, files in os.walk(d)) for d in kernel_cache_dirs().values())


@dataclass
class PhaseCosts:
    """Start-up cost by phase (decode, prefill, first_frame, codec): buckets prepared,
    seconds (capture, and whatever compiling the first run of a kernel did), device MiB
    reserved (CUDA only: None elsewhere), and kernel-cache entries added over the whole
    start-up (0 on a warm cache)."""

    device: torch.device
    phases: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    cache_entries_added: int = 0

    def measure(self, phase: str, prepare: Callable[[], int]) -> int:
        """Runs ``prepare`` (returns its bucket count) and adds its costs under ``phase``."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_reserved(self.device) if cuda else 0
        t0 = time.perf_counter()
        n = prepare()
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        p = self.phases.setdefault(phase, {"buckets": 0, "seconds": 0.0, "reserved_mib": None})
        p["buckets"] += n
        p["seconds"] = round(p["seconds"] + seconds, 3)
        if cuda:
            mib = (torch.cuda.memory_reserved(self.device) - before) / 2**20
            p["reserved_mib"] = round((p["reserved_mib"] or 0.0) + mib, 1)
        return n

    def report(self) -> dict:
        dirs = kernel_cache_dirs()
        return {
            "phases": self.phases,
            "seconds": round(sum(p["seconds"] for p in self.phases.values()), 3),
            "kernel_cache": {env: str(d) for env, d in dirs.items()},
            "kernel_cache_entries_added": self.cache_entries_added,
        }
