"""``MossTTSService``: MOSS-TTS-Realtime as a pipecat TTS service on an in-process engine.

Token streaming: every piece of LLM text goes straight into the session's open MOSS turn, and
each 80 ms frame is pushed as soon as the engine makes it. One bot reply is one pipecat audio
context and one engine turn. The session keeps the whole conversation acoustically: the bot's
turns as heard and the user's turns (captured input audio + transcript), so the voice stays
consistent; on an interruption the engine rolls back to what the user actually heard.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.engine.session import Session
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.service.base import MossTTSServiceBase, MossTTSSettings
from moss_pipecat.service.user_audio import UserUtterance


class MossTTSService(MossTTSServiceBase):
    """MOSS-TTS-Realtime on a local ``MossEngine`` (one engine session per pipeline).

    Args:
        engine: a running ``MossEngine`` to share between pipelines (one session each). If
            None, one is loaded from ``model``/``codec`` (hub ids or directories) when the
            pipeline starts, and owned (shut down) by this service.
        model, codec: checkpoints for the engine this service loads.
        device, dtype, engine_config: for the engine this service loads.
        **kwargs: ``MossTTSServiceBase`` arguments (context, capture_user_audio, settings,
            output_latency_s, ...) and ``TTSService`` ones (sample_rate, text_transforms, ...).
    """

    def __init__(
        self,
        *,
        engine: MossEngine | None = None,
        model: str | None = None,
        codec: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        engine_config: EngineConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, **kwargs)
        self._engine = engine
        self._owns_engine = engine is None
        self._engine_args = dict(
            model=model, codec=codec, device=device, dtype=dtype, config=engine_config
        )

    @property
    def engine(self) -> MossEngine | None:
        return self._engine

    @property
    def session(self) -> Session | None:
        """The engine session holding this pipeline's conversation."""
        return self._session

    async def _open_session(self) -> Session:
        if self._engine is None:
            from moss_pipecat.engine.factory import DEFAULT_CODEC, DEFAULT_MODEL, load_engine

            args = self._engine_args
            self._engine = await asyncio.to_thread(
                load_engine,
                args["model"] or DEFAULT_MODEL,
                args["codec"] or DEFAULT_CODEC,
                device=args["device"],
                dtype=args["dtype"],
                config=args["config"],
            )
        if self._engine.codec is None or self._engine.tokenizer is None:
            raise InvalidInputError(
                "MossTTSService needs an engine with a codec (PCM out) and a tokenizer (text in)"
            )
        return await self._engine.acreate_session()

    async def _after_close(self) -> None:
        if self._owns_engine and self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None

    @property
    def _pcm_rate(self) -> int:
        return self._engine.codec.sampling_rate

    async def _add_user_audio_turn(self, transcript: str, utterance: UserUtterance) -> None:
        session = self._session
        frames = await asyncio.to_thread(
            self._engine.codec.encode_frames,
            torch.from_numpy(utterance.audio),
            utterance.sample_rate,
            self._engine.layout.rvq,  # the codebooks the TTS model reads
        )
        if frames.shape[0] == 0:
            return
        ids = session.user_text_ids(transcript) if transcript else []
        await session.add_user_turn(ids, frames)

    async def _set_voice(self, voice: str | None) -> None:
        frames = None
        if voice:
            path = self._session_settings.voice_file(voice)

            def encode() -> torch.Tensor:
                import soundfile as sf

                try:
                    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
                except Exception as e:  # soundfile raises several types for a non-audio file
                    raise InvalidInputError(f"cannot read voice reference {voice!r}: {e}") from e
                wav_t = torch.from_numpy(wav.T.copy())
                return self._engine.codec.encode_frames(wav_t, sr, self._engine.layout.rvq)

            frames = await asyncio.to_thread(encode)
        await self._session.set_voice(frames)


__all__ = ["MossTTSService", "MossTTSSettings"]
