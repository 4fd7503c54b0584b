"""Audio uploads (``user_turn``, ``voice``): the binary frame that follows a header, checked
against the limits and turned into codec frames (a PCM encode runs on its own thread)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from moss_pipecat import protocol as P
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.pcm import pcm16_to_float
from moss_pipecat.server.config import ServerLimits
from moss_pipecat.server.connection import Connection


class AudioUploads:
    """Receives and decodes a hub's audio uploads.

    Args:
        engine: its layout (codes per frame) and codec (PCM encodes).
        limits: upload sizes, audio length, sample rates, the upload timeout.
    """

    def __init__(self, engine: MossEngine, limits: ServerLimits) -> None:
        self.engine = engine
        self.limits = limits
        # Codec encodes run here: off the event loop and off the engine thread.
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moss-encode")

    def shutdown(self) -> None:
        """Stops the encode thread (an encode under way finishes on its own)."""
        self._encoder.shutdown(wait=False)

    async def receive(self, conn: Connection, n_bytes: int, limit: int) -> bytes:
        """Receives the binary frame announced by an upload header.

        The frame is always consumed (even when it is refused) so the stream stays in step; a
        text message in its place is not: it is the next message served.
        """
        try:
            data = await asyncio.wait_for(conn.recv(), self.limits.upload_timeout_s)
        except TimeoutError:
            raise P.MessageError("bad_message", "upload data did not follow its header") from None
        if isinstance(data, str):
            conn.unread = data
            raise P.MessageError("bad_message", "upload data did not follow its header")
        if len(data) != n_bytes:
            raise P.MessageError("bad_message", f"expected a binary frame of {n_bytes} bytes")
        if n_bytes > limit:
            raise P.MessageError("too_large", f"upload of {n_bytes} bytes exceeds {limit}")
        return data

    def _check_rate(self, sample_rate: int | None) -> int:
        lo, hi = self.limits.min_sample_rate, self.limits.max_sample_rate
        if sample_rate is None or not lo <= sample_rate <= hi:
            raise InvalidInputError(f"sample_rate must be in [{lo}, {hi}], got {sample_rate}")
        return sample_rate

    async def decode(self, conn: Connection, fmt: str, n: int, rate: int | None) -> torch.Tensor:
        """Audio upload -> codec frames [T, rvq]."""
        rvq = self.engine.layout.rvq
        if fmt == "codes":
            data = await self.receive(conn, n, self.limits.max_code_bytes(rvq))
            if len(data) % (2 * rvq):
                raise InvalidInputError(f"codes upload is not a whole number of {rvq}-code frames")
            codes = np.frombuffer(data, dtype="<u2").astype(np.int64).reshape(-1, rvq)
            return torch.from_numpy(codes)  # [T, rvq]
        data = await self.receive(conn, n, self.limits.max_pcm_bytes)
        if n % 2:
            raise P.MessageError("bad_message", "pcm16 upload has an odd number of bytes")
        rate = self._check_rate(rate)
        if n / 2 / rate > self.limits.max_audio_seconds:
            raise InvalidInputError(f"audio longer than {self.limits.max_audio_seconds} s")
        codec = self.engine.codec
        if codec is None:
            raise InvalidInputError("this server has no codec: upload codes instead of PCM")
        wav = torch.from_numpy(pcm16_to_float(data))

        def encode() -> torch.Tensor:
            with torch.inference_mode():
                return codec.encode_frames(wav, rate, rvq).cpu()

        return await asyncio.get_running_loop().run_in_executor(self._encoder, encode)
