"""Ray Serve app options that shape the engine: KV pools, graphs (no Ray cluster needed)."""

from __future__ import annotations

import pytest

from moss_pipecat.server.ray_app import _engine_from, parse_pools


def test_parse_pools_accepts_command_line_and_python_forms():
    assert parse_pools("128x2048,24x8192 2X32768") == ((128, 2048), (24, 8192), (2, 32768))
    assert parse_pools([(4, 512), [1, 1024]]) == ((4, 512), (1, 1024))
    with pytest.raises(ValueError, match="SLOTSxCAPACITY"):
        parse_pools("128by2048")


def test_engine_options_build_pools_and_graphed_steps(fixtures_dir):
    engine = _engine_from(
        {
            "tiny": str(fixtures_dir),
            "no_codec": True,
            "kv_pools": parse_pools("2x256,1x1024"),
            "max_sessions": 3,
            "max_context": 1024,
            "graphed_decode": True,
        }
    )
    try:
        assert engine.config.pools() == [(2, 256), (1, 1024)]
        assert engine.graphed and not engine.uses_cuda_graphs  # CPU: padded path, no capture
    finally:
        engine.shutdown()
