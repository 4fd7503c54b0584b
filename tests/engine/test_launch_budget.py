"""The engine's launch budget: what it issues outside its graphed steps per tick."""

from __future__ import annotations

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine


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
    graph = engine._codec_graph
    assert set(graph._buffers) == {(b, tiny_model.cfg.rvq) for b in graph.batch_buckets}
