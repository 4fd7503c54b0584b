"""The model stores q/k/v, the q/k norms and gate/up fused (one forward path); the checkpoint
keeps them apart: loading concatenates, saving splits, and a loaded model moves like any
module (``.to(dtype)`` / ``.to(device)`` keep it whole and give what loading there gives)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from moss_pipecat.model import MossTTSRealtime, SamplingParams, generate_turn
from moss_pipecat.model.moss_tts import IGNORED_KEYS


def test_checkpoint_keys_and_values_round_trip(tiny_model, realtime_dir):
    linears = {n.rsplit(".", 2)[-2] for n, _ in tiny_model.named_parameters()}
    assert {"qkv_proj", "qk_norm", "gate_up_proj"} <= linears
    assert not linears & {"q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "gate_proj"}
    saved = load_file(str(realtime_dir / "model.safetensors"))
    ours = tiny_model.checkpoint_state_dict()
    assert set(ours) == set(saved) - set(IGNORED_KEYS)  # the checkpoint's own key names
    for k, v in ours.items():
        assert torch.equal(v, saved[k]), k  # split back exactly
    again = MossTTSRealtime.from_state_dict(tiny_model.cfg, {k: v.clone() for k, v in ours.items()})
    mine = tiny_model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in again.state_dict().items())


def _frames(model: MossTTSRealtime, prompt: torch.Tensor, sampling: SamplingParams):
    cache = model.new_cache(1, prompt.shape[0] + 16)
    out = generate_turn(model, cache, 0, prompt, [], 12, sampling, seed=3, min_frames=12)
    return out.frames, out.hidden


@pytest.mark.parametrize(
    "sampling", [SamplingParams.greedy_decoding(), SamplingParams()], ids=["greedy", "seeded"]
)
def test_to_dtype_after_load_equals_loading_in_that_dtype(realtime_dir, realtime_golden, sampling):
    """float32 -> bfloat16 with ``.to`` after loading == loading in bfloat16: the same weights,
    the same frames and hidden states (``.to(device)``: tests/gpu)."""
    prompt = realtime_golden["turn1.prompt"]
    moved = MossTTSRealtime.from_pretrained(realtime_dir).to(torch.bfloat16)
    loaded = MossTTSRealtime.from_pretrained(realtime_dir, dtype=torch.bfloat16)
    for m in (moved, loaded):
        assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    for a, b in zip(moved.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    frames, hidden = _frames(moved, prompt, sampling)
    want_frames, want_hidden = _frames(loaded, prompt, sampling)
    assert torch.equal(frames, want_frames) and torch.equal(hidden, want_hidden)
