"""16-bit PCM bytes and float samples: the one conversion used everywhere (numpy only).

Int16 → float divides by 32768 (so -32768 maps to exactly -1.0); float → int16 clips to
[-1, 1], scales by 32767 and rounds (so +1.0 does not wrap). The torch twins for codec input
and output live in ``codec/audio.py`` and follow the same rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pcm16_to_float(pcm: bytes | bytearray | memoryview, num_channels: int = 1) -> np.ndarray:
    """Little-endian 16-bit PCM → float32 mono samples (channels averaged)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if num_channels > 1:
        samples = samples.reshape(-1, num_channels).mean(axis=1)  # [S*C] -> [S, C] -> [S]
    return samples


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples (nominally in [-1, 1]; NaN counts as silence) → little-endian 16-bit PCM."""
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    return np.round(x * 32767.0).astype("<i2").tobytes()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Float samples ``[S]`` or ``[S, channels]`` at ``to_rate`` (soxr, high quality).

    soxr is imported here: the model, codec and engine run without it.
    """
    if from_rate == to_rate:
        return samples
    try:
        import soxr
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"resampling {from_rate} Hz -> {to_rate} Hz needs the soxr package "
            "(pip install soxr), or pass audio at the expected sample rate",
            name="soxr",
        ) from e
    return soxr.resample(np.ascontiguousarray(samples), from_rate, to_rate, quality="HQ")


def load_pcm16(path: str | Path, sample_rate: int) -> bytes:
    """An audio file (any rate, any channels) as mono 16-bit PCM at ``sample_rate``."""
    import soundfile as sf

    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return float_to_pcm16(resample(wav.mean(axis=1), sr, sample_rate))
