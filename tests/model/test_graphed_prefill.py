"""The padded static-buffer prefill chunk (what CUDA graphs replay) equals the eager one:
the same last hidden states, lengths and cached keys/values, and the same frames after it.
Padding (rows past a session's chunk, idle batch rows) writes only to the slots' spare
position, so lengths grow by the real rows and rolled-back entries stay unread."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.cuda_graphs import capture_eagerly
from moss_pipecat.model import BatchSampling, SamplingParams
from moss_pipecat.model.graphs import GraphedPrefill
from moss_pipecat.model.sampling import NO_HISTORY

MAX_LEN = 161  # 160 usable positions + the spare


def _eager_chunk(model, cache, rows, slots, sizes):
    T = rows.shape[1]
    kv_len = max(int(cache.lengths[s]) for s in slots) + T
    n_new = torch.tensor(sizes)
    hidden = model.backbone(rows, cache, torch.tensor(slots), n_new, kv_len)
    return hidden[torch.arange(len(slots)), n_new - 1]


def _chunk(long_rows, offset, sizes):
    """[B, T, 1 + rvq]: session b's next sizes[b] rows, right-padded by repeating its last row."""
    T = max(sizes)
    out = []
    for b, n in enumerate(sizes):
        r = long_rows[offset + 7 * b : offset + 7 * b + n]
        out.append(torch.cat((r, r[-1:].expand(T - n, -1))))
    return torch.stack(out)


@pytest.mark.parametrize("capture", [False, True], ids=["padded", "capture-warmup"])
def test_graphed_prefill_equals_eager_prefill(tiny_model, long_rows, capture):
    cfg = tiny_model.cfg
    eager, graph_cache = tiny_model.new_cache(5, MAX_LEN), tiny_model.new_cache(5, MAX_LEN)
    graphed = GraphedPrefill(
        tiny_model,
        graph_cache,
        row_buckets=(8, 32),
        batch_buckets=(1, 4),
        kv_buckets=(32, 64, 160),
        use_cuda_graphs=capture,
    )
    graphed.graphs.capture = capture_eagerly  # on CPU: the warm-up runs, then eager replays
    # (slots, rows per slot, roll a slot back first): batches padded in rows, in sessions
    # (3 of 4), a slot reused after a rollback, kv buckets crossed.
    plan = [
        ([2, 0], [5, 7], None),
        ([3], [30], None),
        ([0, 1, 3], [3, 8, 20], None),
        ([2, 4, 0, 1], [1, 2, 31, 7], (0, 4)),
        ([0], [25], None),
    ]
    for i, (slots, sizes, rollback) in enumerate(plan):
        if rollback is not None:
            for c in (eager, graph_cache):
                c.truncate(*rollback)
        rows = _chunk(long_rows, 3 * i, sizes)
        want = _eager_chunk(tiny_model, eager, rows, slots, sizes)
        kv_len = max(int(graph_cache.lengths[s]) + n for s, n in zip(slots, sizes, strict=True))
        got = graphed.step(rows, slots, sizes, kv_len)
        assert got is not None and got.shape == want.shape
        # Padding changes the matmul and attention shapes: the last bits may move (the
        # frames after it do not, below).
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert torch.equal(graph_cache.lengths, eager.lengths)
    for s in range(5):  # every valid entry; the spare position holds the padding's writes
        n = int(eager.lengths[s])
        for got_kv, want_kv in ((graph_cache.k, eager.k), (graph_cache.v, eager.v)):
            torch.testing.assert_close(got_kv[:, s, :, :n], want_kv[:, s, :, :n], atol=1e-5, rtol=0)
    # Decoding on top of either cache gives the same frames.
    slots = torch.tensor([0, 1, 2, 3, 4])
    sampling = BatchSampling.from_params([SamplingParams.greedy_decoding()] * 5)
    history = torch.full((5, 50, cfg.rvq), NO_HISTORY)
    step_rows = long_rows[:5, None]  # [5, 1, 1 + rvq]
    kv_len = int(eager.lengths.max()) + 1
    a, _ = tiny_model.decode_step(step_rows, eager, slots, kv_len, sampling, history)
    b, _ = tiny_model.decode_step(step_rows, graph_cache, slots, kv_len, sampling, history)
    assert torch.equal(a, b)
    assert {(4, 8, 32), (1, 32, 32), (4, 32, 64)} <= graphed.graphs.keys


def test_chunks_no_bucket_holds_run_eagerly(tiny_model, long_rows):
    cache = tiny_model.new_cache(3, MAX_LEN)
    graphed = GraphedPrefill(tiny_model, cache, row_buckets=(8,), batch_buckets=(1, 2))
    before = cache.lengths.clone()
    assert graphed.step(long_rows[None, :9], [0], [9], 9) is None  # longer than any bucket
    assert graphed.step(long_rows[None, :8], [0], [8], MAX_LEN) is None  # over the spare
    assert torch.equal(cache.lengths, before) and not graphed.graphs.keys
    assert graphed.batch_buckets == (1, 2) and graphed.kv_buckets == (160,)
    with pytest.raises(ValueError, match="distinct"):
        graphed.step(long_rows[:2, None].expand(2, 4, -1), [1, 1], [4, 4], 8)
    # More sessions than the largest batch bucket: several replays, as one eager chunk.
    rows = long_rows[:24].reshape(3, 8, -1)  # [3, 8, 1 + rvq]
    eager = tiny_model.new_cache(3, MAX_LEN)
    want = _eager_chunk(tiny_model, eager, rows, [2, 0, 1], [8, 5, 3])
    got = graphed.step(rows, [2, 0, 1], [8, 5, 3], 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(cache.lengths, eager.lengths) and graphed.graphs.keys == {
        (2, 8, 160),
        (1, 8, 160),
    }
