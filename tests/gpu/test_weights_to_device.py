"""On a GPU: a model loaded on the CPU and moved with ``.to("cuda")`` equals one loaded on the
GPU (its fused projections move whole: the same weights, the same frames)."""

from __future__ import annotations

import torch

from moss_pipecat.model import MossTTSRealtime, SamplingParams, generate_turn


def test_to_cuda_after_load_equals_loading_on_cuda(realtime_dir, realtime_golden):
    moved = MossTTSRealtime.from_pretrained(realtime_dir, dtype=torch.bfloat16).to("cuda")
    loaded = MossTTSRealtime.from_pretrained(realtime_dir, dtype=torch.bfloat16, device="cuda")
    for a, b in zip(moved.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert a.device.type == "cuda" and torch.equal(a, b)
    prompt = realtime_golden["turn1.prompt"]
    frames = []
    for m in (moved, loaded):
        cache = m.new_cache(1, prompt.shape[0] + 16)
        out = generate_turn(m, cache, 0, prompt, [], 12, SamplingParams(), seed=3, min_frames=12)
        frames.append(out.frames.cpu())
    assert torch.equal(frames[0], frames[1])
