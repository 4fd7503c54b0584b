"""benchmarks/upstream/bench_upstream.py without upstream: argument errors and the pure helpers.

The side-by-side run itself needs a checkout of OpenMOSS/MOSS-TTS (and transformers 5.0.0), so it
is not run here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from moss_pipecat.model import IGNORED_KEYS, MossTTSRealtimeConfig

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "upstream" / "bench_upstream.py"


@pytest.fixture(scope="module")
def bench():
    # The benchmarks import their helpers (``_common``) as top-level modules; this script puts
    # their folder on ``sys.path`` itself.
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("bench_upstream")
    finally:
        sys.path.remove(str(SCRIPT.parent))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MOSS_TTS_UPSTREAM"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def test_missing_repo_exits_with_message(tmp_path):
    proc = _run("--upstream-repo", str(tmp_path / "nonexistent"))
    assert proc.returncode != 0
    assert "bench_upstream:" in proc.stderr and "not a directory" in proc.stderr
    assert proc.stdout == ""  # no JSON


def test_no_repo_given_is_a_usage_error():
    proc = _run()
    assert proc.returncode == 2
    assert "--upstream-repo" in proc.stderr


def test_incomplete_or_broken_upstream_package(bench, tmp_path):
    with pytest.raises(bench.UpstreamError, match="moss_tts_realtime/mossttsrealtime/"):
        bench.find_upstream_package(tmp_path)  # a directory, but not a MOSS-TTS checkout
    pkg = tmp_path / "moss_tts_realtime" / "mossttsrealtime"
    pkg.mkdir(parents=True)
    (pkg / "modeling_mossttsrealtime.py").write_text("")
    with pytest.raises(bench.UpstreamError, match=r"lacks .*streaming_mossttsrealtime\.py"):
        bench.find_upstream_package(tmp_path)
    # All files there but not the expected classes: a clear error, not a traceback.
    for m in bench.UPSTREAM_MODULES:
        (pkg / f"{m}.py").write_text("")
    (pkg / "__init__.py").write_text("")
    assert bench.find_upstream_package(tmp_path / "moss_tts_realtime") == pkg.parent.resolve()
    with pytest.raises(bench.UpstreamError, match="cannot import upstream"):
        bench.import_upstream(tmp_path)
    for name in [n for n in sys.modules if n.startswith(bench.UPSTREAM_PACKAGE)]:
        del sys.modules[name]  # the fake package must not shadow a real one later
    sys.path.remove(str(pkg.parent.resolve()))


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_upstream_config_round_trips(bench, realtime_dir, which):
    import json

    if which == "tiny":
        cfg = MossTTSRealtimeConfig.from_dict(
            json.loads((realtime_dir / "config.json").read_text())
        )
    else:
        cfg = MossTTSRealtimeConfig.real()
    d = bench.upstream_config_dict(cfg)
    assert MossTTSRealtimeConfig.from_dict(d) == cfg
    assert json.loads(json.dumps(d)) == d  # plain config.json material


def test_weight_handoff_uses_checkpoint_keys(bench, tiny_model, realtime_dir):
    ours = tiny_model.checkpoint_state_dict()
    with safe_open(realtime_dir / "model.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert set(ours) == set(shapes) - set(IGNORED_KEYS)
    assert all(tuple(v.shape) == shapes[k] for k, v in ours.items())
    bench.check_handoff_keys(list(IGNORED_KEYS), [])  # the unused table may stay missing
    with pytest.raises(bench.UpstreamError, match="missing"):
        bench.check_handoff_keys(["local_transformer.model.norm.weight"], [])
    with pytest.raises(bench.UpstreamError, match="unexpected"):
        bench.check_handoff_keys([], ["embed_tokens.99.weight"])


def _upstream_rows(history, prefix: list[int], cfg: MossTTSRealtimeConfig) -> torch.Tensor:
    """What upstream's prefill feeds: the history, then the prefix as text rows, BOS last."""
    seg = torch.full((len(prefix), cfg.channels), cfg.audio_pad_token, dtype=torch.int64)
    seg[:, 0] = torch.tensor(prefix)
    seg[-1, 1] = cfg.audio_bos
    return torch.cat((torch.from_numpy(history), seg))


def test_prompts_split_for_upstream_exactly(bench, tiny_model, realtime_dir):
    cfg = tiny_model.cfg
    golden = bench.golden_prompts(realtime_dir, with_frames=True)
    synthetic = bench.synthetic_prompts(cfg, context=40, turn2_rows=20, frames=8)
    assert synthetic.turn1.shape == (40, cfg.channels)
    assert synthetic.turn2.shape == (20, cfg.channels)
    for prompts in (golden, synthetic):
        for prompt in (prompts.turn1, prompts.turn2):
            tiny_model.validate_rows(prompt[None])
            history, prefix = bench.split_for_upstream(prompt, cfg)
            assert 1 <= len(prefix) <= bench.DELAY_TOKENS
            assert torch.equal(_upstream_rows(history, prefix, cfg), prompt)
    bad = golden.turn1.clone()
    bad[-1, 1] = cfg.audio_pad_token
    with pytest.raises(ValueError, match="BOS"):
        bench.split_for_upstream(bad, cfg)
