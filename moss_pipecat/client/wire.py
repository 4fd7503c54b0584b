"""What the client puts on the wire: protocol messages built from keyword fields, and the
binary payloads (PCM16 audio, codec frames) of user turns and voices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from moss_pipecat import protocol as P
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.pcm import float_to_pcm16
from moss_pipecat.protocol.errors import ProtocolError
from moss_pipecat.protocol.wire_json import problems
from moss_pipecat.speech.sampling import SamplingParams


def _build(cls: type[P._Msg], **fields: Any) -> P._Msg:
    """A client message; fields left None are not sent. Values the protocol refuses are the
    caller's mistake: ``InvalidInputError`` (as the local engine raises), before sending."""
    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise InvalidInputError(f"invalid {cls.__name__} message: {problems(e)}") from None


def pcm16_from_audio(audio: Any) -> bytes:
    """Mono audio as little-endian int16 bytes.

    Accepts PCM16 bytes, an int16 array/tensor, or float samples in [-1, 1] (numpy/torch).
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
        if len(data) % 2:
            raise InvalidInputError("PCM16 audio must have an even number of bytes")
        return data
    if _is_tensor(audio):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.ndim == 2:  # [channels, samples] or [samples, channels]: average to mono
        a = a.mean(axis=0 if a.shape[0] < a.shape[1] else 1)
    if a.ndim != 1:
        raise InvalidInputError(f"audio must be 1-D (mono), got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype("<i2", copy=False).tobytes()
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidInputError(f"audio must be int16 or float samples, got {a.dtype}")
    return float_to_pcm16(a)


def user_audio_bytes(audio: Any, sample_rate: int, max_seconds: float | None) -> bytes:
    """A user turn's or voice's audio as PCM16 bytes, checked before it is sent (not empty,
    a positive int rate, at most the server's ``max_seconds`` if told)."""
    data = pcm16_from_audio(audio)
    if not data:
        raise InvalidInputError("empty audio")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if max_seconds is not None and len(data) / 2 / sample_rate > max_seconds:
        raise InvalidInputError(f"audio longer than the server's {max_seconds} s")
    return data


def codes_bytes(frames: Any, rvq: int = 16) -> tuple[bytes, int]:
    """Codec frames [T, rvq] as little-endian uint16 bytes; returns (bytes, T)."""
    if _is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    t = np.asarray(frames)
    if t.ndim != 2 or t.shape[1] != rvq:
        raise InvalidInputError(f"frames must be [frames, {rvq}], got {tuple(t.shape)}")
    if t.dtype.kind not in "iub":  # floats (and strings, objects) are not codes
        raise InvalidInputError(f"frames must be integer codes, got {t.dtype}")
    if t.size and (int(t.min()) < 0 or int(t.max()) > 65535):
        raise InvalidInputError("codes out of range")
    return t.astype("<u2").tobytes(), int(t.shape[0])


def codes_payload(frames: Any, rvq: int, name: str) -> bytes:
    """Codec frames [n >= 1, rvq] as the wire's bytes (the engine checks the codes)."""
    data, n = codes_bytes(frames, rvq)
    if n == 0:
        raise InvalidInputError(f"{name} need at least one audio frame")
    return data


def codes_array(codes: Sequence[int]) -> Any:
    """A frame's codes as an int64 tensor, as the local engine gives them; a numpy array where
    torch is not installed (the client's light install needs no torch)."""
    try:
        import torch
    except ImportError:
        return np.asarray(codes, dtype=np.int64)
    return torch.tensor(codes, dtype=torch.int64)


def _is_tensor(x: Any) -> bool:
    # Duck-typed so that a torch tensor is accepted without importing torch.
    return hasattr(x, "detach") and hasattr(x, "cpu")


def _wire_sampling(params: SamplingParams) -> P.Sampling:
    try:
        return P.Sampling.of(params)
    except ValidationError as e:
        raise InvalidInputError(f"sampling values out of the protocol's range: {e}") from None


def snapshot_dict(reply: P.Result, rvq: int) -> dict:
    """A ``snapshot`` result as the local engine's snapshot (``rows`` a tensor [n, 1 + rvq])."""
    if reply.snapshot is None:
        raise ProtocolError("the server's snapshot result has no snapshot")
    import torch  # snapshots are for tests and debugging, which have the full install

    snap = reply.snapshot.model_dump()
    snap["rows"] = torch.tensor(snap["rows"], dtype=torch.int64).reshape(-1, rvq + 1)
    snap["turns"] = [tuple(t) for t in snap["turns"]]
    snap["sampling"] = reply.snapshot.sampling.to_params()
    return snap
