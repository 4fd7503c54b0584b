"""moss-pipecat: MOSS-TTS-Realtime as a streaming, multi-turn pipecat TTS service."""

import os
from importlib.metadata import PackageNotFoundError, version

# torch's OpenMP runtime on Linux (libgomp) keeps the idle threads of a team spinning between
# parallel ops (up to ~300,000 pause loops) while its threads fit in the CPUs. On a shared or
# loaded CPU the spinning takes the CPU from the thread doing the work: a CPU prefill cost up
# to 10x the CPU (docs/PERFORMANCE.md, "OpenMP's wait policy"). PASSIVE: they sleep at once.
# libgomp reads it once, as torch loads: it holds when this package is imported before torch
# (the CLI, the servers it starts); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("moss-pipecat")  # pyproject.toml holds the version, nowhere else
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
