"""How a turn's rows are kept for the garbage collector's sake (``engine.row_store``,
``word_times.SpokenUnits``): the same values as the list of rows and the ``WordTimer`` they
replace, read back any way the engine reads them."""

from __future__ import annotations

import gc

import pytest
import torch

from moss_pipecat.engine.row_store import CHUNK, RowStore
from moss_pipecat.engine.word_times import WordTimer


def _rows(n: int) -> torch.Tensor:
    return torch.arange(n * 17, dtype=torch.int64).reshape(n, 17)


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5])
def test_rows_read_back_as_appended(n):
    rows, store = _rows(n), RowStore()
    for r in rows:
        store.append(r)
    assert len(store) == n and bool(store) == (n > 0)
    for i in range(-n, n):
        assert torch.equal(store[i], rows[i])
    with pytest.raises(IndexError):
        store[n]
    got = torch.cat(store.tensors()) if n else torch.empty(0, 17, dtype=torch.int64)
    assert torch.equal(got, rows)
    assert len(store.tensors()) == -(-n // CHUNK)  # one tensor per CHUNK rows, not one a row


@pytest.mark.parametrize("k", [0, 1, CHUNK, 2 * CHUNK + 4, 99])
def test_truncate_keeps_the_first_rows_as_one_tensor(k):
    rows, store = _rows(2 * CHUNK + 5), RowStore()
    for r in rows:
        store.append(r)
    store.truncate(k)
    kept = min(k, rows.shape[0])
    assert len(store) == kept
    assert len(store.tensors()) == (1 if kept else 0)
    if kept:
        assert torch.equal(store.tensors()[0], rows[:kept]) and torch.equal(
            store[-1], rows[kept - 1]
        )
    store.append(rows[0])  # a cut turn goes on from where it was cut (a restore, a re-cut)
    assert len(store) == kept + 1 and torch.equal(store[-1], rows[0])


def test_a_store_of_a_list_or_a_tensor_holds_the_same_rows():
    rows = _rows(5)
    for given in (list(rows), rows, RowStore(rows)):
        store = RowStore.of(given)
        assert torch.equal(torch.cat(store.tensors()), rows)
    assert len(RowStore.of([])) == 0


def test_a_finished_turns_word_times_answer_as_the_timer_did():
    timer = WordTimer(chars_per_second=14.0)
    text = "Hello there, 你好世界 and a few more words at the end."
    timer.add_text(text)
    for f in range(1, 30):
        timer.on_audio(f, len(text))
    timer.finish(30, len(text))
    settled = timer.settled()
    assert len(timer.placed) > 5
    for frames in range(0, 32):
        assert settled.heard_text(frames) == timer.heard_text(frames)
    for units in (0, 1, 3, len(timer.placed), len(timer.placed) + 2, -1):
        assert settled.heard_text(5, units) == timer.heard_text(5, units)
    gc.collect()  # its strings' tuple is untracked once it has been through a collection
    assert all(not gc.is_tracked(x) for x in vars_of(settled))


def vars_of(settled) -> list:
    return [getattr(settled, name) for name in type(settled).__slots__]
