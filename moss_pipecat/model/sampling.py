"""Turning audio logits into codes: repetition penalty, temperature, top-k, top-p, draw.

Everything is a pure function of tensors with one row per session, so a batch of sessions
with different settings is filtered in one pass without host syncs. A draw is
``argmax(p / q)`` with exponential noise ``q ~ Exp(1)`` (an exact draw from ``p``). The noise is
counter-based (in the spirit of Philox / JAX's threefry): a pure function of the row's
``NoiseKeys`` (session seed, frame counter), the codebook and the token id, made for the whole
batch by a few tensor ops inside the step (``keyed_noise``). No generator state, no launch per
session, and a session's draws do not depend on which other sessions share its batch. Explicit
noise tensors (e.g. ``exponential_noise`` from per-session generators) are still accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moss_pipecat.speech.sampling import SamplingParams

NO_HISTORY = -1  # history entry that penalises nothing (empty part of the window)
_M32 = 0xFFFFFFFF
_U64 = 1 << 64


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


def penalty_factors(seen: torch.Tensor, penalty: torch.Tensor | float) -> torch.Tensor:
    """The repetition penalty of every id: ``penalty`` where ``seen`` ([B, ..., V] bool), 1
    elsewhere (float32, the shape of ``seen``). Made once per frame for all its codebooks."""
    p = torch.as_tensor(penalty, dtype=torch.float32, device=seen.device)
    p = p.reshape(-1, *([1] * (seen.dim() - 1)))  # [B or 1, 1, ..., 1]
    return torch.where(seen, p, 1.0)


def penalize_with(logits: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """logit * f where logit < 0, logit / f elsewhere, ``factors`` from ``penalty_factors``
    (a factor of 1 leaves a logit exactly as it is: one pass, no second select)."""
    return torch.where(logits < 0, logits * factors, logits / factors)


def penalize(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor | float
) -> torch.Tensor:
    """Repetition penalty on the ``seen`` ids ([B, V] bool): logit * penalty where logit < 0,
    logit / penalty elsewhere."""
    return penalize_with(logits, penalty_factors(seen, penalty).to(logits.dtype))


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


@dataclass
class FilterPlan:
    """What top-k and top-p need of each row, the same for every codebook of a frame (made
    once per frame by ``filter_plan``): ``kth`` [B, 1], where the k-th largest score sits in
    descending order; ``tail`` [B, V], the top-p bound ``1 - p`` per ascending position, -inf
    at the last one (the most likely token always survives)."""

    kth: torch.Tensor
    tail: torch.Tensor


def filter_plan(top_k: torch.Tensor, top_p: torch.Tensor, vocab: int) -> FilterPlan:
    """``FilterPlan`` of per-row settings: top_k [B] int64 (0 disables it), top_p [B]."""
    k = torch.where(top_k > 0, top_k, vocab).clamp(1, vocab)  # [B]
    last = torch.arange(vocab, device=top_p.device) == vocab - 1  # [V]
    tail = (1 - top_p)[:, None].masked_fill(last, float("-inf"))  # [B, V]
    return FilterPlan(kth=(k - 1)[:, None], tail=tail)


def filter_with(logits: torch.Tensor, temperature: torch.Tensor, plan: FilterPlan) -> torch.Tensor:
    """``filter_logits`` with its per-row constants made beforehand (``filter_plan``).

    Top-p sorts the top-k survivors (ascending) and the kept scores are scattered back to
    their ids from that order. (One sort could serve both filters, but which of several
    tied scores a top-p cut drops follows the order an unstable sort leaves them in, and
    that depends on the whole row: the sorted row must stay the one it was.)
    """
    scores = logits / temperature[:, None]  # [B, V]
    # top-k: keep every score >= the k-th largest (ties at the cut kept).
    kth = scores.sort(dim=-1, descending=True).values.gather(1, plan.kth)  # [B, 1]
    scores = scores.masked_fill(scores < kth, float("-inf"))
    # top-p: drop the low tail whose cumulative probability is <= 1 - p (ascending order).
    asc, order = scores.sort(dim=-1, descending=False)  # [B, V]
    cum = asc.softmax(dim=-1).cumsum(dim=-1)
    kept = asc.masked_fill(cum <= plan.tail, float("-inf"))  # [B, V], ascending order
    return torch.empty_like(scores).scatter_(1, order, kept)  # back to id order


def filter_logits(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Temperature, then top-k (ties at the cut kept), then top-p; removed entries become -inf.

    Args:
        logits: [B, V] (already penalised).
        temperature, top_p: [B] float; top_k: [B] int64, 0 disables top-k.
    """
    return filter_with(logits, temperature, filter_plan(top_k, top_p, logits.shape[-1]))


