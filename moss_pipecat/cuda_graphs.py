"""The one CUDA-graph capture routine shared by the TTS and codec graphed steps."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
