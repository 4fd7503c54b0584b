"""The suite holds on any conforming fixture set, not just the default one.

Two fixture sets are generated here (``moss_pipecat.testing.fixtures``): one with another seed,
other shapes and special ids, no voice prompt, turn 1 running to its frame cap while the default
set's ends on EOS; one with a voice prompt and another audio side: 3 codebooks instead of 16,
96 audio codes instead of 1024 (so other pad, BOS and EOS ids), a codec with no more
quantizers than the model reads, at 16 kHz. Each is checked to have exactly the default set's
layout, then the fixture-sensitive tests (parity, rows, goldens through the engine,
interruption, EOS options, and the tests that once wrote a codebook, code or column of the
default set) run on it in a subprocess with ``MOSS_FIXTURES`` pointing at it.
The whole suite on other sets:
``python scripts/make_fixtures.py --seed N --out DIR`` then ``MOSS_FIXTURES=DIR pytest``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from moss_pipecat.testing import FixtureSpec

REPO = Path(__file__).resolve().parent.parent

# Small, so generating it and running the tests below on it stays well under a minute.
SPEC = FixtureSpec(
    seed=3,
    voice=False,
    hidden=32,
    layers=1,
    heads=2,
    kv_heads=1,
    head_dim=16,
    intermediate=64,
    local_layers=1,
    local_heads=2,
    local_kv_heads=1,
    local_head_dim=16,
    local_intermediate=64,
    n_text=300,
    vocab=316,
    eos_frame=99,  # turn 1 runs to its cap
    max_frames1=16,
    max_frames2=14,
    codec_context_s=6.0,
)
# The same small model on another audio side (the knobs the default set cannot vary).
AUDIO_SPEC = dataclasses.replace(
    SPEC,
    seed=4,
    voice=True,
    eos_frame=None,
    rvq=3,
    audio_codebook_size=96,
    codec_quantizers=3,
    codec_rate=16000,
)

# The tests that read the fixture set's goldens, ids and stopping points.
SENSITIVE = [
    "tests/parity/test_model_parity.py",
    "tests/parity/test_codec_parity.py",
    "tests/parity/test_engine_rows.py",
    "tests/parity/test_engine_goldens.py",
    "tests/model/test_kv_cache.py::test_truncate_then_regenerate_equals_fresh",
    "tests/engine/test_eos_options.py::test_masked_eos_keeps_the_golden_frames",
    "tests/engine/test_sessions.py::test_interrupt_mid_turn_then_new_turn_equals_fresh_run",
    "tests/engine/test_sessions.py::test_interrupt_after_generation_finished_rolls_back_to_heard",
    # Each failed on a set with few codebooks or codes, or a fast model (a codebook, column or
    # code of the default set written in the test, a reply read in a racy order).
    "tests/engine/test_restore.py",
    "tests/engine/test_core_driver.py",
    "tests/engine/test_launch_budget.py",
    "tests/model/test_model_errors.py",
    "tests/server/test_inflight_cut.py",
    "tests/server/test_command_mapping.py",
    "tests/server/test_id_caps.py",
    "tests/server/test_bad_input.py",
    "tests/server/test_drain.py::test_the_drain_deadline_cuts_the_turn_at_the_frames_the_client_received",
]

# Keys only our generator writes (where the set came from, how its EOS row was placed).
OURS = {"/generator", "/eos_row_adjustment_codebook0"}


@pytest.fixture(scope="module")
def generated(make_fixture_set) -> Path:
    return make_fixture_set(SPEC)


@pytest.fixture(scope="module")
def generated_audio(make_fixture_set) -> Path:
    return make_fixture_set(AUDIO_SPEC)


def _keys(obj, path: str = "") -> set[str]:
    """Every key path of a JSON document (lists of objects: their first item's keys)."""
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}/{k}"
            out.add(p)
            if not path.endswith(("/tensors", "/special_ids")) and not p.startswith(tuple(OURS)):
                out |= _keys(v, p)
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        out |= _keys(obj[0], path + "[]")
    return out


def _tensor_names(path: Path, numbered: bool = False) -> set[str]:
    with safe_open(path, "pt") as f:
        names = set(f.keys())
    return {re.sub(r"\.\d+\.", ".N.", n) for n in names} if numbered else names


