"""Ray Serve app options that shape the engine: KV pools, graphs (no Ray cluster needed).
They are the CLI's options model (``options``): one policy for both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moss_pipecat.cli import build_parser, serve_options
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.server.options import EngineOptions, ServerOptions, parse_pools, split_options
from moss_pipecat.server.ray_app import build_app


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


# A bad option is one typed line naming it (as `moss-pipecat serve` exits 2 with), before Ray
# deploys anything: not pydantic's report or a replica that fails to start.
@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({"max_sessions": "many"}, "max_sessions: Input should be a valid integer"),
        ({"lookahead_s": "-1"}, "lookahead_s: "),
        ({"idle_expiry_s": "-1"}, "idle_expiry_s: "),
        ({"bogus": "1", "also_bogus": "2"}, "unknown options: also_bogus, bogus"),
        ({"port": "8000"}, "port is Ray Serve's"),
        ({"num_replicas": "0"}, "num_replicas: "),
        ({"num_replicas": "2", "max_replicas": "4"}, "not both"),
        ({"min_replicas": "3", "max_replicas": "2"}, "max_replicas (2) is below min_replicas (3)"),
        ({"num_gpus": "-1"}, "num_gpus: "),
        ({"kv_pools": "2x64", "max_sessions": "4"}, "max_sessions 4 disagrees with kv_pools (2)"),
        # the engine config's own checks
        ({"context_budget": "4096", "max_context": "2048"}, "context_budget <= max_context"),
    ],
)
def test_a_bad_option_is_one_typed_line_naming_it(args, says):
    with pytest.raises(InvalidInputError) as info:
        build_app({"tiny": "1", **args})
    message = str(info.value)
    assert message.startswith("moss-pipecat Ray app: ") and says in message
    assert "\n" not in message and "errors.pydantic.dev" not in message
