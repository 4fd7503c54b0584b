"""Sampling as fused ops: one op per codebook (EOS mask, repetition penalty, temperature,
top-k, top-p, draw or argmax) and one for the frame's keyed noise.

Their registered implementation is ``moss_pipecat.model.sampling``'s formula, so the fused
sampler picks the codes the plain one picks, bit for bit, on every device; see
``moss_pipecat.model.kernels`` for how a device kernel replaces it and how the ops are counted.
"""

from __future__ import annotations

import torch

from moss_pipecat.model.sampling import (
    FilterPlan,
    NoiseKeys,
    choose_rows,
    keyed_noise,
    mask_token,
)

NO_EOS = -1  # ``eos`` of a codebook whose EOS is never masked


def choose_codebook_formula(
    logits: torch.Tensor,
    factors: torch.Tensor | None,
    temperature: torch.Tensor,
    greedy: torch.Tensor,
    kth: torch.Tensor | None,
    tail: torch.Tensor | None,
    noise: torch.Tensor | None,
    eos: int,
    allow_eos: torch.Tensor | None,
) -> torch.Tensor:
    """One codebook's codes [B] int64 from its logits [B, V] (any float dtype, taken to
    float32): column ``eos`` masked where ``allow_eos`` is False (``NO_EOS``: none), then
    ``sampling.choose_rows`` (``kth``/``tail`` of its ``FilterPlan``, given with ``noise``)."""
    logits = logits.float()
    if eos != NO_EOS:
        logits = mask_token(logits, eos, allow_eos)
    plan = None if kth is None or tail is None else FilterPlan(kth, tail)
    return choose_rows(logits, factors, temperature, greedy, plan, noise)


@torch.library.custom_op("moss::choose_codebook", mutates_args=())
def choose_codebook(
    logits: torch.Tensor,
    factors: torch.Tensor | None,
    temperature: torch.Tensor,
    greedy: torch.Tensor,
    kth: torch.Tensor | None,
    tail: torch.Tensor | None,
    noise: torch.Tensor | None,
    eos: int,
    allow_eos: torch.Tensor | None,
) -> torch.Tensor:
    """``choose_codebook_formula`` as one op."""
    return choose_codebook_formula(
        logits, factors, temperature, greedy, kth, tail, noise, eos, allow_eos
    )


@choose_codebook.register_fake
def _(logits, factors, temperature, greedy, kth, tail, noise, eos, allow_eos) -> torch.Tensor:
    return logits.new_empty(logits.shape[:1], dtype=torch.int64)


def keyed_noise_formula(seed: torch.Tensor, counter: torch.Tensor, rvq: int, vocab: int):
    """``sampling.keyed_noise`` of the keys (seed [B], counter [B]) -> [B, rvq, vocab]."""
    return keyed_noise(NoiseKeys(seed, counter), rvq, vocab)


@torch.library.custom_op("moss::keyed_noise", mutates_args=())
def keyed_noise_op(seed: torch.Tensor, counter: torch.Tensor, rvq: int, vocab: int) -> torch.Tensor:
    """``keyed_noise_formula`` as one op."""
    return keyed_noise_formula(seed, counter, rvq, vocab)


@keyed_noise_op.register_fake
def _(seed: torch.Tensor, counter: torch.Tensor, rvq: int, vocab: int) -> torch.Tensor:
    return seed.new_empty((seed.shape[0], rvq, vocab), dtype=torch.float32)


FORMULAS = {
    "moss::choose_codebook": choose_codebook_formula,
    "moss::keyed_noise": keyed_noise_formula,
}
