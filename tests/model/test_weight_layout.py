"""The model stores q/k/v, the q/k norms and gate/up fused (one forward path); the checkpoint
keeps them apart: loading concatenates, saving splits, and a loaded model moves like any
module (``.to(dtype)`` / ``.to(device)`` keep it whole and give what loading there gives)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from moss_pipecat.model import MossTTSRealtime, SamplingParams, generate_turn
from moss_pipecat.model.layers import Embedding
from moss_pipecat.model.moss_tts import IGNORED_KEYS

REPO = Path(__file__).resolve().parents[2]


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


def test_loading_leaves_the_compiler_unimported(realtime_dir, codec_dir):
    """The model and the codec are built on ``meta`` and get the checkpoint's tensors: their
    tables are not initialised there, so a process that never compiles never imports
    ``torch._dynamo`` (~2 s of its start-up). Built on a real device, a table is initialised as
    ``nn.Embedding`` does."""
    code = (
        "import sys\n"
        "from moss_pipecat.codec import MossAudioCodec\n"
        "from moss_pipecat.model import MossTTSRealtime\n"
        "MossTTSRealtime.from_pretrained(sys.argv[1])\n"
        "MossAudioCodec.from_pretrained(sys.argv[2])\n"
        "print([m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(realtime_dir), str(codec_dir)],
        env={"PATH": "", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "[]"
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ours = Embedding(7, 3, padding_idx=2).weight
        torch.manual_seed(5)
        theirs = nn.Embedding(7, 3, padding_idx=2).weight
    assert torch.equal(ours, theirs) and not ours.eq(0).all()


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
