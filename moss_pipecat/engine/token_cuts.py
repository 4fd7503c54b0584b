"""Where a byte-level BPE word can be cut before it ends, its ids final (issue #21.4).

``IncrementalTokenizer`` commits ids at pre-token boundaries. A run of CJK characters is one
pre-token (the Qwen regex takes a run of letters whole), so a Chinese clause committed nothing
until its punctuation came: the first audio of a Chinese reply waited for a break, where an
English one waits for a word.

Inside a pre-token, byte-level BPE applies merges, each producing a vocabulary token. If no
vocabulary token can span a position (start before it, end after it, matching the word's
bytes, the ones not known yet included), no merge ever crosses it, so the merges on its left
run exactly as they would on the left part alone: the ids before that position are final,
whatever text follows. ``safe_cut`` finds the last such position that is also a token boundary
of the current encoding.
"""

from __future__ import annotations

import bisect
import functools
import unicodedata
from typing import Any

from moss_pipecat.speech.units import is_cjk_char


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (the printable stand-in for each byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


@functools.cache
def _to_latin1() -> dict[int, int]:
    """``str.translate`` table: each alphabet character to the code point of its byte, and the
    characters below 256 that are not in the alphabet to one that Latin-1 cannot encode."""
    table = {ord(ch): b for ch, b in _byte_decoder().items()}
    table.update({c: 0xFFFF for c in range(256) if c not in table})
    return table


class VocabBytes:
    """The vocabulary as byte strings: the tokens, and sorted, to find the tokens a prefix
    starts (cheaper to build than the set of every proper prefix: ~0.3 s of CPU less per
    process that loads a tokenizer)."""

    def __init__(self, tokens: set[bytes]) -> None:
        self.tokens = tokens
        self.ordered = sorted(tokens)
        self.max_len = max(map(len, tokens), default=0)

    @classmethod
    def of(cls, backend: Any) -> VocabBytes | None:
        """The backend's vocabulary, or None if it is not byte-level (no cuts then)."""
        table = _to_latin1()
        try:
            # A character outside the alphabet is left or made >= 256: not Latin-1.
            out = {
                t.translate(table).encode("latin-1")
                for t in backend.get_vocab(with_added_tokens=False)
            }
        except UnicodeEncodeError:
            return None
        return cls(out)

    def is_proper_prefix(self, part: bytes) -> bool:
        """Whether some token is longer than ``part`` and starts with it."""
        i = bisect.bisect_left(self.ordered, part)
        if i < len(self.ordered) and self.ordered[i] == part:
            i += 1  # the tokens starting with ``part`` follow it in sorted order
        return i < len(self.ordered) and self.ordered[i].startswith(part)

    def crossed(self, word: bytes, cut: int) -> bool:
        """Whether some token may span byte ``cut`` of ``word`` (bytes after it unknown)."""
        for a in range(max(0, cut - self.max_len), cut):
            if self.is_proper_prefix(word[a:]):  # a longer token may run into the text to come
                return True
            for b in range(cut + 1, min(len(word), a + self.max_len) + 1):
                if word[a:b] in self.tokens:
                    return True
        return False


_VOCABS: dict[int, tuple[Any, VocabBytes | None]] = {}


def vocab_bytes(backend: Any) -> VocabBytes | None:
    """Built once per tokenizer backend (about a second for Qwen's 151k tokens)."""
    entry = _VOCABS.get(id(backend))
    if entry is None or entry[0] is not backend:
        entry = _VOCABS[id(backend)] = (backend, VocabBytes.of(backend))
    return entry[1]


def safe_cut(vocab: VocabBytes, word: str, token_ends: list[int]) -> int:
    """Tokens of ``word`` (the last, unfinished pre-token) that are final: the most tokens
    whose end (``token_ends``, chars into ``word``, ascending) is a cut no token spans.

    A cut at the word's end is never taken: its next character is not known yet.
    """
    for k in range(len(token_ends) - 1, 0, -1):
        end = token_ends[k - 1]
        if 0 < end < len(word) and end != token_ends[k]:
            cut = len(word[:end].encode())
            if not vocab.crossed(word.encode(), cut):
                return k
    return 0


def _cjk_run(word: str) -> bool:
    """A pre-token with CJK in it that appended text can only extend or end, never split anew:
    letters (any script: ``iPhone拍照`` is one run), after at most one opening mark (the Qwen
    regex's ``[^\\r\\n\\p{L}\\p{N}]?\\p{L}+``). Runs without CJK keep committing by words."""
    body = word[1:] if word and not word[0].isalpha() else word
    if len(body) < 2 or not body.isalpha() or not any(is_cjk_char(ch) for ch in body):
        return False
    return body is word or (word[0] not in "'\r\n" and not word[0].isalnum())


def inner_cut(
    backend: Any, tail: str, start: int, tokens_before: int, offsets: list[tuple[int, int]]
) -> tuple[int, int] | None:
    """(ids, characters) of ``tail`` that are final inside its last pre-token, a CJK run
    starting at ``start`` whose ids start at ``tokens_before``; None if no cut is safe."""
    word = tail[start:]
    if not _cjk_run(word) or (vocab := vocab_bytes(backend)) is None:
        return None
    ends = [e - start for _, e in offsets[tokens_before:]]
    k = safe_cut(vocab, word, ends)
    return (tokens_before + k, start + ends[k - 1]) if k > 0 else None


def cover_marks(text: str, spans: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """Token ``spans`` (char offsets into ``text``, in order) with each end moved past the
    combining marks right after it, up to where the next span starts (``end`` for the last).

    NFC composes combining marks into the character before them (``o`` + U+031B -> ``ơ``), and
    the tokenizer's offsets of that character may stop short of them, though its token holds
    them: a text ending in such a character would then never count as fed whole (its last
    word would get no time)."""
    out = []
    for k, (s, e) in enumerate(spans):
        limit = spans[k + 1][0] if k + 1 < len(spans) else end
        while e < limit and unicodedata.combining(text[e]):
            e += 1
        out.append((s, e))
    return out
