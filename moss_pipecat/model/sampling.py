"""Turning audio logits into codes: repetition penalty, temperature, top-k, top-p, draw.

Everything is a pure function of tensors with one row per session, so a batch of sessions
with different settings is filtered in one pass without host syncs. Randomness comes in as
pre-drawn exponential noise (``argmax(p / q)`` with ``q ~ Exp(1)`` is an exact draw from ``p``):
each session draws its noise from its own ``torch.Generator``, so its samples do not depend on
which other sessions share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moss_pipecat.errors import InvalidInputError

NO_HISTORY = -1  # history entry that penalises nothing (empty part of the window)


@dataclass(frozen=True)
class SamplingParams:
    """Per-session decoding settings (upstream defaults)."""

    temperature: float = 0.8
    top_k: int = 30
    top_p: float = 0.6
    repetition_penalty: float = 1.1
    repetition_window: int = 50
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise InvalidInputError(
                f"temperature must be > 0 (or greedy=True), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidInputError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise InvalidInputError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        if self.repetition_window < 0:
            raise InvalidInputError("repetition_window must be >= 0")

    @classmethod
    def greedy_decoding(cls, repetition_penalty: float = 1.1, window: int = 50) -> SamplingParams:
        """Argmax after the repetition penalty (what the goldens use)."""
        return cls(greedy=True, repetition_penalty=repetition_penalty, repetition_window=window)


@dataclass
class BatchSampling:
    """``SamplingParams`` of a batch as per-row tensors: temperature/top_p/penalty [B] float,
    top_k [B] int64 (0 = off), greedy [B] bool; allow_eos [B] bool, False where the next frame
    must not end the turn (its codebook-0 EOS logit is masked; None: allowed in every row)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    greedy: torch.Tensor
    allow_eos: torch.Tensor | None = None

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        device: torch.device | str = "cpu",
        allow_eos: Sequence[bool] | None = None,
    ) -> BatchSampling:
        def t(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            temperature=t([1.0 if p.greedy else p.temperature for p in params], torch.float32),
            top_k=t([p.top_k for p in params], torch.int64),
            top_p=t([p.top_p for p in params], torch.float32),
            penalty=t([p.repetition_penalty for p in params], torch.float32),
            greedy=t([p.greedy for p in params], torch.bool),
            allow_eos=None if allow_eos is None else t(list(allow_eos), torch.bool),
        )

    @property
    def all_greedy(self) -> bool:
        """Host-side check (syncs); lets callers skip drawing noise."""
        return bool(self.greedy.all())


def seen_mask(history: torch.Tensor, vocab: int) -> torch.Tensor:
    """Which ids occur in each history row.

    Args:
        history: [..., W] int64 ids; ``NO_HISTORY`` entries are ignored.
    Returns:
        [..., vocab] bool.
    """
    ids = torch.where(history < 0, vocab, history)  # sentinel column V catches the empty entries
    seen = torch.zeros((*history.shape[:-1], vocab + 1), dtype=torch.bool, device=history.device)
    seen.scatter_(-1, ids, True)
    return seen[..., :vocab]


def mask_token(logits: torch.Tensor, token: int, allow: torch.Tensor | None) -> torch.Tensor:
    """Sets column ``token`` of ``logits`` [B, V] to -inf in the rows where ``allow`` [B] bool
    is False (a pure per-row operation: no host sync, static shapes). None allows every row."""
    if allow is None:
        return logits
    column = torch.arange(logits.shape[-1], device=logits.device) == token  # [V]
    return logits.masked_fill(~allow[:, None] & column, float("-inf"))


def penalize(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor | float
) -> torch.Tensor:
    """Repetition penalty on the ``seen`` ids ([B, V] bool): logit * penalty where logit < 0,
    logit / penalty elsewhere."""
    p = torch.as_tensor(penalty, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    penalised = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalised, logits)


def apply_repetition_penalty(
    logits: torch.Tensor, history: torch.Tensor, penalty: torch.Tensor | float
) -> torch.Tensor:
    """Penalises every distinct id present in ``history`` once (repeats do not compound).

    Args:
        logits: [B, V] float.
        history: [B, W] int64 ids of earlier frames (the window already cut to its length);
            ``NO_HISTORY`` entries are ignored.
        penalty: [B] or scalar; > 1 makes repeats less likely.
    Returns:
        [B, V]: logit * penalty where logit < 0, logit / penalty elsewhere, for seen ids.
    """
    return penalize(logits, seen_mask(history, logits.shape[-1]), penalty)


def filter_logits(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Temperature, then top-k (ties at the cut kept), then top-p; removed entries become -inf.

    Args:
        logits: [B, V] (already penalised).
        temperature, top_p: [B] float; top_k: [B] int64, 0 disables top-k.
    """
    V = logits.shape[-1]
    scores = logits / temperature[:, None]
    # top-k: keep every score >= the k-th largest.
    k = torch.where(top_k > 0, top_k, V).clamp(1, V)  # [B]
    desc = scores.sort(dim=-1, descending=True).values  # [B, V]
    kth = desc.gather(1, (k - 1)[:, None])  # [B, 1]
    scores = scores.masked_fill(scores < kth, float("-inf"))
    # top-p: drop the low tail whose cumulative probability is <= 1 - p (ascending order);
    # the most likely token always survives.
    asc, order = scores.sort(dim=-1, descending=False)  # [B, V]
    cum = asc.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - top_p)[:, None]
    drop_sorted[:, -1] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def exponential_noise(
    generators: Sequence[torch.Generator | None],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-row Exp(1) noise [B, *shape], row b drawn from ``generators[b]``."""
    noise = torch.empty((len(generators), *shape), device=device)
    for row, gen in zip(noise, generators, strict=True):
        row.exponential_(1.0, generator=gen)
    return noise


def choose_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    sampling: BatchSampling,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One code per row: penalty, then argmax (greedy rows) or a draw from the filtered softmax.

    Args:
        logits: [B, V]; seen: [B, V] bool ids to penalise (``seen_mask`` of the history
            window), or None for no penalty; noise: [B, V] Exp(1) noise, or None when every
            row is greedy.
    Returns:
        [B] int64.
    """
    if seen is not None:
        logits = penalize(logits, seen, sampling.penalty)
    greedy = logits.argmax(dim=-1)  # first maximum on ties: lowest id
    if noise is None:
        return greedy
    probs = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p).softmax(-1)
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(sampling.greedy, greedy, drawn)


def sample_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.multinomial`` draw of one id per row from [B, V] probabilities."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
