"""The engine's launch budget: ATen ops it issues per tick outside its graphed steps, by phase.

On a GPU every ATen op outside a CUDA graph is at least one kernel launch or a piece of host
work the engine thread waits on, while a graph replay is one launch whatever it holds. So the
ops outside the graphs are what grows a tick's CPU time with the number of sessions.
``instrument`` wraps an engine so that a ``TorchDispatchMode`` counts every op of a tick by
phase:

    turn_start     a turn's prompt rows, once per turn (``Scheduler.begin_prefill``)
    prefill        one backbone call over a pool's prefill chunks (``Scheduler.prefill_chunk``)
    first_frame    the first frame of the turns whose prefill ended (``Scheduler.first_frames``)
    decode         one decode step of every stepping session (``Scheduler.decode``)
    deliver        frames recorded, chunks sent, turns ended (``Scheduler.deliver``, codec excluded)
    codec          the batched one-frame PCM decode (``Scheduler.decode_pcm``)
    other          the rest of the tick (scheduling)

The graphed steps (TTS decode step, prefill chunk, first frame, codec) run their padded
static-buffer path without CUDA graphs, on any device: exactly the code a graph replays. Each
call of a graphed step's body (``BucketedGraph.body``, what a replay stands for) counts as one
op outside the graphs; the ops inside it are counted apart. Used by
``benchmarks/bench_launches.py`` and the tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

if TYPE_CHECKING:
    from moss_pipecat.engine.engine import MossEngine
    from moss_pipecat.model.sampling import SamplingParams

PHASES = {  # scheduler method -> phase
    "begin_prefill": "turn_start",
    "prefill_chunk": "prefill",
    "first_frames": "first_frame",
    "decode": "decode",
    "deliver": "deliver",
    "decode_pcm": "codec",
}


class OpCounter(TorchDispatchMode):
    """Counts ATen ops by phase: outside graphed steps (a graphed step's call counts as one)
    and inside them. ``device_ops``: outside ops that touch a non-CPU tensor (launches or copies
    on a GPU; on a CPU run every op is host work and this stays 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ["other"]
        self.depth_in_graph = 0
        self.reset()

    def reset(self) -> None:
        self.outside: Counter[str] = Counter()
        self.inside: Counter[str] = Counter()
        self.device_ops: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.graph_calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        phase = self.stack[-1]
        if self.depth_in_graph:
            self.inside[phase] += 1
        else:
            self.outside[phase] += 1
            flat = tree_flatten((args, kwargs, out))[0]
            if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in flat):
                self.device_ops[phase] += 1
        return out

    def phase(self, name: str, fn: Callable) -> Callable:
        """``fn`` with its ops counted under phase ``name``."""

        def wrapped(*args, **kwargs):
            self.stack.append(name)
            self.calls[name] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()

        return wrapped

    def graphed(self, fn: Callable) -> Callable:
        """A graphed step's body: one op outside (the replay), its own ops inside."""

        def wrapped(*args, **kwargs):
            if self.depth_in_graph == 0:
                self.outside[self.stack[-1]] += 1
                self.graph_calls[self.stack[-1]] += 1
            self.depth_in_graph += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth_in_graph -= 1

        return wrapped

    def snapshot(self) -> dict[str, dict[str, int]]:
        """phase -> {outside, inside_graph, device_ops, calls, graph_calls} since ``reset``."""
        names = sorted(set(self.outside) | set(self.inside) | set(self.calls))
        return {
            n: {
                "outside": self.outside[n],
                "inside_graph": self.inside[n],
                "device_ops": self.device_ops[n],
                "calls": self.calls[n],
                "graph_calls": self.graph_calls[n],
            }
            for n in names
        }


def instrument(engine: MossEngine) -> OpCounter:
    """Counts ``engine``'s ops by phase (the engine must not be started: its ticks are run by
    the caller, see ``count_ticks``). Its graphed steps run their static-buffer path without
    CUDA graphs; every bucket's buffers are made first, as the engine does on a GPU."""
    graphs = [step.graphs for step in engine.core.runner.graph_steps()]  # their BucketedGraph
    for g in graphs:
        g.use_cuda_graphs = False
    engine.capture_graphs()
    counter = OpCounter()
    scheduler = engine.core.scheduler
    for method, phase in PHASES.items():
        setattr(scheduler, method, counter.phase(phase, getattr(scheduler, method)))
    for g in graphs:
        g.body = counter.graphed(g.body)
    return counter


def start_turns(
    engine: MossEngine,
    samplings: Sequence[SamplingParams],
    texts: Sequence[list[int]],
    frames: int,
) -> list[str]:
    """Opens one session per sampling (seed = its index) with a turn of exactly ``frames``
    frames whose whole text is already known. Returns the session ids."""
    from moss_pipecat.engine.commands import CreateSession, EndText, StartTurn
    from moss_pipecat.engine.events import Channel

    core = engine.core
    sids = []
    with torch.inference_mode():
        for i, (sampling, text) in enumerate(zip(samplings, texts, strict=True)):
            sid = f"s{i}"
            core.execute(sid, CreateSession(None, sampling, i))
            turn = core.execute(sid, StartTurn(Channel(), max_frames=frames, min_frames=frames))
            core.execute(sid, EndText(turn, tuple(text)))
            sids.append(sid)
    return sids


def count_ticks(engine: MossEngine, counter: OpCounter, ticks: int) -> list[dict]:
    """Runs ``ticks`` engine ticks on this thread; each tick's ``counter.snapshot()``."""
    out = []
    with torch.inference_mode():
        for _ in range(ticks):
            counter.reset()
            with counter:
                engine.core.tick()
            out.append(counter.snapshot())
    return out


def outside(tick: dict[str, dict[str, int]], phases: Sequence[str] | None = None) -> int:
    """Ops outside the graphs in a tick's snapshot (all phases, or only ``phases``)."""
    return sum(v["outside"] for k, v in tick.items() if phases is None or k in phases)
