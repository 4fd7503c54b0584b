"""The one CUDA-graph wrapper every graphed step is built on (TTS decode step, first frame,
prefill chunk, codec frame).

A step of a few hundred to a few thousand small kernels costs its launches, not its math, at
real-time batch sizes; replaying a captured graph launches them all at once. A graph needs
static shapes and addresses, so ``BucketedGraph`` keeps, per bucket (a padded shape), static
input tensors whose first axis is the row, captures the step's body over them once and
replays it; a call copies its rows in, pads the other rows and returns the body's outputs
(views owned by the bucket: copy what you keep before the next call).

A step says only what its inputs are (each with the value that makes a row idle: padding
rows, and every row during the warm-up runs of a capture, which really execute) and which
rows of the outputs are its results. With graphs off (``use_cuda_graphs=False``: a CPU, or
the off switch) the same padded static-buffer body runs eagerly, so CPU tests check exactly
the code a GPU replays; ``capture_eagerly`` stands in for a capture there (warm-up runs
included).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from moss_pipecat._log import logger

# Steps of 32 from 128 on: a batch of 130 pads to 160, not 256, and 193 to 224. (Where the
# buckets stopped at 256 and then jumped to the slot count, the H200 traffic capacity sat on
# a bucket edge: 192 calls passed, 193 replayed 256 and broke TTFA, 2026-12-04.) Capped at
# the slot count (``capped_buckets``).
DEFAULT_BATCH_BUCKETS = (
    1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 448, 512
)  # fmt: skip

K = TypeVar("K", bound=Hashable)


def capped_buckets(buckets: Iterable[int], cap: int) -> tuple[int, ...]:
    """``buckets`` capped at ``cap``, which is always one of them (nothing pads past it)."""
    return tuple(sorted({min(b, cap) for b in buckets if b >= 1} | {cap}))


def smallest_bucket(buckets: Sequence[int], n: int) -> int | None:
    """The smallest of the sorted ``buckets`` holding ``n``, or None if none does."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


