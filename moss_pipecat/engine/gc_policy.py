"""The garbage collector's policy in a process running an engine (why: docs/PERFORMANCE.md,
"Host work per tick", the GC paragraph).

Python's full (generation 2) collection walks every object the collector tracks, with the
GIL held: the engine thread's tick stops for all of it, and every call's frame is late at
once. What start-up made (torch and the package's imports, the model, codec, tokenizer,
captured graphs) lives as long as the process, so once the engine has started it is moved to
the permanent generation (``gc.freeze()``), which no collection walks; a collection first
frees whatever start-up left as garbage, so nothing dead is frozen. The young generation's
threshold is raised so fewer short-lived objects (a tick's rows, frames, chunks) survive into
the old generations: fewer full collections. The last engine of the process to shut down
gives both back (``gc.unfreeze()``, the thresholds it found), so a process that starts and
stops engines (tests, a reload) frees what an old engine left behind.

Not an ``EngineConfig`` switch: it changes when the collector runs and what it walks, never
an output (only a start-up object that later becomes cyclic garbage waits for the last
shutdown to be freed), and a process embedding the engine (a pipecat bot) shares its GIL
with the engine thread, so its own pauses stall the ticks the same way: it gains from it too.
"""

from __future__ import annotations

import gc
import threading

# Allocations (less frees) of tracked objects between young collections; Python's default
# is 700. A young collection walks only the young objects, so it stays short.
YOUNG_THRESHOLD = 20_000

_lock = threading.Lock()
_engines = 0
_thresholds: tuple[int, int, int] | None = None


def engine_started() -> None:
    """Applies the policy when the process's first engine has started up."""
    global _engines, _thresholds
    with _lock:
        _engines += 1
        if _engines > 1:
            return
        gc.collect()
        gc.freeze()
        _thresholds = gc.get_threshold()
        young, older, oldest = _thresholds
        gc.set_threshold(max(young, YOUNG_THRESHOLD), older, oldest)


def engine_stopped() -> None:
    """Gives the policy back once the process's last engine has shut down."""
    global _engines, _thresholds
    with _lock:
        if _engines == 0:
            return
        _engines -= 1
        if _engines or _thresholds is None:
            return
        gc.set_threshold(*_thresholds)
        _thresholds = None
        gc.unfreeze()
