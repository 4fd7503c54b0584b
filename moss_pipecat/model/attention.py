"""Attention of the decoder layers: grouped (GQA) attention over caller-owned keys and values,
and its exact blocked form for a CPU. Plain functions, no state: the plain path calls them, and
they are the formula of the fused op ``moss::attention`` (``model.kernels``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Keys per block of the CPU attention (``key_block_attention``): a multiple of any vector
# width, small enough that a block's scores stay in cache.
KEY_BLOCK = 256


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """GQA without repeating keys/values: the g query heads that share a kv head are folded
    into the query-time axis. (SDPA's ``enable_gqa`` with a mask falls back, on CUDA, to the
    math kernel, which copies every key and value g times: at many sessions that copy would
    be the step's largest memory traffic.) Same result, query row by query row.

    Args:
        q: [B, h, T, hd]; k, v: [B, n_kv, S, hd] (query head i uses kv head i // (h / n_kv));
        mask: [B or 1, 1, T, S], bool (True = attend) or additive in q's dtype.
    Returns:
        [B, h, T, hd].
    """
    B, h, T, hd = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    g = h // n_kv
    qg = q.reshape(B, n_kv, g * T, hd)  # head i = kv * g + j -> rows j*T .. j*T+T-1
    if q.device.type == "cpu":
        return key_block_attention(qg, k, v, mask, g).reshape(B, h, T, hd)
    if g == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    mg = mask[:, :, None].expand(mask.shape[0], 1, g, T, S).reshape(mask.shape[0], 1, g * T, S)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg)  # [B, n_kv, g*T, hd]
    return out.reshape(B, h, T, hd)


def key_span(need: int, slot_len: int) -> int:
    """Keys an eager CPU call attends over when its longest row reaches ``need`` positions:
    whole ``KEY_BLOCK`` blocks, at most the slot's ``slot_len``. Every such span gives each
    row the numbers the whole slot gives (``key_block_attention``), at a cost that follows
    the conversation's length rather than the slot's."""
    return min(-(-need // KEY_BLOCK) * KEY_BLOCK, slot_len)


def key_block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, g: int
) -> torch.Tensor:
    """Attention written out for a CPU, one block of ``KEY_BLOCK`` keys at a time (online
    softmax: a running max, sum and weighted sum, each block folded in by key order).

    Exact whatever the call: every block is computed alike (the same widths, whole row
    blocks of queries), and a block whose keys a query may not see leaves that query's
    running state exactly as it was (its max is -inf: the rescale is exp(0) = 1, its
    weights and their sum 0). So a row's numbers are the same over any span of whole blocks
    that covers its keys (``key_span``), whichever rows share the call. (The CPU's fused SDPA
    kernel gives a batch row other last bits depending on the thread that ran it.) A query
    with no key to attend gets zeros, as from SDPA.

    Where the time goes (a long prefill is all attention): each block's scores are written
    into one buffer kept for the call (a fresh one per block costs the allocator's page
    faults, as much as the matmul), and the mask is applied only to the blocks it hides a
    key of (in a causal prefill, those at the diagonal): elsewhere it would add zeros,
    which change no number.

    Args:
        q: [B, n, g*T, hd] (g query heads folded into the time axis, head-major);
        k, v: [B, n, S, hd]; mask: [B or 1, 1, T, S], bool (True = attend) or additive.
    Returns:
        [B, n, g*T, hd].
    """
    B, n, M, hd = q.shape
    S = k.shape[2]
    if S <= KEY_BLOCK:
        return _one_block_attention(q, k, v, mask, g)
    # Traced (the compiled decode step): no host reads, no out= buffers; the same numbers.
    traced = torch.compiler.is_compiling()
    hides = [True] * -(-S // KEY_BLOCK) if traced else _blocks_hiding_keys(mask, S)
    top = q.new_full((B, n, M, 1), float("-inf"))  # running max
    total = q.new_zeros((B, n, M, 1))  # running sum of weights
    acc = q.new_zeros((B, n, M, hd))  # running weighted sum of values
    block = None if traced else q.new_empty((B, n, M, KEY_BLOCK))  # each block's scores
    summed = None if traced else q.new_empty((B, n, M, hd))  # each block's weighted values
    q = q * hd**-0.5  # the scale once, on the queries
    for j, hidden in zip(range(0, S, KEY_BLOCK), hides, strict=True):
        kj, vj = k[:, :, j : j + KEY_BLOCK], v[:, :, j : j + KEY_BLOCK]  # [B, n, w, hd]
        w = kj.shape[2]
        whole = block is not None and w == KEY_BLOCK
        scores = torch.matmul(q, kj.transpose(-1, -2), out=block if whole else None)
        if hidden:  # [B, n, M, w]
            _mask_scores_(scores, mask[..., j : j + KEY_BLOCK], g)
        new_top = torch.maximum(top, scores.amax(dim=-1, keepdim=True))
        shift = new_top.masked_fill(new_top == float("-inf"), 0.0)  # no key yet: no NaN
        weights = scores.sub_(shift).exp_()  # [B, n, M, w], in place
        rescale = (top - shift).exp_()
        total = total.mul_(rescale).add_(weights.sum(dim=-1, keepdim=True))
        acc = acc.mul_(rescale).add_(torch.matmul(weights, vj, out=summed))
        top = new_top
    return acc / total.masked_fill(total == 0, 1.0)


def _one_block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, g: int
) -> torch.Tensor:
    """``key_block_attention`` where all keys fit in one block (every local-transformer call,
    a short conversation's step): the loop's first block, without the running state it
    would fold in (a max of -inf, sums of zeros: the rescale is 0, so it adds exact zeros).
    The same numbers in half the kernels and no host read (the mask is applied whatever it
    hides: where it hides nothing it adds zeros or keeps every score)."""
    hd = q.shape[-1]
    scores = torch.matmul(q * hd**-0.5, k.transpose(-1, -2))  # [B, n, M, S]
    _mask_scores_(scores, mask, g)
    # The guards in one op each: a query with no key to attend has a max of -inf (shifted by
    # the lowest finite value instead, its weights are still exp(-inf) = 0) and a sum of 0
    # (any other sum is >= 1: its largest score weighs exp(0) = 1); others are left as they are.
    shift = scores.amax(dim=-1, keepdim=True).clamp_min_(torch.finfo(scores.dtype).min)
    weights = scores.sub_(shift).exp_()
    total = weights.sum(dim=-1, keepdim=True).clamp_min_(1.0)
    return torch.matmul(weights, v) / total


def _mask_scores_(scores: torch.Tensor, part: torch.Tensor, g: int) -> None:
    """Applies ``part`` [B or 1, 1, T, w] (bool, True = attend, or additive) to the scores
    [B, n, g*T, w] of every query head, in place: the g heads of a kv head share it."""
    B, n, M, w = scores.shape
    folded = scores.view(B, n, g, M // g, w)
    if part.dtype == torch.bool:
        folded.masked_fill_(~part[:, :, None], float("-inf"))
    else:
        folded.add_(part[:, :, None])


def _blocks_hiding_keys(mask: torch.Tensor, S: int) -> list[bool]:
    """For each block of ``KEY_BLOCK`` keys, whether ``mask`` [B or 1, 1, T, S] (bool, True
    = attend, or additive) changes any score in it (a hidden key, or a nonzero bias)."""
    changes = ~mask if mask.dtype == torch.bool else mask != 0
    blocks = -(-S // KEY_BLOCK)
    per_key = changes.new_zeros(blocks * KEY_BLOCK)
    per_key[:S] = changes.flatten(0, 2).any(dim=0)  # [S]
    return per_key.view(blocks, KEY_BLOCK).any(dim=-1).tolist()