def _check_layout(generated: Path, fixtures_dir: Path) -> None:
    no_voice = {"session.ref_codes", "/tensors/session.ref_codes"}
    one_codebook = any(
        json.loads((d / "realtime" / "config.json").read_text())["rvq"] == 1
        for d in (generated, fixtures_dir)
    )
    for part in ("realtime", "codec"):
        for name in ("config.json", "golden.json"):
            ours = _keys(json.loads((generated / part / name).read_text())) - OURS
            theirs = _keys(json.loads((fixtures_dir / part / name).read_text())) - OURS
            assert ours - no_voice == theirs - no_voice, (part, name)
        ours = _tensor_names(generated / part / "golden.safetensors")
        theirs = _tensor_names(fixtures_dir / part / "golden.safetensors")
        assert ours - no_voice == theirs - no_voice, part
        # Checkpoint keys: the same names up to layer/codebook numbers (and the codec's
        # optional projections, present where widths differ).
        ours = _tensor_names(generated / part / "model.safetensors", numbered=True)
        theirs = _tensor_names(fixtures_dir / part / "model.safetensors", numbered=True)
        optional = {n for n in ours ^ theirs if "_proj" in n and part == "codec"}
        if one_codebook:  # rvq - 1 = 0 local embedding tables
            optional.add("local_transformer.model.embed_tokens.N.weight")
        assert ours ^ theirs <= optional


def test_generated_set_has_the_default_sets_layout(generated: Path, fixtures_dir: Path):
    _check_layout(generated, fixtures_dir)
    meta = json.loads((generated / "realtime" / "golden.json").read_text())
    assert meta["conversation"]["ref_frames"] == 0
    assert "session.ref_codes" not in _tensor_names(generated / "realtime" / "golden.safetensors")
    assert meta["turns"]["turn1"]["stop"] == "max_frames"


def test_a_set_with_another_audio_side_has_the_default_sets_layout(
    generated_audio: Path, fixtures_dir: Path
):
    generated = generated_audio
    _check_layout(generated, fixtures_dir)
    meta = json.loads((generated / "realtime" / "golden.json").read_text())
    assert meta["conversation"]["ref_frames"] > 0
    assert "session.ref_codes" in _tensor_names(generated / "realtime" / "golden.safetensors")
    assert meta["audio"] == {"channels": 3, "audio_pad": 96, "bos": 97, "eos": 98, "vocab": 99}
    cfg = json.loads((generated / "realtime" / "config.json").read_text())
    assert (cfg["rvq"], cfg["audio_vocab_size"], cfg["audio_pad_token"]) == (3, 99, 96)
    assert cfg["local_config"]["max_position_embeddings"] == 2 * 3 + 1
    codec = json.loads((generated / "codec" / "config.json").read_text())
    assert (codec["sampling_rate"], codec["downsample_rate"]) == (16000, 1280)
    q = codec["quantizer_kwargs"]
    assert (q["num_quantizers"], q["codebook_size"]) == (3, 96)


@pytest.mark.parametrize("which", ["generated", "generated_audio"])
def test_fixture_sensitive_tests_hold_on_a_generated_set(request, which: str):
    generated = request.getfixturevalue(which)
    env = dict(os.environ, MOSS_FIXTURES=str(generated))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SENSITIVE]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_codec_quantizer_knobs_default_to_upstreams_and_keep_the_models_codebooks():
    s = FixtureSpec(seed=3).resolved()
    assert (s.codec_quantizers, s.codebook_dim) == (32, 8)
    assert FixtureSpec(seed=3, codec_quantizers=16, codebook_dim=4).resolved().codebook_dim == 4
    with pytest.raises(ValueError, match="codec_quantizers"):
        FixtureSpec(seed=3, codec_quantizers=15).resolved()
    assert FixtureSpec(seed=3, rvq=40).resolved().codec_quantizers == 40
    with pytest.raises(ValueError, match="codec_quantizers"):
        FixtureSpec(seed=3, rvq=12, codec_quantizers=11).resolved()


def test_audio_knobs_default_to_upstreams():
    """Not drawn from the seed: a seed makes the set it made before these knobs existed."""
    s = FixtureSpec(seed=3).resolved()
    assert (s.rvq, s.audio_codebook_size, s.codec_rate) == (16, 1024, 24000)
    assert (s.audio_pad, s.audio_bos, s.audio_eos, s.audio_vocab) == (1024, 1025, 1026, 1027)
    assert s.codec_hop == 1920
    assert FixtureSpec(seed=3, codec_rate=16000).resolved().codec_hop == 1280
    with pytest.raises(ValueError, match="codec_rate"):
        FixtureSpec(seed=3, codec_rate=22050).resolved()  # 80 ms = 1764 samples, not 8 patches
    # The sampling golden ties four codes at top-k 30's cut, none in the penalty window.
    assert FixtureSpec(seed=3, audio_codebook_size=40).resolved().audio_vocab == 43
    with pytest.raises(ValueError, match="audio_codebook_size must be at least 40"):
        FixtureSpec(seed=3, audio_codebook_size=39).resolved()


def test_an_eager_set_draws_a_turn_1_that_ends_on_eos_and_nothing_else_moves():
    for seed in range(12):
        plain, eager = (FixtureSpec(seed=seed, eos_eager=e).resolved() for e in (False, True))
        assert 3 <= eager.eos_frame < eager.max_frames1
        others = {f.name for f in dataclasses.fields(FixtureSpec)} - {"eos_frame", "eos_eager"}
        assert all(getattr(plain, n) == getattr(eager, n) for n in others), seed
