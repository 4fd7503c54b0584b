"""Grouped-query attention folded into the query axis equals SDPA's own GQA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moss_pipecat.masks import additive_mask
from moss_pipecat.model.layers import KEY_BLOCK, grouped_attention, key_span


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


def _causal(lengths: torch.Tensor, T: int, S: int) -> torch.Tensor:
    """[B, 1, T, S] bool: row b's T queries end at its length (keys 0..position)."""
    pos = (lengths - T)[:, None] + torch.arange(T)  # [B, T]
    return (torch.arange(S)[None, None, :] <= pos[:, :, None])[:, None]


def test_attention_over_several_key_blocks_equals_sdpa():
    gen = torch.Generator().manual_seed(3)
    B, h, n_kv, T, hd = 3, 8, 2, 8, 16
    S = 2 * KEY_BLOCK + 57  # whole blocks and a partial one
    q = torch.randn(B, h, T, hd, generator=gen)
    k, v = (torch.randn(B, n_kv, S, hd, generator=gen) for _ in range(2))
    mask = _causal(torch.tensor([S, KEY_BLOCK + 3, 40]), T, S)
    mask[2, :, 0] = False  # a query with no key at all: zeros, as from SDPA
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    want[2, :, 0] = 0.0
    torch.testing.assert_close(grouped_attention(q, k, v, mask), want, atol=1e-6, rtol=1e-5)


def test_a_row_attends_alike_over_any_span_of_whole_key_blocks():
    """The claim eager calls rest on: a query's numbers over the key blocks that cover it
    equal, bit for bit, its numbers over the whole slot, whatever rows share the call."""
    gen = torch.Generator().manual_seed(4)
    h, n_kv, T, hd = 4, 2, 8, 16
    S = 3 * KEY_BLOCK + 20  # the slot
    q = torch.randn(2, h, T, hd, generator=gen)
    k, v = (torch.randn(2, n_kv, S, hd, generator=gen) for _ in range(2))
    lengths = torch.tensor([KEY_BLOCK - 5, 2 * KEY_BLOCK + 1])
    whole = grouped_attention(q, k, v, _causal(lengths, T, S))
    for span in (KEY_BLOCK, 2 * KEY_BLOCK, 3 * KEY_BLOCK):
        # Row 0 alone over the blocks that cover it (and more).
        got = grouped_attention(
            q[:1], k[:1, :, :span], v[:1, :, :span], _causal(lengths[:1], T, span)
        )
        assert torch.equal(got[0], whole[0]), span
    key_span_of_row_1 = key_span(int(lengths[1]), S)
    assert key_span_of_row_1 == 3 * KEY_BLOCK
    s = key_span_of_row_1
    got = grouped_attention(q, k[:, :, :s], v[:, :, :s], _causal(lengths, T, s))
    assert torch.equal(got, whole)
    assert key_span(S, S) == S and key_span(1, S) == KEY_BLOCK


def test_a_mask_counts_only_in_the_blocks_it_changes():
    """The CPU attention applies a mask only to the key blocks it changes: a boolean mask
    and its additive twin give the same numbers bit for bit, and a bias in a block where
    every key is visible (an additive mask that hides nothing there) still counts."""
    gen = torch.Generator().manual_seed(5)
    B, h, n_kv, T, hd = 2, 4, 2, 8, 16
    S = 3 * KEY_BLOCK  # blocks 0-1 wholly visible to every query, block 2 at the diagonal
    q = torch.randn(B, h, T, hd, generator=gen)
    k, v = (torch.randn(B, n_kv, S, hd, generator=gen) for _ in range(2))
    allowed = _causal(torch.tensor([S - 3, S]), T, S)
    additive = additive_mask(allowed, q.dtype)
    assert torch.equal(grouped_attention(q, k, v, allowed), grouped_attention(q, k, v, additive))
    biased = additive.clone()
    biased[..., KEY_BLOCK + 7] = 2.0  # one key of a wholly visible block weighs more
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=biased, enable_gqa=True)
    got = grouped_attention(q, k, v, biased)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, grouped_attention(q, k, v, additive), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("additive", [False, True])
def test_keys_in_one_block_give_the_loops_numbers_and_zeros_where_no_key_is_seen(dtype, additive):
    """Keys that fit in one block take a shorter path (no running state, the guards as clamps):
    bit for bit the loop over a longer span whose extra keys are hidden, with random masks
    that leave some queries no key at all (those get zeros, as from SDPA)."""
    gen = torch.Generator().manual_seed(6)
    B, h, n_kv, T, hd, S = 2, 4, 2, 3, 16, 40
    q = torch.randn(B, h, T, hd, generator=gen).to(dtype)
    k, v = (torch.randn(B, n_kv, KEY_BLOCK + 9, hd, generator=gen).to(dtype) for _ in range(2))
    allowed = torch.rand(B, 1, T, KEY_BLOCK + 9, generator=gen) < 0.5
    allowed[..., S:] = False  # the long span's extra keys: hidden from every query
    allowed[0, 0, 1] = False  # row 0's second query sees no key
    mask = additive_mask(allowed, dtype) if additive else allowed
    one_block = grouped_attention(q, k[:, :, :S], v[:, :, :S], mask[..., :S])
    assert torch.equal(one_block, grouped_attention(q, k, v, mask))
    assert not one_block[0, :, 1].any() and one_block[1].abs().sum() > 0
