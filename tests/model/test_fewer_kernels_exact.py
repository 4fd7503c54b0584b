"""The kernel reductions of issue #23 give the numbers of the code they replace, bit for bit
(float32 on CPU): each rewrite is checked against the former formula, written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moss_pipecat.codec.modules import apply_rope, rope_cos_sin, rope_tables
from moss_pipecat.masks import additive_mask
from moss_pipecat.model.layers import RMSNorm
from moss_pipecat.model.sampling import BatchSampling, SamplingParams, filter_logits, penalize


def _former_filter(logits, temperature, top_k, top_p):
    """The two-sort top-k / top-p of before (hoisting and the scatter changed around it)."""
    V = logits.shape[-1]
    scores = logits / temperature[:, None]
    k = torch.where(top_k > 0, top_k, V).clamp(1, V)
    kth = scores.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    scores = scores.masked_fill(scores < kth, float("-inf"))
    asc, order = scores.sort(dim=-1, descending=False)
    drop_sorted = asc.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)[:, None]
    drop_sorted[:, -1] = False
    return scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))


def _former_penalize(logits, seen, penalty):
    p = penalty.reshape(-1, 1)
    return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)


@pytest.mark.parametrize("ties", [False, True])
def test_sampling_filters_and_penalty_equal_the_former_ones(ties):
    gen = torch.Generator().manual_seed(1)
    B, V = 8, 1027
    logits = torch.randn(B, V, generator=gen) * 4
    if ties:  # many exactly tied scores, cut through by top-k and top-p
        logits = (logits * 2).round() / 2
    logits[::2, V - 1] = float("-inf")  # a masked EOS
    params = [
        SamplingParams(),
        SamplingParams(top_k=0),
        SamplingParams(top_p=1.0),
        SamplingParams(top_k=1),
        SamplingParams(temperature=1.7, top_k=400, top_p=0.97, repetition_penalty=1.4),
        SamplingParams(temperature=0.2, top_k=3, top_p=0.05),
        SamplingParams(top_k=0, top_p=1.0),
        SamplingParams.greedy_decoding(),
    ]
    s = BatchSampling.from_params(params)
    seen = torch.rand(B, V, generator=gen) < 0.05
    assert torch.equal(penalize(logits, seen, s.penalty), _former_penalize(logits, seen, s.penalty))
    got = filter_logits(logits, s.temperature, s.top_k, s.top_p)
    assert torch.equal(got, _former_filter(logits, s.temperature, s.top_k, s.top_p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_scaling_after(dtype):
    """fp32 scales inside F.rms_norm (same numbers); bf16 keeps the reference's two roundings."""
    x = (torch.randn(3, 5, 64) * 3).to(dtype)
    norm = RMSNorm(64, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    assert torch.equal(norm(x), norm.weight * F.rms_norm(x, (64,), eps=1e-6))


@pytest.mark.parametrize("T, S", [(1, 256), (16, 16), (7, 40)])
def test_additive_mask_attends_as_the_boolean_one(T, S):
    gen = torch.Generator().manual_seed(T)
    q = torch.randn(2, 4, T, 32, generator=gen)
    k, v = torch.randn(2, 2, 4, S, 32, generator=gen)
    allowed = torch.rand(2, 1, T, S, generator=gen) < 0.7
    allowed[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(allowed, q.dtype))
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codec_rope_equals_the_pairwise_formula(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 2, 4, 6, 16, generator=gen) * 2).to(dtype)  # [2 (q, k), B, H, T, Dh]
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [100, 101, 102, 103, 104, 105]])
    cos, sin = rope_cos_sin(positions, 16, 10000.0)  # [B, T, Dh/2]
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, Dh/2]
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    want = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    c, s = rope_tables(cos, sin)
    assert torch.equal(apply_rope(x, c, s), want.to(dtype))
