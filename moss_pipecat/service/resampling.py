"""A reply's engine audio at the pipeline's output rate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pipecat.audio.utils import create_stream_resampler


async def resampled(turn: Any, in_rate: int, out_rate: int) -> AsyncIterator[tuple[Any, bytes]]:
    """Yields ``(chunk, audio)`` for each engine frame of ``turn`` with its PCM at
    ``out_rate``, then ``(None, tail)``: what the resampler still held at the turn's end.

    One resampler per reply: its filter state must not leak across an interruption, and
    within a reply it is never cleared (pipecat's default clears it after 0.2 s without
    audio, dropping the samples it holds: a reply that waits for LLM text, or a busy host,
    would lose audio and click).
    """
    resampler = create_stream_resampler(clear_after_secs=None) if out_rate != in_rate else None
    async for chunk in turn:
        audio = chunk.pcm
        if resampler is not None:
            audio = await resampler.resample(audio, in_rate, out_rate)
        yield chunk, audio
    if resampler is not None:
        yield None, await resampler.flush()