@dataclass
class NoiseKeys:
    """Keys of the counter-based sampling noise, one per row: ``seed`` [B] int64 (a session's
    seed, as a signed 64-bit integer) and ``counter`` [B] int64 (which frame of the session
    this is). The noise of a row is a pure function of its key (see ``keyed_noise``)."""

    seed: torch.Tensor
    counter: torch.Tensor

    @classmethod
    def from_ints(
        cls, seeds: Sequence[int], counters: Sequence[int], device: torch.device | str = "cpu"
    ) -> NoiseKeys:
        """Keys from host ints: one tensor (one copy to the device) for the whole batch. Any
        int is a seed (taken modulo 2**64); counters must be >= 0."""
        pairs = [[_as_int64(s) for s in seeds], [int(c) for c in counters]]
        keys = torch.tensor(pairs, dtype=torch.int64, device=device)  # [2, B]
        return cls(keys[0], keys[1])


def _as_int64(seed: int) -> int:
    """Any int as a signed 64-bit integer with the same bits modulo 2**64."""
    seed = int(seed) % _U64
    return seed - _U64 if seed >= 1 << 63 else seed


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32) and a constant ``c`` < 2**32, never
    overflowing int64 (torch has no uint64 arithmetic on every backend): for ``c >= 2**31``,
    ``x * 2**31 mod 2**32`` is the low bit of ``x`` moved to bit 31."""
    if c < 1 << 31:
        return (x * c) & _M32
    return (x * (c - (1 << 31)) + ((x & 1) << 31)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' "lowbias32") on int64 holding [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_noise(keys: NoiseKeys, rvq: int, vocab: int) -> torch.Tensor:
    """Exp(1) noise [B, rvq, vocab] as a pure function of (seed, counter, codebook, token).

    Counter-based: two 32-bit lanes absorb the row's seed and counter (four 32-bit words, a
    hash round each), then every (codebook, token) index is hashed with both lanes (two more
    rounds), giving 23 uniform bits u in (0, 1) (never 0 or 1) and the noise ``-log(u)``.
    Static shapes, int64 and float32 tensor ops only, no host sync: it runs inside the
    graphed step, for the whole batch at once.
    """
    seed, counter = keys.seed, keys.counter
    words = (seed & _M32, (seed >> 32) & _M32, counter & _M32, (counter >> 32) & _M32)
    lanes = torch.arange(2, dtype=torch.int64, device=seed.device)
    h = (lanes * 0x632BE5AB + 0x9E3779B9) & _M32  # [2]: two independent starting states
    for w in words:
        h = _mix32(h ^ w[:, None])  # [B, 2]
    index = torch.arange(rvq * vocab, dtype=torch.int64, device=seed.device)  # codebook*V + id
    x = _mix32(_mix32(index ^ h[:, :1]) ^ h[:, 1:])  # [B, rvq * V]
    u = ((x >> 9).float() + 0.5) * 2.0**-23  # [2**-24, 1 - 2**-24]: exact in float32
    return u.log().neg().view(-1, rvq, vocab)  # [B, rvq, V]


def exponential_noise(
    generators: Sequence[torch.Generator | None],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-row Exp(1) noise [B, *shape], row b drawn from ``generators[b]`` (one launch per
    row, outside any graph: the engine uses ``keyed_noise`` instead)."""
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
    factors = None if seen is None else penalty_factors(seen, sampling.penalty)
    plan = None if noise is None else filter_plan(sampling.top_k, sampling.top_p, logits.shape[-1])
    return choose_with(logits, factors, sampling, plan, noise)


def choose_with(
    logits: torch.Tensor,
    factors: torch.Tensor | None,
    sampling: BatchSampling,
    plan: FilterPlan | None,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """``choose_tokens`` with the per-frame parts made beforehand: ``factors`` [B, V] from
    ``penalty_factors`` (None: no penalty) and ``plan`` from ``filter_plan`` (needed when
    ``noise`` is given)."""
    return choose_rows(logits, factors, sampling.temperature, sampling.greedy, plan, noise)


def choose_rows(
    logits: torch.Tensor,
    factors: torch.Tensor | None,
    temperature: torch.Tensor,
    greedy: torch.Tensor,
    plan: FilterPlan | None,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """``choose_with`` given the only settings it reads: temperature [B], greedy [B] bool."""
    if factors is not None:
        logits = penalize_with(logits, factors)
    greedy_ids = logits.argmax(dim=-1)  # first maximum on ties: lowest id
    if noise is None:
        return greedy_ids
    probs = filter_with(logits, temperature, plan).softmax(-1)
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(greedy, greedy_ids, drawn)


def sample_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.multinomial`` draw of one id per row from [B, V] probabilities."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
