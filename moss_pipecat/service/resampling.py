"""A reply's engine audio at the pipeline's output rate, as the audio frames it pushes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import TTSAudioRawFrame

from moss_pipecat.errors import MossError

# An audio frame's metadata entry: how many engine frames it completes (the heard clock's
# count), so the resampler's tail, which is no frame of its own, counts only the frames whose
# audio it completes (none, unless the resampler held a whole frame).
FRAMES_TAG = "moss_pipecat.engine_frames"

# soxr's "HQ" (as ``pcm.resample``), not pipecat's default "VHQ": VHQ's longer filter holds a
# whole 80 ms frame back between 24 kHz and 8 kHz (a phone pipeline): a reply's first frame
# gives no audio, the rest comes in 137.5 ms bursts every 160 ms, so first audio is a frame
# late. HQ releases most of each frame at once (24 -> 8 kHz: ~490 of 640 samples).
STREAM_QUALITY = "HQ"


def engine_frames(frame: TTSAudioRawFrame) -> int:
    """How many engine frames ``frame`` completes (0: none, or not a reply's audio)."""
    return frame.metadata.get(FRAMES_TAG, 0)


async def resampled(
    turn: Any, in_rate: int, out_rate: int, context_id: str
) -> AsyncIterator[tuple[Any, TTSAudioRawFrame | None]]:
    """Yields ``(chunk, audio)`` for each engine frame of ``turn``, ``audio`` its PCM at
    ``out_rate`` as an audio frame of ``context_id`` (None: the resampler holds all of it),
    then ``(None, tail)``: what the resampler still held at the turn's end (None: nothing).

    Each audio frame counts the engine frames it completes (``engine_frames``): 1 per frame,
    a frame with no audio out (the resampler holding it) counted with the next audio, the tail
    included. A turn that fails yields the tail too before its error: every frame read goes
    out, as the service counts them heard. So a reply played
    to the end was heard as exactly the frames the engine made, whatever the two rates (the
    heard clock plays frame ``k`` out at ``(k + 1) * FRAME_SECONDS``: the resampled stream
    keeps the engine's time line, only its chunk edges move).

    One resampler per reply: its filter state must not leak across an interruption, and
    within a reply it is never cleared (pipecat's default clears it after 0.2 s without
    audio, dropping the samples it holds: a reply that waits for LLM text, or a busy host,
    would lose audio and click).
    """
    resampler = (
        create_stream_resampler(clear_after_secs=None, quality=STREAM_QUALITY)
        if out_rate != in_rate
        else None
    )
    owed = 0  # engine frames not counted by an audio frame yet

    def frame(audio: bytes) -> TTSAudioRawFrame | None:
        nonlocal owed
        if not audio:
            return None
        out = TTSAudioRawFrame(audio, out_rate, 1, context_id=context_id)
        out.metadata[FRAMES_TAG], owed = owed, 0
        return out

    try:
        async for chunk in turn:
            audio = chunk.pcm
            if resampler is not None:
                audio = await resampler.resample(audio, in_rate, out_rate)
            owed += 1
            yield chunk, frame(audio)
    except MossError:
        # The turn failed (its server lost, most often): the frames read so far are kept as
        # heard, so the audio the resampler holds of them goes out before the error does.
        if resampler is not None and (tail := frame(await resampler.flush())) is not None:
            yield None, tail
        raise
    if resampler is not None:
        yield None, frame(await resampler.flush())