def capture_graph(
    run: Callable[[], None], warm_up: Callable[[], None], pool: tuple | None
) -> torch.cuda.CUDAGraph:
    """Runs ``warm_up`` on a side stream (allocator and kernels settle), then captures ``run``.

    ``pool``: the memory pool of the owner's earlier graphs (None for the first); pass
    ``graph.pool()`` of the result to the next capture so one owner's graphs share memory.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        warm_up()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        run()
    return graph


class _EagerReplay:
    def __init__(self, run: Callable[[], None]) -> None:
        self.replay = run

    def pool(self) -> None:
        return None


def capture_eagerly(run: Callable[[], None], warm_up: Callable[[], None], pool: Any) -> Any:
    """A stand-in for ``capture_graph`` without CUDA: runs the warm-up (what a capture really
    executes) and returns a "graph" whose replay reruns ``run``. For tests on a CPU."""
    warm_up()
    return _EagerReplay(run)


@dataclass(frozen=True)
class StaticInput:
    """One static input of a bucket: ``tensor`` [rows, ...], and ``idle`` the value of rows no
    call fills (a scalar or a tensor of one row), or None to leave them as they are (for
    inputs only read where a filled row's other inputs make them matter)."""

    tensor: torch.Tensor
    idle: Any = 0


@dataclass
class Bucket:
    """A bucket's static inputs, the body's outputs over them and (graphed) its graph."""

    inputs: dict[str, torch.Tensor]
    idle: dict[str, Any]
    outputs: Any = None
    graph: Any = field(default=None, repr=False)

    def make_idle(self) -> None:
        """Every row to its idle value: the body then changes no state outside the bucket."""
        for name, value in self.idle.items():
            if value is not None:
                self.inputs[name][:] = value


class BucketedGraph(Generic[K]):
    """A step's body over static buffers, captured as one CUDA graph per bucket.

    Args:
        name: for logs.
        make_inputs: ``key -> {name: StaticInput}``, the static inputs of bucket ``key``.
        body: ``(inputs, key) -> outputs``; reads only ``inputs`` (and state it owns, like a
            KV cache), with static shapes and no host sync (it is what the graph records).
        device: where the buffers live.
        use_cuda_graphs: capture and replay (CUDA only); False (the off switch) runs the body
            eagerly on the same buffers; None: graphs on a CUDA device.
        warm_up_runs: body runs before a capture, on idle inputs.

    Attributes:
        capture: how a bucket is captured, ``capture_graph``; tests set ``capture_eagerly``.
    """

    def __init__(
        self,
        name: str,
        make_inputs: Callable[[K], dict[str, StaticInput]],
        body: Callable[[dict[str, torch.Tensor], K], Any],
        *,
        device: torch.device,
        use_cuda_graphs: bool | None = None,
        warm_up_runs: int = 2,
    ) -> None:
        self.name, self.make_inputs, self.body = name, make_inputs, body
        self.use_cuda_graphs = device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self.warm_up_runs = warm_up_runs
        self.capture: Callable[..., Any] = capture_graph
        self._buckets: dict[K, Bucket] = {}
        self._pool = None

    @property
    def keys(self) -> set[K]:
        """The buckets made so far."""
        return set(self._buckets)

    def bucket(self, key: K) -> Bucket:
        """Bucket ``key``'s buffers, made (and with graphs on, captured) on first use. A
        capture runs before any call's inputs are copied in, on idle inputs."""
        b = self._buckets.get(key)
        if b is None:
            spec = self.make_inputs(key)
            b = Bucket({n: s.tensor for n, s in spec.items()}, {n: s.idle for n, s in spec.items()})
            b.make_idle()
            self._buckets[key] = b
            if self.use_cuda_graphs:
                self._capture(b, key)
        return b

    def _capture(self, b: Bucket, key: K) -> None:
        def run() -> None:
            b.outputs = self.body(b.inputs, key)

        def warm_up() -> None:
            b.make_idle()  # the warm-up runs really execute: no row may change state
            for _ in range(self.warm_up_runs):
                run()

        b.graph = self.capture(run, warm_up, self._pool)
        self._pool = b.graph.pool()
        logger.debug(f"captured {self.name} graph {key}")

    def prepare(self, keys: Iterable[K]) -> int:
        """Makes (captures) every bucket of ``keys`` now, so no call waits for a capture."""
        n = 0
        for key in keys:
            self.bucket(key)
            n += 1
        return n

    def launch(self, key: K) -> Any:
        """Runs bucket ``key`` on what its inputs hold (a replay, or the body eagerly)."""
        b = self.bucket(key)
        if self.use_cuda_graphs and b.graph is not None:
            b.graph.replay()
        else:
            b.outputs = self.body(b.inputs, key)
        return b.outputs

    def __call__(
        self,
        key: K,
        rows: torch.Tensor | slice | tuple[torch.Tensor | slice, ...],
        values: dict[str, Any],
    ) -> Any:
        """Copies ``values[name]`` into rows ``rows`` of each named input (None: leave them
        idle), every other row idle, then launches. Returns the bucket's outputs (all rows).

        ``rows`` indexes the first axis, or (a tuple) the leading axes, e.g. (batch rows,
        positions); an input with fewer axes takes the leading indices only."""
        b = self.bucket(key)
        b.make_idle()
        index = rows if isinstance(rows, tuple) else (rows,)
        for name, value in values.items():
            if value is not None:
                t = b.inputs[name]
                t[index[: t.dim()]] = value
        return self.launch(key)


class GraphedStep:
    """A step that runs through one ``BucketedGraph`` (``self.graphs``)."""

    graphs: BucketedGraph

    @property
    def use_cuda_graphs(self) -> bool:
        return self.graphs.use_cuda_graphs
