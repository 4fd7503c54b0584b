"""Bad checkpoints and bad inputs give clear typed errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from moss_pipecat.errors import CheckpointError, ConfigMismatchError, InvalidInputError
from moss_pipecat.model import MossTTSRealtime, SamplingParams


@pytest.fixture(scope="module")
def model(realtime_dir) -> MossTTSRealtime:
    return MossTTSRealtime.from_pretrained(realtime_dir)


@pytest.fixture
def ckpt(tmp_path, realtime_dir):
    d = tmp_path / "ckpt"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(realtime_dir / name, d / name)
    return d


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MossTTSRealtime.from_pretrained(tmp_path / "nope")


def test_unreachable_hub_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="could not download"):
        MossTTSRealtime.from_pretrained("OpenMOSS-Team/no-such-model-for-tests")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_corrupt_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_config_missing_key(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    del raw["language_config"]
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="language_config"):
        MossTTSRealtime.from_pretrained(ckpt)


@pytest.mark.parametrize(
    "change", [{"rvq": 0}, {"audio_pad_token": 0}, {"audio_vocab_size": "pad+2"}]
)
def test_config_audio_ids_without_room_for_pad_bos_eos(ckpt, change):
    raw = json.loads((ckpt / "config.json").read_text())
    if change.get("audio_vocab_size") == "pad+2":  # pad and BOS fit, EOS does not
        change = {"audio_vocab_size": raw["audio_pad_token"] + 2}
    (ckpt / "config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(CheckpointError, match="invalid audio config"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_corrupt_weights(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(b"\x13garbage" + data[100:5000])
    with pytest.raises(CheckpointError, match="cannot read"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_config_weights_mismatch(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    raw["language_config"]["intermediate_size"] *= 2
    raw["language_config"]["num_hidden_layers"] += 1
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigMismatchError, match="missing.*wrong shapes"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_unexpected_and_missing_tensors(ckpt):
    state = load_file(ckpt / "model.safetensors")
    state["something.else"] = torch.zeros(2)
    del state["local_transformer.local_lm_heads.0.weight"]
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(ConfigMismatchError, match="1 missing.*1 unexpected"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_sharded_checkpoint_loads_identically(ckpt, model, realtime_golden):
    state = load_file(ckpt / "model.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    shards = {
        "model-00001-of-00002.safetensors": keys[:half],
        "model-00002-of-00002.safetensors": keys[half:],
    }
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, ckpt / name)
    (ckpt / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = MossTTSRealtime.from_pretrained(ckpt)
    rows = realtime_golden["backbone.input_ids"]
    a = model.backbone(rows, model.new_cache(1, 32))
    b = sharded.backbone(rows, sharded.new_cache(1, 32))
    assert torch.equal(a, b)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shards"):
        MossTTSRealtime.from_pretrained(ckpt)


def test_bad_rows(model):
    cache = model.new_cache(2, 64)
    C = model.cfg.channels
    good = torch.full((1, 3, C), model.cfg.audio_pad_token)
    good[..., 0] = 1
    bad_cases = {
        "rank": good[0],
        "channels": good[..., :-1],
        "empty": good[:, :0],
        "dtype": good.float(),
        "text id": good.clone().index_fill_(2, torch.tensor([0]), model.cfg.language.vocab_size),
        "negative": good.clone().index_fill_(2, torch.tensor([0]), -1),
        "audio id": good.clone().index_fill_(2, torch.tensor([C - 1]), model.cfg.audio_vocab_size),
    }
    for name, rows in bad_cases.items():
        with pytest.raises(InvalidInputError):
            model.prefill(rows, cache)
        assert cache.lengths.tolist() == [0, 0], name  # nothing was appended
    with pytest.raises(InvalidInputError):
        model.prefill([[1] * C], cache)
    with pytest.raises(InvalidInputError, match="slots"):
        model.prefill(good, cache, slots=torch.tensor([5]))
    with pytest.raises(InvalidInputError, match="slots"):
        model.prefill(good.repeat(2, 1, 1), cache, slots=torch.tensor([1, 1]))
    with pytest.raises(InvalidInputError, match="n_new"):
        model.prefill(good, cache, n_new=torch.tensor([0]))
    with pytest.raises(InvalidInputError, match="exceeds"):
        model.prefill(good.repeat(3, 1, 1), cache)
    model.prefill(good, cache)  # still usable
    assert cache.lengths.tolist() == [3, 0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=0.0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(repetition_penalty=0.0),
        dict(repetition_window=-2),
    ],
)
def test_bad_sampling_params(kwargs):
    with pytest.raises(InvalidInputError):
        SamplingParams(**kwargs)
