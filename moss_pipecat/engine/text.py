"""Text side of a MOSS session: the tokenizer, the row layout's special ids, streaming tokenization.

LLM text reaches the engine in arbitrary pieces. ``IncrementalTokenizer`` turns them into text ids
as soon as those ids are final, and the ids of a whole turn are exactly ``encode_text`` of the
whole (cleaned) turn text.

Why committing early is safe (the Qwen pipeline is: NFC normaliser -> regex split into
pre-tokens -> byte-level BPE inside each pre-token, never across): a pre-token boundary ``b`` of
the current text stays a boundary, with the same pre-tokens before it, whatever is appended, if

* ``b`` is not the start of the last pre-token (the last one can grow or change split);
* ``b`` is not inside the trailing whitespace run: the regex splits a whitespace run by what ends
  it (``"a \\n "`` -> ``a``, ``" \\n"``, ``" "``, but ``"a \\n \\n"`` -> ``a``, ``" \\n \\n"``);
* the character at ``b`` is a normalisation-safe starter: NFC can compose a later combining mark
  with a starter further back (``"a\\u0316"`` splits before U+0316, but with U+0301 appended NFC
  yields ``"\\u00e1\\u0316"`` and the split moves). A starter that never composes backwards
  (ccc 0, not the second half of a canonical composition) stops that.

Tests in ``tests/engine/test_text.py`` check this at every split point and on random text.
Text is always tokenized as plain text: added tokens (``<|im_end|>``, ``<think>``, ...) are
never produced from it, so LLM output cannot inject control tokens into the conversation rows.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

from tokenizers import PreTokenizedString, Tokenizer

from moss_pipecat._log import logger
from moss_pipecat.engine.rows import DEFAULT_DELAY, RowLayout
from moss_pipecat.engine.token_cuts import cover_marks, inner_cut, vocab_bytes
from moss_pipecat.errors import CheckpointError, InvalidInputError
from moss_pipecat.speech.pieces import SurrogateJoiner, join_surrogates

DEFAULT_MAX_CHARS = 20_000
ROLES = ("assistant", "user", "system", "context")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
AUDIO_PAD, TEXT_PAD = "<|audio_pad|>", "<|text_pad|>"

# C0 and C1 control characters except \t and \n (\r is folded into \n before this applies).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def load_tokenizer(repo_or_path: str | PathLike[str], **kwargs: Any) -> Any:
    """Loads the MOSS checkpoint's tokenizer with ``transformers.AutoTokenizer``.

    Args:
        repo_or_path: a local directory or a Hugging Face hub id.
        **kwargs: passed to ``AutoTokenizer.from_pretrained`` (``revision``, ``cache_dir``, ...).

    Raises:
        CheckpointError: if it cannot be loaded or is not backed by ``tokenizers`` (fast).
    """
    from transformers import AutoTokenizer  # heavy import, only needed here

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(repo_or_path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot load a tokenizer from {str(repo_or_path)!r}: {e}") from e
    prepare_tokenizer(tokenizer)
    logger.debug("loaded tokenizer {} from {}", type(tokenizer).__name__, repo_or_path)
    return tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Builds now what streaming reads (not on a turn's first push); CheckpointError if
    ``tokenizer`` is not backed by ``tokenizers``."""
    vocab_bytes(_backend(tokenizer))  # the vocabulary's bytes (~0.3 s, CJK commits)
    _backward_composers()  # ~30 ms
    return tokenizer


