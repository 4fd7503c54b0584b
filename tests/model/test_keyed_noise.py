"""Counter-based sampling noise: a pure function of (seed, counter, codebook, token id).

The engine's sampled draws use it instead of per-session generators, so the noise of a whole
batch is a few tensor ops inside the (graphed) step and a session's draws do not depend on who
shares its batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import BatchSampling, SamplingParams, generate_turn
from moss_pipecat.model.sampling import NoiseKeys, choose_tokens, keyed_noise

RVQ, V = 16, 1027


def noise(seeds, counters, rvq=RVQ, vocab=V):
    return keyed_noise(NoiseKeys.from_ints(seeds, counters), rvq, vocab)


def test_keyed_noise_is_a_pure_function_of_the_key():
    batch = noise([5, 9, 5, -1, 2**64 - 1, 2**70 + 5], [0, 0, 1, 3, 3, 0])
    assert torch.equal(batch[0], noise([5], [0])[0])  # alone or in a batch
    assert torch.equal(batch, noise([5, 9, 5, -1, 2**64 - 1, 2**70 + 5], [0, 0, 1, 3, 3, 0]))
    assert torch.equal(batch[3], batch[4])  # seeds are taken modulo 2**64
    assert torch.equal(batch[5], batch[0])
    assert not torch.equal(batch[0], batch[1])  # another seed
    assert not torch.equal(batch[0], batch[2])  # another frame
    assert not torch.equal(batch[0, 0], batch[0, 1])  # another codebook
    big = noise([5], [2**40])  # counters past 32 bits are keyed too
    assert not torch.equal(big, noise([5], [0])) and not torch.equal(big, noise([5], [2**8]))
    # The 32-bit halves of seed and counter are not interchangeable.
    assert not torch.equal(noise([1], [0]), noise([2**32], [0]))
    assert not torch.equal(noise([1], [0]), noise([0], [1]))


def test_keyed_noise_is_exponential():
    q = noise(list(range(64)), [3] * 64)  # 64 x 16 x 1027 = 1.05M draws
    assert q.dtype == torch.float32
    assert bool(torch.isfinite(q).all()) and float(q.min()) > 0  # u never 0 and never 1
    assert abs(float(q.mean()) - 1) < 0.01 and abs(float(q.var()) - 1) < 0.02
    assert abs(float((q > 1).float().mean()) - math.exp(-1)) < 0.003
    u = torch.exp(-q).flatten()
    bins = torch.histc(u, 20, 0, 1) / (u.numel() / 20)
    assert float((bins - 1).abs().max()) < 0.02  # uniform u
    flat = u.view(64, -1)
    for a, b in ((flat[:, :-1], flat[:, 1:]), (flat[:-1], flat[1:])):  # neighbours: tokens, seeds
        corr = torch.corrcoef(torch.stack((a.flatten(), b.flatten())))[0, 1]
        assert abs(float(corr)) < 0.01
    later = torch.exp(-noise(list(range(64)), [4] * 64)).flatten()  # the next frame
    assert abs(float(torch.corrcoef(torch.stack((u, later)))[0, 1])) < 0.01


def test_keyed_draws_follow_the_distribution():
    """argmax(p / q) over many frame counters picks each token with probability p."""
    p = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    n = 40_000
    logits = p.log().expand(n, -1)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    sampling = BatchSampling.from_params([params] * n)
    q = keyed_noise(NoiseKeys.from_ints([11] * n, range(n)), 1, 5)[:, 0]
    freq = torch.bincount(choose_tokens(logits, None, sampling, q), minlength=5) / n
    assert float((freq - p).abs().max()) < 0.01, freq


def test_sampled_frames_alone_equal_those_in_a_batch_of_8(tiny_model, long_rows):
    """Eager local transformer: a row's draws depend on its key only."""
    cache = tiny_model.new_cache(8, 64)
    lengths = [30, 12, 25, 30, 7, 18, 30, 22]
    batch = torch.stack([long_rows[:30]] * 8)
    h = tiny_model.prefill(batch, cache, n_new=torch.tensor(lengths))  # 8 different hidden states
    params = [SamplingParams(), SamplingParams(top_k=5), SamplingParams.greedy_decoding()] * 3
    sampling = BatchSampling.from_params(params[:8])
    keys = NoiseKeys.from_ints([100 + i for i in range(8)], [4] * 8)
    together = tiny_model.generate_frame(h, sampling, None, keys)
    for b in range(8):
        alone = tiny_model.generate_frame(
            h[b : b + 1],
            BatchSampling.from_params(params[b : b + 1]),
            None,
            NoiseKeys.from_ints([100 + b], [4]),
        )
        assert torch.equal(alone[0], together[b])


def test_generate_turn_with_a_seed(tiny_model, realtime_golden):
    g = realtime_golden

    def run(seed: int, counter: int = 0):
        cache = tiny_model.new_cache(1, 256)
        prompt = g["turn1.prompt"]
        return generate_turn(
            tiny_model, cache, 0, prompt, [], 10, SamplingParams(), seed=seed, counter=counter,
            min_frames=10,
        ).frames  # fmt: skip

    first = run(5)
    assert torch.equal(first, run(5))
    assert not torch.equal(first, run(6))
    assert not torch.equal(first, run(5, counter=1))
    with pytest.raises(InvalidInputError, match="not both"):
        generate_turn(
            tiny_model, tiny_model.new_cache(1, 64), 0, g["turn1.prompt"], [], 2, SamplingParams(),
            torch.Generator(), seed=1,
        )  # fmt: skip
