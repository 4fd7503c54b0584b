"""bf16/fp16 inference stays close to float32 (which the parity tests pin to upstream).

Norms, RoPE tables, logits and sampling run in float32 whatever the weights' dtype; the
residual stream, attention and matmuls run in the model dtype, as upstream runs on GPU.
"""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.codec import MossAudioCodec
from moss_pipecat.model import MossTTSRealtime

# Relative to the largest magnitude; bf16 keeps 8 mantissa bits, fp16 11.
TOLERANCE = {torch.bfloat16: 4e-2, torch.float16: 8e-3}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_model_in_low_precision_tracks_float32(tiny_model, realtime_dir, realtime_golden, dtype):
    low = MossTTSRealtime.from_pretrained(realtime_dir, dtype=dtype)
    rows = realtime_golden["session.rows"][None]  # [1, T, 17]
    c32, c16 = tiny_model.new_cache(1, rows.shape[1]), low.new_cache(1, rows.shape[1])
    assert c16.k.dtype == dtype
    h32, h16 = tiny_model.backbone(rows, c32), low.backbone(rows, c16)
    assert h16.dtype == dtype
    assert rel(h16, h32) < TOLERANCE[dtype]
    codes = torch.randint(0, low.cfg.audio_vocab_size, (8, low.cfg.rvq))
    l32 = tiny_model.local_transformer.teacher_forced_logits(h32[0, -8:], codes)
    l16 = low.local_transformer.teacher_forced_logits(h16[0, -8:], codes)
    assert l16.dtype == torch.float32  # logits (and sampling) in float32
    assert rel(l16, l32) < TOLERANCE[dtype]
    # The sampling distribution barely moves: total variation of the softmax per codebook.
    tv = 0.5 * (l16.softmax(-1) - l32.softmax(-1)).abs().sum(-1).max()
    assert float(tv) < 10 * TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_codec_in_low_precision_tracks_float32(codec_dir, codec_golden, dtype):
    c32 = MossAudioCodec.from_pretrained(codec_dir)
    c16 = MossAudioCodec.from_pretrained(codec_dir, dtype=dtype)
    assert c16.decoder_dtype == dtype
    codes = torch.randint(
        0, c32.config.quantizer.codebook_size, (c32.config.quantizer.num_quantizers, 2, 12)
    )
    w32, w16 = c32.decode(codes), c16.decode(codes)
    assert w16.dtype == torch.float32
    assert rel(w16, w32) < 2 * TOLERANCE[dtype]
    # streaming in low precision equals its own full decode
    state = c16.new_stream_state(2)
    slots = [state.add_stream(), state.add_stream()]
    chunks = [c16.decode_step(state, codes[:, :, i : i + 1], slots) for i in range(12)]
    torch.testing.assert_close(
        torch.cat(chunks, dim=1), w16[:, 0], atol=TOLERANCE[dtype] * w16.abs().max(), rtol=0
    )
