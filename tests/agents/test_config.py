"""Agent configuration: profile defaults, then environment variables, then flags."""

from __future__ import annotations

import argparse

import pytest

from agents.config import add_agent_arguments, load_config, profile_defaults


def _args(*argv: str) -> argparse.Namespace:
    return add_agent_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_offline_is_the_default_and_needs_nothing():
    c = load_config(_args(), env={})
    assert (c.profile, c.stt, c.llm, c.tts_model) == ("offline", "whisper", "llama", None)
    assert c.uses_tiny_tts and "NOISE-LIKE" in c.describe()


def test_env_overrides_profile_and_flags_override_env():
    env = {"MOSS_AGENT_PROFILE": "local", "LLM_MAX_TOKENS": "99", "SMART_TURN": "0"}
    c = load_config(_args(), env=env)
    assert c.profile == "local" and c.llm == "openai" and c.tts_device == "cuda"
    assert c.llm_max_tokens == 99 and c.smart_turn is False
    c = load_config(_args("--llm-max-tokens", "7", "--smart-turn", "1"), env=env)
    assert c.llm_max_tokens == 7 and c.smart_turn is True
    c = load_config(_args("--profile", "cloud"), env=env)
    assert (c.profile, c.stt, c.llm_base_url) == ("cloud", "deepgram", None)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MOSS_AGENT_PROFILE": "studio"}, "unknown profile"),
        ({"MOSS_STT": "vosk"}, "MOSS_STT"),
        ({"MOSS_LLM": "gemini"}, "MOSS_LLM"),
        ({"MOSS_LLM": "openai"}, "LLM_MODEL"),
    ],
)
def test_bad_configuration_is_refused(env, message):
    with pytest.raises(ValueError, match=message):
        load_config(_args(), env=env)


def test_gpu_profiles_use_the_real_checkpoints():
    for profile in ("local", "cloud"):
        c = profile_defaults(profile)
        assert c.tts_model == "OpenMOSS-Team/MOSS-TTS-Realtime" and not c.uses_tiny_tts
