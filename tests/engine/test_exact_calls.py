"""The runner's eager calls give a session the same numbers bit for bit however its rows were
split into calls and whichever sessions share them: keys over the whole slot, row counts in
whole row blocks (``moss_pipecat.model.row_blocks``). A prompt-prefix-cache hit (the turn's rows
prefilled alone) then says exactly what a miss (system and turn rows in one call) says, and a
session's audio does not depend on the traffic beside it."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.kv_pools import KVPools
from moss_pipecat.engine.runner import ModelRunner, RowSampling
from moss_pipecat.model import SamplingParams
from moss_pipecat.model.layers import KEY_BLOCK

SEEDED = SamplingParams()  # sampled: the keyed noise and every setting take part
GREEDY = SamplingParams.greedy_decoding()
# Partners' history lengths: other key lengths than the session's; batches of 1..21 rows,
# across row blocks and across the threads a batch is split over.
PARTNER_LENGTHS = (3, 57, 12, 100, 5, 77, 64, 9, 45, 90, 11, 20, 33, 41, 8, 70, 26, 15, 52, 60)


def _runner(model, max_context: int = 256) -> ModelRunner:
    config = EngineConfig(
        max_sessions=24, max_context=max_context, context_budget=max_context - 56, turn_reserve=20
    )
    return ModelRunner(model, None, config, KVPools(model, config), graphed=False)


def _rows(model, n: int, seed: int) -> torch.Tensor:
    """[n, 17] valid ids, seeded."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, model.cfg.audio_vocab_size, (n, model.cfg.channels), generator=gen)
    rows[:, 0] = torch.randint(0, model.cfg.language.vocab_size, (n,), generator=gen)
    return rows


def _sampling(runner: ModelRunner, slot: int, counter: int) -> RowSampling:
    params = SEEDED if slot == 0 else GREEDY
    return RowSampling(params, 7 + slot, counter, True, runner.pools.hist_row(0, slot))


def _kv(runner: ModelRunner, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    cache = runner.pools[0].cache
    n = int(cache.lengths[slot])
    return cache.k[:, slot, :, :n].clone(), cache.v[:, slot, :, :n].clone()


def _prefill(runner: ModelRunner, batch: dict[int, torch.Tensor]) -> torch.Tensor:
    """One prefill call: ``batch`` maps slot -> rows; returns the last hidden per slot."""
    cache = runner.pools[0].cache
    slots = list(batch)
    lengths = [int(cache.lengths[s]) for s in slots]
    return runner.prefill(0, list(batch.values()), slots, lengths)


@pytest.mark.parametrize("split", [(13, 15), (1, 27), (5, 7, 16), (27, 1)])
def test_a_prompt_split_into_calls_equals_it_in_one_call(tiny_model, split):
    rows = _rows(tiny_model, sum(split), seed=1)
    whole = _runner(tiny_model)
    last = _prefill(whole, {0: rows})
    frame = whole.first_frames(last, [_sampling(whole, 0, 0)])

    # The same prompt in pieces, each piece batched with partners of other lengths.
    parts = _runner(tiny_model)
    start = 0
    for i, n in enumerate(split):
        sizes = {3: 9 + 7 * i, 4: 40 - 11 * i}  # other lengths than the session's rows
        partners = {p: _rows(tiny_model, n, seed=100 * i + p) for p, n in sizes.items()}
        hidden = _prefill(parts, {**partners, 0: rows[start : start + n]})
        start += n
    frames = parts.first_frames(hidden, [_sampling(parts, s, 0) for s in (3, 4, 0)])

    assert torch.equal(hidden[2], last[0])  # the last row's hidden state, bit for bit
    assert torch.equal(frames[2], frame[0])
    for a, b in zip(_kv(parts, 0), _kv(whole, 0), strict=True):
        assert a.shape[-2] == rows.shape[0] and torch.equal(a, b)  # every layer's keys, values


def test_a_session_decoding_alone_equals_it_decoding_beside_others(tiny_model):
    history, steps = _rows(tiny_model, 30, seed=2), _rows(tiny_model, 16, seed=3)
    alone, busy = _runner(tiny_model), _runner(tiny_model)
    _prefill(alone, {0: history})
    _prefill(busy, {0: history})
    for p, n in enumerate(PARTNER_LENGTHS, start=1):
        _prefill(busy, {p: _rows(tiny_model, n, seed=p)})

    for i in range(steps.shape[0]):
        frame = alone.decode(0, steps[i : i + 1], [0], [30 + i], [_sampling(alone, 0, i)])
        # 1..21 sessions per step, the session at another row each time.
        partners = list(range(1, 1 + (i * 7) % 21))
        at = (i * 5) % (len(partners) + 1)
        slots = [*partners[:at], 0, *partners[at:]]
        lengths = [int(busy.pools[0].cache.lengths[s]) for s in slots]
        step_rows = torch.stack(
            [steps[i] if s == 0 else _rows(tiny_model, 1, 50 + s)[0] for s in slots]
        )
        frames = busy.decode(0, step_rows, slots, lengths, [_sampling(busy, s, i) for s in slots])
        assert torch.equal(frames[at], frame[0]), f"step {i}: frames differ"

    for a, b in zip(_kv(busy, 0), _kv(alone, 0), strict=True):
        assert a.shape[-2] == 30 + steps.shape[0] and torch.equal(a, b)
    assert torch.equal(busy.hist[busy.pools.hist_row(0, 0)], alone.hist[alone.pools.hist_row(0, 0)])


def test_calls_over_other_spans_of_key_blocks_agree(tiny_model):
    """A CPU call attends over the key blocks its longest row needs (``key_span``), so calls
    of one session see other key lengths: a history spanning several blocks prefilled in one
    call or in pieces beside longer partners, then decoded alone or beside a partner blocks
    ahead of it, gives the same numbers bit for bit."""
    context = 3 * KEY_BLOCK + 64
    n = 2 * KEY_BLOCK + 37  # the session's history: three blocks
    rows, steps = _rows(tiny_model, n, seed=6), _rows(tiny_model, 6, seed=7)
    whole, parts = _runner(tiny_model, context), _runner(tiny_model, context)
    last = _prefill(whole, {0: rows})
    for start, stop in ((0, 40), (40, KEY_BLOCK + 9), (KEY_BLOCK + 9, n)):
        partner = _rows(tiny_model, 3 * KEY_BLOCK - stop // 2, seed=stop)  # other spans
        hidden = _prefill(parts, {1: partner, 0: rows[start:stop]})
        parts.pools[0].cache.truncate(1, 0)
    assert torch.equal(hidden[1], last[0])
    for a, b in zip(_kv(parts, 0), _kv(whole, 0), strict=True):
        assert a.shape[-2] == n and torch.equal(a, b)

    _prefill(parts, {1: _rows(tiny_model, context - 20, seed=9)})  # a partner near the end
    for i in range(steps.shape[0]):
        alone = whole.decode(0, steps[i : i + 1], [0], [n + i], [_sampling(whole, 0, i)])
        lengths = [n + i, int(parts.pools[0].cache.lengths[1])]
        step_rows = torch.stack([steps[i], _rows(tiny_model, 1, 60 + i)[0]])
        both = parts.decode(0, step_rows, [0, 1], lengths, [_sampling(parts, s, i) for s in (0, 1)])
        assert torch.equal(both[0], alone[0]), f"step {i}: frames differ"
    for a, b in zip(_kv(parts, 0), _kv(whole, 0), strict=True):
        assert torch.equal(a, b)
