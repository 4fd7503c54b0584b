"""The engine's launch budget: the ATen ops it issues outside its graphed steps per decode tick
do not grow with the number of sessions (on a GPU each is a launch or host work; a graph replay
is one launch). Counted on CPU with the graphed steps' static-buffer path, where a graphed
step's call counts as one op (``moss_pipecat/testing/launches.py``)."""

from __future__ import annotations

import torch

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.model import SamplingParams
from moss_pipecat.testing.launches import count_ticks, instrument, outside, start_turns

from .helpers import random_text

SAMPLINGS = [SamplingParams(), SamplingParams(top_k=5), SamplingParams.greedy_decoding()]


def _ticks(model, layout, codec, meta, n: int) -> list[dict]:
    """Snapshots of 4 ticks of ``n`` sessions (mixed sampled and greedy): the first tick
    (prefills, first frames, one step), then 3 decode ticks of all ``n``."""
    config = EngineConfig(
        max_sessions=n, max_context=256, context_budget=200, turn_reserve=60, lookahead_s=None,
        graphed_decode=True,
    )  # fmt: skip
    engine = MossEngine(model, layout, codec=codec, config=config)
    counter = instrument(engine)
    gen = torch.Generator().manual_seed(n)
    texts = [random_text(gen, meta, 16) for _ in range(n)]
    start_turns(engine, [SAMPLINGS[i % 3] for i in range(n)], texts, frames=8)
    ticks = count_ticks(engine, counter, 4)
    assert all(s.turn is not None for s in engine.core.sessions.values())  # nothing ended early
    return ticks


def test_decode_tick_ops_outside_graphs_do_not_grow_with_sessions(
    tiny_model, golden_layout, tiny_codec, realtime_meta
):
    ticks = {n: _ticks(tiny_model, golden_layout, tiny_codec, realtime_meta, n) for n in (2, 16)}
    # The step's graph holds its ops: dozens per codebook (local layers, head, sampling).
    in_step = 40 * tiny_model.cfg.rvq
    for first, *decode in ticks.values():
        assert first["prefill"]["calls"] == 1 and first["first_frame"]["calls"] == 1
        for t in decode:
            assert "prefill" not in t and "first_frame" not in t
            assert t["decode"]["calls"] == 1 and t["decode"]["graph_calls"] == 1
            assert t["codec"]["graph_calls"] == 1 and t["decode"]["inside_graph"] > in_step
    # Bucket 1 (one session) takes a few more indexing ops than every bucket above it, so the
    # comparison starts at 2; 2 and 16 sessions run the same ops outside the graphs.
    for phase in ("decode", "deliver", "codec", "other"):
        small = [outside(t, [phase]) for t in ticks[2][1:]]
        large = [outside(t, [phase]) for t in ticks[16][1:]]
        assert small == large, (phase, small, large)
    assert outside(ticks[16][2]) == outside(ticks[2][2]) < 150
    # The first frames of a batch of turns (the TTFA path) and their new codec streams do
    # not grow either.
    for phase in ("first_frame", "codec"):
        assert outside(ticks[2][0], [phase]) == outside(ticks[16][0], [phase]), phase
    # The turns' prefill chunk replays its graph buckets (8 sessions at most per replay):
    # outside them only the chunk's rows are built, a few ops per session.
    for n, (first, *_) in ticks.items():
        prefill = first["prefill"]
        assert prefill["graph_calls"] == -(-n // 8), n
        assert prefill["inside_graph"] > 50 * prefill["graph_calls"]  # 99 with one layer each
        assert prefill["outside"] < 40 + 8 * n, (n, prefill)


def test_prefill_chunk_ops_outside_graphs_drop(tiny_model, golden_layout, realtime_meta):
    """The same first tick with prefill chunks eager: the model's ops run outside graphs."""
    counts = {}
    for graphed_prefill in (False, True):
        config = EngineConfig(
            max_sessions=2, max_context=256, context_budget=200, turn_reserve=60,
            lookahead_s=None, graphed_decode=True, graphed_prefill=graphed_prefill,
        )  # fmt: skip
        engine = MossEngine(tiny_model, golden_layout, config=config)
        counter = instrument(engine)
        gen = torch.Generator().manual_seed(2)
        texts = [random_text(gen, realtime_meta, 16) for _ in range(2)]
        start_turns(engine, [SAMPLINGS[0]] * 2, texts, frames=8)
        counts[graphed_prefill] = count_ticks(engine, counter, 1)[0]["prefill"]
    eager, graphed = counts[False], counts[True]
    assert eager["graph_calls"] == 0 and graphed["graph_calls"] == 1
    # Graphed, outside is the chunk's rows alone (as above); the model's ops, outside when
    # eager, are the graph's (most of what it runs: it also copies the static inputs in).
    assert graphed["outside"] < 40 + 8 * 2, counts
    assert eager["outside"] - graphed["outside"] > graphed["inside_graph"] // 2, counts


def test_capture_prepares_the_codec_buckets_the_engine_decodes(
    tiny_model, golden_layout, tiny_codec
):
    """The engine decodes ``rvq`` codes per frame: those are the codec buckets made at start
    (not the codec's full quantizer count, which no call uses), so no call captures mid-tick."""
    config = EngineConfig(
        max_sessions=3, max_context=256, context_budget=200, turn_reserve=60, graphed_decode=True
    )
    engine = MossEngine(tiny_model, golden_layout, codec=tiny_codec, config=config)
    engine.capture_graphs()
    graph = engine.core.runner.codec_graph
    assert graph.graphs.keys == {(b, tiny_model.cfg.rvq) for b in graph.batch_buckets}
