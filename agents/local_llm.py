"""An in-process llama.cpp LLM (GGUF) as a pipecat ``LLMService``.

Backend: ``xllamacpp`` (llama.cpp's own server engine, Cython bindings, prebuilt CPU/GPU wheels
on PyPI). ``llama-cpp-python`` was the first choice but ships only a source distribution that
compiles llama.cpp on install (well over 5 minutes on a 2-core machine); xllamacpp installs
from a wheel in seconds.

Why a pipecat service rather than an OpenAI-compatible server on loopback + pipecat's OpenAI
service: no second process or port, no HTTP hop per token, and an interruption stops
generation at the next token (the streaming callback returns True) instead of relying on a
client disconnect being noticed by the server. Any OpenAI-compatible endpoint (llama-server,
vLLM, Ollama) is still usable through the ``local``/``cloud`` profiles (``LLM_BASE_URL``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

_DONE = object()


@dataclass
class LocalLlamaSettings(LLMSettings):
    """Settings of ``LocalLlamaLLMService`` (pipecat's settings pattern).

    Parameters:
        repeat_penalty: llama.cpp's repetition penalty (small models loop without one).
    """

    repeat_penalty: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class LlamaServer:
    """A loaded GGUF model: llama.cpp's server engine in this process (thread-safe).

    One instance can serve several pipelines (each request takes a slot).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_parallel: int = 1,
        n_gpu_layers: int | None = None,
    ) -> None:
        import xllamacpp as xlc

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model {path} not found")
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx * n_parallel
        params.n_parallel = n_parallel
        # Half the cores: STT, VAD and TTS run beside it in a voice agent. No busy polling
        # between tokens either, for the same reason.
        threads = n_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
        for cpu in (params.cpuparams, params.cpuparams_batch):
            cpu.n_threads = threads
            cpu.poll = 0
        if n_gpu_layers is not None:
            params.n_gpu_layers = n_gpu_layers
        params.verbosity = 0
        params.warmup = True
        self.path = path
        self._server = xlc.Server(params)
        logger.info(f"llama.cpp model {path.name} loaded (n_ctx={n_ctx}, slots={n_parallel})")

    def stream_chat(self, request: dict[str, Any], on_chunk, stop: threading.Event) -> None:
        """Blocking streaming chat completion; ``on_chunk`` gets each chunk dict."""

        def callback(chunk: Any) -> bool:
            on_chunk(chunk)
            return stop.is_set()  # True stops generation at the next token

        self._server.handle_chat_completions({**request, "stream": True}, callback)

    def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """Blocking non-streaming chat completion."""
        return self._server.handle_chat_completions({**request, "stream": False})


class LocalLlamaLLMService(LLMService):
    """Streams replies from an in-process GGUF model (llama.cpp) into the pipeline.

    Args:
        model_path: the GGUF file (ignored when ``server`` is given).
        server: an already loaded ``LlamaServer`` to share.
        n_ctx, n_threads: for the model this service loads.
        settings: ``LocalLlamaSettings`` (system_instruction, temperature, max_tokens, ...).
    """

    Settings = LocalLlamaSettings
    _settings: LocalLlamaSettings

    def __init__(
        self,
        *,
        model_path: str | os.PathLike | None = None,
        server: LlamaServer | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        settings: LocalLlamaSettings | None = None,
        **kwargs: Any,
    ) -> None:
        if server is None and model_path is None:
            raise ValueError("LocalLlamaLLMService needs model_path or server")
        defaults = LocalLlamaSettings(
            model=str(Path(model_path).name) if model_path else server.path.name,
            system_instruction=None,
            temperature=0.3,  # small models ramble at higher temperatures
            max_tokens=80,
            top_p=0.9,
            top_k=40,
            seed=None,
            frequency_penalty=None,
            presence_penalty=None,
            repeat_penalty=1.15,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
        )
        if settings is not None:
            defaults.apply_update(settings)
        super().__init__(settings=defaults, **kwargs)
        self._server = server
        self._model_path = model_path
        self._load_args = dict(n_ctx=n_ctx, n_threads=n_threads)

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def server(self) -> LlamaServer | None:
        return self._server

    async def start(self, frame) -> None:
        await super().start(frame)
        if self._server is None:
            self._server = await asyncio.to_thread(LlamaServer, self._model_path, **self._load_args)

    def _request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        s = self._settings
        request: dict[str, Any] = {"messages": messages}
        for key, value in (
            ("temperature", s.temperature),
            ("max_tokens", s.max_tokens),
            ("top_p", s.top_p),
            ("top_k", s.top_k),
            ("seed", s.seed),
            ("frequency_penalty", s.frequency_penalty),
            ("presence_penalty", s.presence_penalty),
            ("repeat_penalty", s.repeat_penalty),
        ):
            if is_given(value) and value is not None:
                request[key] = value
        return request

    async def _messages(self, context: LLMContext) -> list[dict[str, Any]]:
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=self._settings.system_instruction
            if is_given(self._settings.system_instruction)
            else None,
            convert_developer_to_user=True,
        )
        return [dict(m) for m in params["messages"]]

    async def run_inference(self, context: LLMContext, max_tokens: int | None = None, **_) -> str:
        """One-shot completion (used by pipecat for summaries and the like)."""
        request = self._request(await self._messages(context))
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        result = await asyncio.to_thread(self._server.chat, request)
        return result["choices"][0]["message"]["content"] or ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            await self.start_processing_metrics()
            try:
                await self._stream_reply(frame.context)
            except Exception as e:  # a model failure must not take the pipeline down
                await self.push_error(error_msg=f"local LLM failed: {e}", exception=e)
            finally:
                await self.stop_processing_metrics()
                await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)

    async def _stream_reply(self, context: LLMContext) -> None:
        request = self._request(await self._messages(context))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def worker() -> None:
            try:
                self._server.stream_chat(
                    request, lambda c: loop.call_soon_threadsafe(queue.put_nowait, c), stop
                )
            except Exception as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        await self.start_ttfb_metrics()
        thread = threading.Thread(target=worker, name="llama-stream", daemon=True)
        thread.start()
        first = True
        try:
            while (chunk := await queue.get()) is not _DONE:
                if isinstance(chunk, Exception):
                    raise chunk
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if first:
                            await self.stop_ttfb_metrics()
                            first = False
                        await self._push_llm_text(text)
                usage = chunk.get("usage")
                if usage:
                    await self.start_llm_usage_metrics(
                        LLMTokenUsage(
                            prompt_tokens=usage.get("prompt_tokens", 0),
                            completion_tokens=usage.get("completion_tokens", 0),
                            total_tokens=usage.get("total_tokens", 0),
                        )
                    )
        finally:
            # Interrupted (task cancelled) or done: the model stops at its next token.
            stop.set()
