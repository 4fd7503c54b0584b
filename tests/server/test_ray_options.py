"""Ray Serve app options that shape the engine: KV pools, graphs (no Ray cluster needed).
They are the CLI's options model (``options``): one policy for both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moss_pipecat.cli import build_parser, serve_options
from moss_pipecat.server.options import EngineOptions, ServerOptions, parse_pools, split_options


def test_parse_pools_accepts_command_line_and_python_forms():
    assert parse_pools("128x2048,24x8192 2X32768") == ((128, 2048), (24, 8192), (2, 32768))
    assert parse_pools([(4, 512), [1, 1024]]) == ((4, 512), (1, 1024))
    with pytest.raises(ValueError, match="SLOTSxCAPACITY"):
        parse_pools("128by2048")


def test_engine_options_build_pools_and_graphed_steps(fixtures_dir):
    engine = EngineOptions(
        tiny=str(fixtures_dir),
        no_codec=True,
        kv_pools="2x256,1x1024",
        graphs="on",
    ).load_engine()
    try:
        assert engine.config.pools() == [(2, 256), (1, 1024)]
        assert (engine.config.max_sessions, engine.config.max_context) == (3, 1024)
        assert engine.graphed and not engine.uses_cuda_graphs  # CPU: padded path, no capture
    finally:
        engine.shutdown()


def test_ray_strings_and_cli_flags_make_the_same_options():
    ray_args = {
        "tiny": "/x",
        "kv_pools": "16x2048,2x32768",
        "lookahead_s": "0",
        "no_codec": "true",
        "idle_expiry_s": "30",
        "write_timeout_s": "2.5",
        "max_pending_connections": "4",
        "prefix_cache_mib": "64",
    }
    engine_kw, server_kw = split_options(ray_args, EngineOptions, ServerOptions)
    argv = ["serve", "--tiny", "/x", "--kv-pools", "16x2048", "2x32768", "--lookahead", "0"]
    argv += ["--no-codec", "--idle-expiry", "30", "--write-timeout", "2.5"]
    argv += ["--max-pending-connections", "4", "--prefix-cache-mib", "64"]
    cli_engine, cli_server = serve_options(build_parser().parse_args(argv))
    assert EngineOptions.model_validate(engine_kw) == cli_engine
    assert ServerOptions.model_validate(server_kw) == cli_server
    cfg = cli_engine.engine_config()
    assert (cfg.max_sessions, cfg.max_context, cfg.context_budget, cfg.turn_reserve) == (
        18,
        32768,
        29491,
        2000,
    )
    assert cfg.lookahead_s is None  # 0: unpaced
    assert cfg.prefix_cache_bytes == 64 * 2**20
    assert EngineOptions(tiny="/x").engine_config().prefix_cache_bytes > 0  # on by default
    assert EngineOptions(tiny="/x", prefix_cache_mib=0).engine_config().prefix_cache_bytes == 0
    limits = cli_server.limits()
    assert (limits.idle_expiry_s, limits.write_timeout_s, limits.max_pending_connections) == (
        30.0,
        2.5,
        4,
    )
    with pytest.raises(ValueError, match="unknown options: max_sesions"):
        split_options({"max_sesions": "3"}, EngineOptions, ServerOptions)
    with pytest.raises(ValidationError):
        EngineOptions(graphs="sometimes")
    with pytest.raises(ValidationError):
        ServerOptions(ssl_certfile="/cert.pem")  # no key


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MOSS_PIPECAT_TOKEN", raising=False)
    assert ServerOptions().token() is None
    monkeypatch.setenv("MOSS_PIPECAT_TOKEN", "from-env")
    assert ServerOptions().server_config().token == "from-env"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert ServerOptions(token_file=str(path)).token() == "from-file"  # the file wins
    path.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        ServerOptions(token_file=str(path)).token()
    with pytest.raises(SystemExit):  # never on argv
        build_parser().parse_args(["serve", "--tiny", "/x", "--token", "t"])
