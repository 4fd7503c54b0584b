"""Agent-test fixtures: the offline profile's models, loaded once per module."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agents.config import load_config


@pytest.fixture(scope="module")
def offline_config(fixtures_dir):
    # env={}: the developer's own MOSS_*/LLM_* variables must not change what the tests run.
    # Short replies keep the test quick (the tiny TTS speaks ~0.25 s per LLM token).
    return replace(load_config(env={}), fixtures=str(fixtures_dir), llm_max_tokens=24)


@pytest.fixture(scope="module")
def offline_models(offline_config):
    # Imported here, not at collection: every test process collects this package, and only the
    # one that runs these tests needs Whisper and llama.cpp's imports (~0.6 s of CPU).
    from agents.services import load_shared_models

    models = load_shared_models(offline_config)
    yield models
    models.shutdown()