def _backend(tokenizer: Any) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` behind a transformers tokenizer (or the object itself)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise CheckpointError(
            f"{type(tokenizer).__name__} is not backed by the `tokenizers` library (no fast "
            "tokenizer); streaming tokenization needs its pre-tokenizer"
        )
    return backend


def clean_text(text: str) -> str:
    """Sanitises text before tokenizing.

    ``\\r\\n`` and a lone ``\\r`` become ``\\n``; other control characters (C0/C1 except ``\\t``
    and ``\\n``) become a space; surrogate pairs become their character and lone surrogates
    U+FFFD (``pieces.join_surrogates``). Everything else (emoji, markdown,
    numbers, format characters such as ZWJ) is kept as is.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text)
    return join_surrogates(text)


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]  # char offsets into the encoded string
    split_starts: list[int]  # char offsets of each pre-token (start, end)
    split_ends: list[int]
    tokens_before: list[int]  # tokens of the pre-tokens before pre-token k


def _encode(backend: Tokenizer, text: str) -> _Encoded:
    # The backend's own pipeline minus added-token matching, through the public `tokenizers`
    # API; offsets come back in characters of the original (un-normalised) string.
    pts = PreTokenizedString(text)
    if backend.normalizer is not None:
        pts.normalize(backend.normalizer.normalize)
    if backend.pre_tokenizer is not None:
        backend.pre_tokenizer.pre_tokenize(pts)
    pts.tokenize(backend.model.tokenize)
    splits = pts.get_splits(offset_referential="original", offset_type="char")
    enc = pts.to_encoding()
    before, n = [], 0
    for _, _, tokens in splits:
        before.append(n)
        n += len(tokens)
    ids = list(enc.ids)
    if n != len(ids):  # would mean the splits and the encoding disagree: never commit on that
        raise CheckpointError(f"pre-token splits hold {n} tokens but the encoding {len(ids)}")
    starts = [s for _, (s, _), _ in splits]
    return _Encoded(ids, list(enc.offsets), starts, [e for _, (_, e), _ in splits], before)


def encode_text(tokenizer: Any, text: str, *, strip: bool = True) -> list[int]:
    """Text ids of a whole text (``clean_text`` applied), as ``IncrementalTokenizer`` yields them.

    Equals ``tokenizer(text, add_special_tokens=False)["input_ids"]`` for text that holds no
    added-token string; such strings (``<|im_end|>``, ``<think>``) are tokenized as plain text.

    Args:
        tokenizer: a transformers fast tokenizer or a ``tokenizers.Tokenizer``.
        text: the text.
        strip: drop leading and trailing whitespace (whitespace-only text gives ``[]``).
    """
    text = clean_text(text)
    if strip:
        text = text.strip()
    return _encode(_backend(tokenizer), text).ids if text else []


@functools.cache
def _backward_composers() -> frozenset[str]:
    """Characters NFC may compose with an earlier starter: second halves of canonical pairs."""
    out = {chr(c) for c in range(0x1161, 0x1176)}  # Hangul vowel jamo (algorithmic, L+V)
    out |= {chr(c) for c in range(0x11A8, 0x11C3)}  # Hangul trailing jamo (LV+T)
    for cp in range(0x30000):  # every canonical decomposition lies below U+2FA1E
        dec = unicodedata.decomposition(chr(cp))
        if dec and not dec.startswith("<") and len(parts := dec.split()) == 2:
            out.add(chr(int(parts[1], 16)))
    return frozenset(out)


def _safe_start(ch: str) -> bool:
    """True if text before ``ch`` normalises the same whatever follows (see module docstring)."""
    composers = _backward_composers()
    for c in (ch, unicodedata.normalize("NFD", ch)[0]):
        if unicodedata.combining(c) or c in composers:
            return False
    return True


def _trailing_space_start(text: str) -> int:
    return len(text.rstrip())


class IncrementalTokenizer:
    """Tokenizes one turn's text as it streams in, committing ids as soon as they are final.

    The concatenation of everything ``push`` and ``finish`` return equals
    ``encode_text(tokenizer, whole_text, strip=strip)``, however the text was split. Only the
    uncommitted tail (normally the last word or two) is re-tokenized on each push. A single
    pre-token without a break (a long CJK clause with no punctuation) stays uncommitted until it
    ends, and re-tokenizing it costs O(its length) per push.

    ``bytes`` pieces may split a UTF-8 character; an incremental decoder joins them, and invalid
    bytes become U+FFFD (as does an incomplete character left at ``finish``).

    Args:
        tokenizer: a transformers fast tokenizer or a ``tokenizers.Tokenizer``.
        max_chars: the most (cleaned) characters one turn may hold.
        strip: drop the turn's leading and trailing whitespace; a whitespace-only turn yields no
            ids. With ``strip=False`` the text is tokenized exactly as received.
    """

    def __init__(
        self, tokenizer: Any, *, max_chars: int = DEFAULT_MAX_CHARS, strip: bool = True
    ) -> None:
        if max_chars <= 0:
            raise InvalidInputError(f"max_chars must be positive, got {max_chars}")
        self._backend = _backend(tokenizer)
        self.max_chars = max_chars
        self.strip = strip
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._surrogates = SurrogateJoiner()  # str pieces may split a surrogate pair
        self._parts: list[str] = []  # cleaned text received so far
        self._len = 0
        self._tail = ""  # text not yet committed, from _tail_start on
        self._tail_start = 0
        self._pending_cr = False  # a trailing "\r" waits to see whether "\n" follows
        self._started = not strip  # False while only leading whitespace has arrived
        self._ids: list[int] = []
        self._spans: list[tuple[int, int]] = []
        self._finished = False

    @property
    def committed(self) -> list[int]:
        """All ids returned so far."""
        return list(self._ids)

    @property
    def text(self) -> str:
        """All cleaned text received so far (token spans index into it)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def pending(self) -> str:
        """Text received but not yet committed to ids."""
        return self._tail

    @property
    def finished(self) -> bool:
        return self._finished

    def token_spans(self) -> list[tuple[int, int]]:
        """(start, end) character offsets into ``text`` of each committed id.

        Offsets are the tokenizer's: ids that are byte pieces of one character (parts of an
        emoji) share that character's span.
        """
        return list(self._spans)

    def push(self, piece: str | bytes | bytearray | memoryview) -> list[int]:
        """Adds a piece of text; returns the ids that are now final (maybe none).

        Raises:
            InvalidInputError: after ``finish``, for a piece that is neither text nor bytes, or
                when the turn would exceed ``max_chars`` (then nothing changes).
        """
        self._check_open()
        state, held = self._decoder.getstate(), self._surrogates.held
        if isinstance(piece, str):
            text = self._surrogates.push(piece)
        elif isinstance(piece, (bytes, bytearray, memoryview)):
            text = self._decoder.decode(bytes(piece))
        else:
            raise InvalidInputError(f"push takes str or bytes, got {type(piece).__name__}")
        if self._pending_cr:
            text = "\r" + text
        hold_cr = text.endswith("\r")
        if hold_cr:
            text = text[:-1]
        text = clean_text(text)
        # Count what finish() may still flush (a held "\r", an incomplete UTF-8 character).
        after = self._len + len(text) + hold_cr + bool(self._decoder.getstate()[0])
        after += len(self._surrogates.held)
        if after > self.max_chars:
            self._decoder.setstate(state)
            self._surrogates.held = held
            raise InvalidInputError(
                f"turn text would reach {after} characters, more than max_chars={self.max_chars}"
            )
        self._pending_cr = hold_cr
        self._append(text)
        return self._advance(final=False)

    def finish(self) -> list[int]:
        """Ends the turn; returns the remaining ids.

        Raises:
            InvalidInputError: if the turn was already finished.
        """
        self._check_open()
        rest = self._surrogates.finish() + self._decoder.decode(b"", final=True)
        if self._pending_cr:
            rest += "\r"
        self._pending_cr = False
        self._append(clean_text(rest))
        self._finished = True
        return self._advance(final=True)

    def _check_open(self) -> None:
        if self._finished:
            raise InvalidInputError(
                "this turn's text is finished; start a new IncrementalTokenizer"
            )

    def _append(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._len += len(text)
            self._tail += text

    def _advance(self, final: bool) -> list[int]:
        if not self._started:
            body = self._tail.lstrip()
            self._tail_start += len(self._tail) - len(body)
            self._tail = body
            if not body:
                return []
            self._started = True
        tail = self._tail
        if final:
            text = tail.rstrip() if self.strip else tail
            if not text:
                return []
            enc = _encode(self._backend, text)
            return self._commit(enc, len(enc.ids), len(tail))
        if not tail:
            return []
        enc = _encode(self._backend, tail)
        if not enc.split_starts:
            return []
        # Inside a CJK run (one pre-token until a break), ids no later text can change.
        inner = inner_cut(
            self._backend, tail, enc.split_starts[-1], enc.tokens_before[-1], enc.offsets
        )
        whole = len(enc.split_starts) < 2 or enc.split_ends[-2] <= enc.split_starts[-1]
        if inner is not None and whole and _safe_start(tail[inner[1]]):
            return self._commit(enc, *inner)
        limit = min(enc.split_starts[-1], _trailing_space_start(tail))
        for k in range(len(enc.split_starts) - 1, 0, -1):
            start = enc.split_starts[k]
            # NFC may expand one character into several that fall in different pre-tokens
            # (U+095B -> U+091C U+093C): only cut where no pre-token straddles the cut.
            if start <= limit and enc.split_ends[k - 1] <= start and _safe_start(tail[start]):
                return self._commit(enc, enc.tokens_before[k], start)
        return []

    def _commit(self, enc: _Encoded, n_tokens: int, n_chars: int) -> list[int]:
        ids = enc.ids[:n_tokens]
        base = self._tail_start
        self._ids += ids
        spans = cover_marks(self._tail, enc.offsets[:n_tokens], n_chars)
        self._spans += [(base + s, base + e) for s, e in spans]
        self._tail = self._tail[n_chars:]
        self._tail_start += n_chars
        return ids


def _special_id(tokenizer: Any, token: str) -> int:
    # convert_tokens_to_ids maps an unknown token to the unk id (Qwen2Tokenizer: <|endoftext|>),
    # so round-trip it.
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tokenizer.convert_ids_to_tokens(int(tid)) != token:
        raise CheckpointError(f"the tokenizer has no {token!r} token")
    return int(tid)


def layout_from_tokenizer(tokenizer: Any, model_cfg: Any, delay: int = DEFAULT_DELAY) -> RowLayout:
    """The row layout of a real checkpoint: text ids read from its tokenizer, audio ids and
    ``rvq`` from its config.

    Args:
        tokenizer: the checkpoint's tokenizer (``load_tokenizer``).
        model_cfg: its ``MossTTSRealtimeConfig``.
        delay: text tokens the audio trails the text by.

    Raises:
        CheckpointError: if a special token is missing, the chat template does not tokenize as
            ``<|im_start|> ROLE \\n``, or the tokenizer disagrees with the config.
    """
    if delay < 1:
        raise InvalidInputError(f"delay must be positive, got {delay}")
    im_start, im_end = _special_id(tokenizer, IM_START), _special_id(tokenizer, IM_END)
    ref_audio_pad = _special_id(tokenizer, AUDIO_PAD)
    text_pad = _special_id(tokenizer, TEXT_PAD)
    for name, ours, theirs in (
        ("text_pad", text_pad, model_cfg.text_pad),
        ("reference_audio_pad", ref_audio_pad, model_cfg.reference_audio_pad),
    ):
        if ours != theirs:
            raise CheckpointError(f"tokenizer {name} id {ours} != config {name} {theirs}")
    newline = tuple(encode_text(tokenizer, "\n", strip=False))
    roles: dict[str, tuple[int, ...]] = {}
    for role in ROLES:
        # As the chat template writes it: special tokens matched, role and newline as text.
        ids = list(tokenizer(f"{IM_START}{role}\n", add_special_tokens=False)["input_ids"])
        role_ids = tuple(ids[1 : len(ids) - len(newline)])
        if (
            ids[:1] != [im_start]
            or tuple(ids[len(ids) - len(newline) :]) != newline
            or not role_ids
            or list(role_ids) != encode_text(tokenizer, role)
        ):
            raise CheckpointError(f"{IM_START}{role}\\n tokenizes unexpectedly: {ids}")
        roles[role] = role_ids
    specials = (im_start, im_end, ref_audio_pad, text_pad)
    if len(set(specials)) != len(specials) or set(specials) & set(newline):
        raise CheckpointError(f"special text ids collide: {specials}, newline {newline}")
    vocab = model_cfg.language.vocab_size
    if vocab and max(*specials, *newline, *(i for r in roles.values() for i in r)) >= vocab:
        raise CheckpointError(f"special text ids {specials} fall outside the model vocab {vocab}")
    if model_cfg.audio_eos >= model_cfg.audio_vocab_size:
        raise CheckpointError(
            f"audio EOS {model_cfg.audio_eos} outside audio vocab {model_cfg.audio_vocab_size}"
        )
    return RowLayout(
        rvq=model_cfg.rvq,
        audio_pad=model_cfg.audio_pad_token,
        audio_bos=model_cfg.audio_bos,
        audio_eos=model_cfg.audio_eos,
        text_pad=text_pad,
        ref_audio_pad=ref_audio_pad,
        im_start=im_start,
        im_end=im_end,
        newline=newline,
        roles=roles,
        delay=delay,
    )


def layout_from_golden(meta: Mapping[str, Any]) -> RowLayout:
    """The row layout of a tiny fixture (no tokenizer): ids from its ``golden.json``.

    Raises:
        CheckpointError: if ``special_ids``, ``audio`` or ``delay_tokens_len`` is missing.
    """
    try:
        ids, audio = meta["special_ids"], meta["audio"]
        return RowLayout(
            rvq=int(audio["channels"]),
            audio_pad=int(audio["audio_pad"]),
            audio_bos=int(audio["bos"]),
            audio_eos=int(audio["eos"]),
            text_pad=int(ids["text_pad"]),
            ref_audio_pad=int(ids["audio_pad"]),
            im_start=int(ids["im_start"]),
            im_end=int(ids["im_end"]),
            newline=(int(ids["newline"]),),
            roles={r: (int(ids[r]),) for r in ROLES},
            delay=int(meta["delay_tokens_len"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"golden.json lacks a layout id: {e!r}") from e
