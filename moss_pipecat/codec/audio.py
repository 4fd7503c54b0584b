"""Audio in and out of the codec: input checks, mono downmix, resampling, int16 PCM.

Accepted waveform layouts (float samples, nominally in [-1, 1]; int16 is scaled by 1/32768):

* ``[S]``: one mono clip;
* ``[C, S]``: one clip with C channels (downmixed to mono by averaging);
* ``[B, C, S]``: a batch of equally long clips, each downmixed.

A 2-D input is always read as ``[channels, samples]``; more than ``MAX_CHANNELS`` channels is
rejected as a probable ``[samples, channels]`` mix-up.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from moss_pipecat import pcm
from moss_pipecat.errors import InvalidInputError

MAX_CHANNELS = 8
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000


def check_sample_rate(sample_rate: int | float) -> int:
    """Returns ``sample_rate`` as an int, or raises ``InvalidInputError``."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer)):
        raise InvalidInputError(f"sample_rate must be a number, got {type(sample_rate).__name__}")
    if not math.isfinite(sample_rate) or sample_rate != int(sample_rate):
        raise InvalidInputError(f"sample_rate must be a whole number of Hz, got {sample_rate}")
    sr = int(sample_rate)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise InvalidInputError(
            f"sample_rate {sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    return sr


def to_mono_batch(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Checks a waveform and returns it as float32 mono ``[B, S]`` (same device).

    Raises:
        InvalidInputError: wrong type, rank or channel layout, empty, or non-finite samples.
    """
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(np.ascontiguousarray(wav))
    if not isinstance(wav, torch.Tensor):
        raise InvalidInputError(f"audio must be a torch.Tensor or numpy array, got {type(wav)}")
    if wav.dtype == torch.int16:
        wav = wav.float() / 32768.0
    elif not wav.is_floating_point():
        raise InvalidInputError(f"audio must be float (or int16) samples, got {wav.dtype}")
    if wav.dim() == 1:
        wav = wav[None, None]  # [S] -> [1, 1, S]
    elif wav.dim() == 2:
        wav = wav[None]  # [C, S] -> [1, C, S]
    elif wav.dim() != 3:
        raise InvalidInputError(
            f"audio must be [samples], [channels, samples] or [batch, channels, samples]; "
            f"got shape {tuple(wav.shape)}"
        )
    b, c, s = wav.shape
    if b == 0 or c == 0 or s == 0:
        raise InvalidInputError(f"audio is empty (shape {tuple(wav.shape)})")
    if c > MAX_CHANNELS:
        raise InvalidInputError(
            f"unsupported channel layout: {c} channels (at most {MAX_CHANNELS}); "
            f"audio must be channels-first, e.g. [channels, samples], got {tuple(wav.shape)}"
        )
    wav = wav.float()
    if not torch.isfinite(wav).all():
        raise InvalidInputError("audio contains NaN or infinite samples")
    return wav.mean(dim=1) if c > 1 else wav[:, 0]  # [B, S]


def resample(wav: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Resamples ``[B, S]`` float32 with soxr (HQ); a no-op when the rates match."""
    if from_rate == to_rate:
        return wav
    x = wav.detach().cpu().numpy().T  # [S, B]: soxr treats columns as channels
    y = pcm.resample(x, from_rate, to_rate)
    if y.shape[0] == 0:
        raise InvalidInputError(
            f"{wav.shape[-1]} samples at {from_rate} Hz are too short to resample to {to_rate} Hz"
        )
    return torch.from_numpy(np.ascontiguousarray(y.T)).to(wav.device)


def pcm16(wav: torch.Tensor) -> torch.Tensor:
    """Float samples -> int16 tensor (clamped to [-1, 1], scaled by 32767, rounded)."""
    return (wav.float().clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)


def pcm16_bytes(wav: torch.Tensor) -> bytes:
    """One stream's samples (any shape, flattened) as little-endian int16 PCM bytes."""
    return pcm16(wav).flatten().cpu().numpy().astype("<i2", copy=False).tobytes()
