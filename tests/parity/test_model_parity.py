"""Parity of our MOSS-TTS-Realtime with the upstream reference goldens (any fixture variant)."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.model import MossTTSRealtime, SamplingParams, generate_turn
from moss_pipecat.model.sampling import (
    apply_repetition_penalty,
    filter_logits,
    sample_probs,
)

ATOL = 1e-4


@pytest.fixture(scope="module")
def model(realtime_dir) -> MossTTSRealtime:
    return MossTTSRealtime.from_pretrained(realtime_dir)


def _remaining_text(golden, key: str, meta_turn: dict) -> list[int]:
    return golden[key][meta_turn["n_prefill_text"] :].tolist()


def test_embedding_and_backbone_hidden(model, realtime_golden):
    rows = realtime_golden["backbone.input_ids"]
    torch.testing.assert_close(
        model.embedding(rows), realtime_golden["backbone.inputs_embeds"], atol=ATOL, rtol=1e-4
    )
    cache = model.new_cache(1, rows.shape[1])
    hidden = model.backbone(rows, cache)
    torch.testing.assert_close(
        hidden, realtime_golden["backbone.last_hidden"], atol=ATOL, rtol=1e-4
    )


def test_backbone_incremental_equals_full(model, realtime_golden):
    """Feeding the rows in uneven chunks through the cache gives the uncached result."""
    rows = realtime_golden["backbone.input_ids"]
    T = rows.shape[1]
    cache = model.new_cache(1, T + 3)
    outs, start = [], 0
    for size in [1, 3, 2, 5, 1, 100]:
        if start >= T:
            break
        outs.append(model.backbone(rows[:, start : start + size], cache))
        start += size
    torch.testing.assert_close(
        torch.cat(outs, dim=1), realtime_golden["backbone.last_hidden"], atol=ATOL, rtol=1e-4
    )
    assert cache.length(0) == T


def test_local_transformer_logits(model, realtime_golden):
    logits = model.local_transformer.teacher_forced_logits(
        realtime_golden["local.hidden"], realtime_golden["local.codes"]
    )
    torch.testing.assert_close(logits, realtime_golden["local.logits"], atol=ATOL, rtol=0)


def test_greedy_session_turn1_then_turn2_on_kept_cache(model, realtime_golden, realtime_meta):
    g, turns = realtime_golden, realtime_meta["turns"]
    cache = model.new_cache(1, g["session.rows"].shape[0] + 8)
    results = []
    for k, text_key in ((1, "session.text1"), (2, "session.text2")):
        meta = turns[f"turn{k}"]
        res = generate_turn(
            model,
            cache,
            0,
            g[f"turn{k}.prompt"],
            _remaining_text(g, text_key, meta),
            meta["max_frames"],
            SamplingParams.greedy_decoding(
                realtime_meta["decoding"]["repetition_penalty"],
                realtime_meta["decoding"]["repetition_window"],
            ),
        )
        assert res.stop == meta["stop"]
        assert res.frames.shape[0] == meta["n_frames"]
        assert torch.equal(res.frames, g[f"turn{k}.frames"])
        assert torch.equal(res.fed, g[f"turn{k}.fed"])
        torch.testing.assert_close(res.hidden, g[f"turn{k}.hidden"], atol=ATOL, rtol=1e-4)
        results.append(res)

    # Every row we fed, in order, is the session the reference fed.
    fed_rows = []
    for k, res in enumerate(results, start=1):
        fed_rows.append(g[f"turn{k}.prompt"])
        steps = torch.cat((res.fed[:, None], res.frames[: len(res.fed)]), dim=1)
        fed_rows.append(steps)
    assert torch.equal(torch.cat(fed_rows), g["session.rows"])
    assert cache.length(0) == g["session.rows"].shape[0]


def test_uncached_replay_of_session_matches_turn_hidden(model, realtime_golden):
    g = realtime_golden
    rows = g["session.rows"]
    cache = model.new_cache(1, rows.shape[0])
    hidden = model.backbone(rows[None], cache)[0]  # [N, H]
    p1, n1 = g["turn1.prompt"].shape[0], g["turn1.frames"].shape[0]
    p2 = g["turn2.prompt"].shape[0]
    turn1_pos = torch.arange(p1 - 1, p1 - 1 + n1)
    start2 = p1 + (n1 - 1)
    n2 = g["turn2.frames"].shape[0]
    turn2_pos = torch.arange(start2 + p2 - 1, start2 + p2 - 1 + n2)
    torch.testing.assert_close(hidden[turn1_pos], g["turn1.hidden"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(hidden[turn2_pos], g["turn2.hidden"], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", ["sample", "sample2"])
def test_sampling_filter_chain(realtime_golden, realtime_meta, name):
    g, d = realtime_golden, realtime_meta["sampling_defaults"]
    logits, history = g[f"{name}.logits"][None], g[f"{name}.history"][None]
    window = history[:, -d["repetition_window"] :]
    penalized = apply_repetition_penalty(logits, window, d["repetition_penalty"])
    torch.testing.assert_close(penalized[0], g[f"{name}.penalized"], atol=1e-5, rtol=0)
    filtered = filter_logits(
        penalized,
        torch.tensor([d["temperature"]]),
        torch.tensor([d["top_k"]]),
        torch.tensor([d["top_p"]]),
    )
    probs = filtered.softmax(-1)[0]
    torch.testing.assert_close(probs, g[f"{name}.probs"], atol=1e-5, rtol=0)
    assert int((probs > 0).sum()) == realtime_meta[name]["n_nonzero"]
    # torch.multinomial with a caller's generator seeded like the reference's global seed.
    gen = torch.Generator().manual_seed(1234)
    token = sample_probs(g[f"{name}.probs"][None], gen)
    assert int(token) == realtime_meta[name]["multinomial_token_torch_seed_1234"]
