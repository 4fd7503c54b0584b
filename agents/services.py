"""Builds the agent's STT, LLM and TTS services from an ``AgentConfig``.

Heavy models (the MOSS engine, the in-process LLM, Whisper) are loaded once per process in
``SharedModels`` and shared by every session the runner starts: each pipeline gets its own
engine session / LLM request slot, never its own copy of the weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import Frame
from pipecat.services.whisper.stt import WhisperSTTService

from agents.config import AgentConfig
from agents.local_llm import LlamaServer, LocalLlamaLLMService
from moss_pipecat.engine import TINY_ENGINE_CONFIG, MossEngine
from moss_pipecat.pcm import float_to_pcm16, pcm16_to_float, resample
from moss_pipecat.service import MossTTSService, MossTTSSettings

WHISPER_RATE = 16000
_whisper_cache: dict[tuple[str, str, str], Any] = {}
_whisper_lock = threading.Lock()


def load_whisper(model: str, device: str = "cpu", compute_type: str = "default"):
    """A faster-whisper model, loaded once per process and warmed up (the first call is slow)."""
    key = (model, device, compute_type)
    with _whisper_lock:
        if key not in _whisper_cache:
            from faster_whisper import WhisperModel

            whisper = WhisperModel(
                model, device=device, compute_type=compute_type, cpu_threads=os.cpu_count() or 0
            )
            list(whisper.transcribe(np.zeros(16000, np.float32), language="en")[0])
            _whisper_cache[key] = whisper
        return _whisper_cache[key]


class SharedWhisperSTTService(WhisperSTTService):
    """pipecat's faster-whisper service, with the model shared by all sessions of a process.

    Whisper reads 16 kHz audio; segments at another pipeline rate (8 kHz phone calls) are
    resampled first (pipecat's service would hand them over as they are).
    """

    def _load(self) -> None:
        self._model = load_whisper(str(self._settings.model), self._device, self._compute_type)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        if self.sample_rate != WHISPER_RATE:
            x = pcm16_to_float(audio)
            audio = float_to_pcm16(resample(x, self.sample_rate, WHISPER_RATE))
        async for frame in super().run_stt(audio):
            yield frame


@dataclass
class SharedModels:
    """Models loaded once per process and shared by all sessions."""

    config: AgentConfig
    engine: MossEngine
    llama: LlamaServer | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def shutdown(self) -> None:
        self.engine.shutdown()


def load_shared_models(config: AgentConfig) -> SharedModels:
    """Loads the MOSS engine (and the in-process LLM if configured)."""
    logger.info(f"agent: {config.describe()}")
    if config.uses_tiny_tts:
        from moss_pipecat.engine import load_tiny_engine

        logger.warning(
            "TTS is the tiny random-weight MOSS fixture model: its audio is noise-like by "
            "design (it proves the pipeline end to end; set MOSS_TTS_MODEL for real speech)"
        )
        engine = load_tiny_engine(config.fixtures_dir, config=TINY_ENGINE_CONFIG)
    else:
        from moss_pipecat.engine import DEFAULT_CODEC, load_engine

        engine = load_engine(
            config.tts_model, config.tts_codec or DEFAULT_CODEC, device=config.tts_device
        )
    llama = None
    if config.llm == "llama":
        llama = LlamaServer(_gguf_path(config), n_ctx=2048, n_parallel=engine.config.max_sessions)
        llama.chat({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})  # warm-up
    if config.stt == "whisper":
        load_whisper(*_whisper_args(config))
    return SharedModels(config=config, engine=engine, llama=llama)


def _whisper_args(config: AgentConfig) -> tuple[str, str, str]:
    """(model, device, compute type); the bundled tiny.en runs int8 on the CPU."""
    if config.whisper_model is not None:
        return config.whisper_model, config.whisper_device, "default"
    from agents.offline_models import whisper_tiny_en_dir

    return str(whisper_tiny_en_dir()), config.whisper_device, "int8"


def _gguf_path(config: AgentConfig) -> str:
    if config.llm_gguf:
        return config.llm_gguf
    from agents.offline_models import smollm2_gguf

    return str(smollm2_gguf())


def make_stt(config: AgentConfig):
    """The STT service: Deepgram (cloud) or faster-whisper (local / offline)."""
    if config.stt == "deepgram":
        from pipecat.services.deepgram.stt import DeepgramSTTService

        key = os.environ.get("DEEPGRAM_API_KEY")
        if not key:
            raise ValueError("MOSS_STT=deepgram needs DEEPGRAM_API_KEY")
        return DeepgramSTTService(api_key=key)
    model, device, compute_type = _whisper_args(config)
    return SharedWhisperSTTService(
        device=device,
        compute_type=compute_type,
        # Measured on a 2-core CPU with tiny.en (~0.5-1 s); the turn-stop timer waits this long
        # for a transcript after the VAD stops at most.
        ttfs_p99_latency=1.0 if device == "cpu" else 0.3,
        settings=SharedWhisperSTTService.Settings(model=model),
    )


def make_llm(config: AgentConfig, models: SharedModels):
    """The LLM service: in-process llama.cpp or any OpenAI-compatible endpoint."""
    if config.llm == "llama":
        return LocalLlamaLLMService(
            server=models.llama,
            settings=LocalLlamaLLMService.Settings(
                system_instruction=config.system_prompt, max_tokens=config.llm_max_tokens
            ),
        )
    from pipecat.services.openai.llm import OpenAILLMService

    api_key = os.environ.get("OPENAI_API_KEY") or os.environ.get("LLM_API_KEY")
    if not api_key and not config.llm_base_url:
        raise ValueError("MOSS_LLM=openai needs OPENAI_API_KEY (or LLM_BASE_URL for a local one)")
    # Self-hosted OpenAI-compatible servers know the classic max_tokens; OpenAI wants the new name.
    limit = {
        "max_tokens" if config.llm_base_url else "max_completion_tokens": config.llm_max_tokens
    }
    return OpenAILLMService(
        api_key=api_key or "none",  # local OpenAI-compatible servers accept any key
        base_url=config.llm_base_url,
        settings=OpenAILLMService.Settings(
            model=config.llm_model,
            system_instruction=config.system_prompt,
            **limit,
        ),
    )


def make_tts(config: AgentConfig, models: SharedModels, context: Any) -> MossTTSService:
    """A ``MossTTSService`` on the shared engine (one session per pipeline)."""
    settings = MossTTSSettings(voice=config.voice) if config.voice else None
    return MossTTSService(engine=models.engine, context=context, settings=settings)
