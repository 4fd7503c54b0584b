"""The real checkpoint's architecture, instantiated on the meta device (no weights needed)."""

from __future__ import annotations

import json
import re

import torch
from safetensors import safe_open

from moss_pipecat.model import IGNORED_KEYS, MossTTSRealtime, MossTTSRealtimeConfig


def _layer_params(H: int, heads: int, kv: int, hd: int, inter: int) -> int:
    attn = H * heads * hd + 2 * H * kv * hd + heads * hd * H + 2 * hd
    return attn + 3 * H * inter + 2 * H


def test_real_config_parameter_count():
    cfg = MossTTSRealtimeConfig.real()
    with torch.device("meta"):
        model = MossTTSRealtime(cfg)
    H, V, A, Q = 2048, 151936, 1027, 16
    layer = _layer_params(H, 16, 8, 128, 6144)
    upstream = (
        V * H  # language_model.embed_tokens (saved, unused)
        + V * H
        + Q * A * H  # the 17 row-embedding tables
        + 28 * layer
        + H  # backbone layers + final norm
        + (Q - 1) * A * H
        + 4 * layer
        + H  # local embeddings, layers, norm
        + Q * A * H  # 16 local heads
    )
    ignored = sum(V * H for _ in IGNORED_KEYS)
    assert model.num_parameters() + ignored == upstream
    assert 2.32e9 < upstream < 2.34e9  # the upstream module's ~2,332M


LOCAL_EMBEDDINGS = "local_transformer.model.embed_tokens.N.weight"


def _templates(keys) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", k) for k in keys}


def test_real_config_key_set_matches_the_checkpoint_layout(realtime_dir):
    """Our real-size key set + documented ignored keys == the checkpoint layout scaled up."""
    with safe_open(realtime_dir / "model.safetensors", "pt") as f:
        tiny_keys = set(f.keys())
    cfg = MossTTSRealtimeConfig.real()
    with torch.device("meta"):
        model = MossTTSRealtime(cfg)
    ours = set(model.checkpoint_state_dict())
    templates = _templates(ours | set(IGNORED_KEYS))
    if json.loads((realtime_dir / "config.json").read_text())["rvq"] == 1:
        templates.discard(LOCAL_EMBEDDINGS)  # one codebook: no code feeds the next (rvq - 1)
    assert templates == _templates(tiny_keys)
    counts = {
        "language_model.layers.": cfg.language.num_hidden_layers,
        "local_transformer.model.layers.": cfg.local.num_hidden_layers,
        "local_transformer.model.embed_tokens.": cfg.rvq - 1,
        "local_transformer.local_lm_heads.": cfg.rvq,
        "embed_tokens.": cfg.rvq + 1,
    }
    for prefix, n in counts.items():
        idx = {int(k[len(prefix) :].split(".")[0]) for k in ours if k.startswith(prefix)}
        assert idx == set(range(n)), prefix
    shapes = model.checkpoint_state_dict()
    assert shapes["embed_tokens.0.weight"].shape == (151936, 2048)
    assert shapes["embed_tokens.16.weight"].shape == (1027, 2048)
    assert shapes["language_model.layers.27.self_attn.k_proj.weight"].shape == (1024, 2048)
    assert shapes["language_model.layers.0.self_attn.q_norm.weight"].shape == (128,)
    assert shapes["local_transformer.local_lm_heads.15.weight"].shape == (1027, 2048)
    # KV per position: 28 layers x 8 kv heads x 128 x (k, v) x 2 bytes (bf16) = 112 KiB.
    cache_bytes = 2 * 28 * 8 * 128 * 2
    assert cache_bytes == 112 * 1024


def test_tiny_config_is_read_from_the_checkpoint(realtime_dir):
    import json

    raw = json.loads((realtime_dir / "config.json").read_text())
    cfg = MossTTSRealtimeConfig.from_dict(raw)
    lang = raw["language_config"]
    assert cfg.language.hidden_size == lang["hidden_size"]
    assert cfg.language.num_hidden_layers == lang["num_hidden_layers"]
    assert cfg.language.vocab_size == lang["vocab_size"]
    assert cfg.text_pad == raw["text_pad"] and cfg.reference_audio_pad == raw["reference_audio_pad"]
    assert cfg.audio_eos == raw["audio_pad_token"] + 2


def test_missing_local_keys_take_upstream_local_defaults():
    """A checkpoint config may omit local_config keys: the upstream class defaults apply."""
    cfg = MossTTSRealtimeConfig.from_dict(
        {
            "language_config": {
                "hidden_size": 2048,
                "num_hidden_layers": 28,
                "num_attention_heads": 16,
                "num_key_value_heads": 8,
                "intermediate_size": 6144,
                "vocab_size": 151936,
            },
            "local_config": {"rope_theta": 10000},
        }
    )
    assert cfg.local.num_hidden_layers == 4 and cfg.local.head_dim == 128
    assert cfg.local.rope_theta == 10000 and cfg.local.rope_scaling_factor == 1.0
    assert cfg.text_pad == 151655 and cfg.reference_audio_pad == 151654
