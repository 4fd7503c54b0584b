"""Grouped-query attention folded into the query axis equals SDPA's own GQA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moss_pipecat.model.layers import grouped_attention


@pytest.mark.parametrize(("h", "n_kv", "T"), [(4, 4, 3), (4, 2, 1), (8, 2, 5), (16, 8, 7)])
def test_grouped_attention_equals_sdpa_gqa(h, n_kv, T):
    gen = torch.Generator().manual_seed(h * 10 + T)
    B, S, hd = 3, 11, 16
    q = torch.randn(B, h, T, hd, generator=gen)
    k = torch.randn(B, n_kv, S, hd, generator=gen)
    v = torch.randn(B, n_kv, S, hd, generator=gen)
    # Each row attends to a causal window ending at its own length (rows of different lengths).
    lengths = torch.tensor([4, 11, 7])
    pos = (lengths - T)[:, None] + torch.arange(T)  # [B, T]
    mask = (torch.arange(S)[None, None, :] <= pos[:, :, None])[:, None]  # [B, 1, T, S]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=h != n_kv)
    got = grouped_attention(q, k, v, mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # A mask shared by the batch broadcasts the same way.
    shared = mask[:1]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=shared, enable_gqa=h != n_kv)
    torch.testing.assert_close(grouped_attention(q, k, v, shared), want, atol=1e-6, rtol=1e-5)
