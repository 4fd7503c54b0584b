"""Fused q/k/v and gate/up matmuls: same outputs, same state dict, no extra memory."""

from __future__ import annotations

import torch

from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.model.layers import MLP, Attention


def test_loaded_models_are_fused_and_equal_the_unfused_model(tiny_model, realtime_golden):
    attn = [m for m in tiny_model.modules() if isinstance(m, Attention)]
    mlps = [m for m in tiny_model.modules() if isinstance(m, MLP)]
    assert attn and mlps and all(m.wqkv is not None for m in attn)
    assert all(m.w13 is not None for m in mlps)
    # The separate weights are views into the fused ones: nothing is stored twice.
    for m in attn:
        base = m.wqkv.untyped_storage().data_ptr()
        for lin in (m.q_proj, m.k_proj, m.v_proj):
            assert lin.weight.untyped_storage().data_ptr() == base
    unfused = MossTTSRealtime(tiny_model.cfg)
    unfused.load_state_dict({k: v.clone() for k, v in tiny_model.state_dict().items()})
    unfused.eval().requires_grad_(False)
    assert all(m.wqkv is None for m in unfused.modules() if isinstance(m, Attention))
    assert tiny_model.state_dict().keys() == unfused.state_dict().keys()
    rows = realtime_golden["session.rows"][None]
    c1, c2 = tiny_model.new_cache(1, rows.shape[1]), unfused.new_cache(1, rows.shape[1])
    h1, h2 = tiny_model.backbone(rows, c1), unfused.backbone(rows, c2)
    torch.testing.assert_close(h1, h2, atol=2e-6, rtol=0)
    torch.testing.assert_close(c1.k, c2.k, atol=2e-6, rtol=0)
    codes = torch.randint(0, tiny_model.cfg.audio_vocab_size, (5, tiny_model.cfg.rvq))
    torch.testing.assert_close(
        tiny_model.local_transformer.teacher_forced_logits(h1[0, -5:], codes),
        unfused.local_transformer.teacher_forced_logits(h1[0, -5:], codes),
        atol=2e-5,
        rtol=0,
    )
