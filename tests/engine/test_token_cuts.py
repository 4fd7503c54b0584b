"""A CJK clause commits its ids before its punctuation comes, and they are the same ids
(issue #21.4): a cut inside a pre-token is taken only where no vocabulary token can span it."""

from __future__ import annotations

import random

import pytest

from moss_pipecat.engine.text import IncrementalTokenizer, encode_text
from moss_pipecat.engine.token_cuts import VocabBytes

CLAUSES = [
    "今天天气特别好我们一起去公园散步然后一起吃午饭下午再回家休息好不好",
    "こんにちは今日はいい天気ですね公園に行きましょうそれから昼ご飯を食べます",
    "我用iPhone拍照然后发给Alice看看她喜不喜欢这张照片吧",
]


def test_a_token_that_may_span_a_cut_forbids_it():
    vocab = VocabBytes({b"ab", b"c", b"a", b"b", b"bcd"})
    assert vocab.crossed(b"abc", 1)  # "ab" spans it
    assert vocab.crossed(b"abc", 2)  # "bc" may become "bcd" with what comes next
    assert not VocabBytes({b"ab", b"c", b"a", b"b"}).crossed(b"abc", 2)


@pytest.mark.parametrize("clause", CLAUSES)
def test_a_clause_without_a_break_commits_as_it_streams(moss_tokenizer, clause):
    whole = encode_text(moss_tokenizer, clause + "。")
    it = IncrementalTokenizer(moss_tokenizer)
    early = [i for ch in clause for i in it.push(ch)]
    # Before its punctuation, the clause has committed all but its last few ids (pre-token
    # commits alone committed none of a CJK clause: it is one pre-token).
    assert len(early) >= len(encode_text(moss_tokenizer, clause)) - 4
    assert early + it.push("。") + it.finish() == whole


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_of_cjk_text_give_the_whole_texts_ids(moss_tokenizer, seed):
    rng = random.Random(seed)
    text = "，".join(rng.sample(CLAUSES, 3)) + "。Then English, 然后中文。"
    it, ids, i = IncrementalTokenizer(moss_tokenizer), [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        ids += it.push(text[i : i + n])
        i += n
    assert ids + it.finish() == encode_text(moss_tokenizer, text)
