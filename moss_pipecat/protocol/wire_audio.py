"""Binary audio frames of the wire protocol (server -> client): one generated frame each.

``AUDIO_HEADER`` (magic ``b"MSA1"``, turn_id u32, index u32, n u16), then n codes u16, then
the frame's PCM (int16 LE, empty without a codec); all little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from moss_pipecat.protocol.errors import ProtocolError

AUDIO_MAGIC = b"MSA1"
AUDIO_HEADER = struct.Struct("<4sIIH")  # magic, turn_id, index, number of codes


def pack_audio(turn_id: int, index: int, codes: Sequence[int], pcm: bytes | None) -> bytes:
    """One generated frame as a binary message (header, uint16 codes, PCM)."""
    n = len(codes)
    return (
        AUDIO_HEADER.pack(AUDIO_MAGIC, turn_id, index, n)
        + struct.pack(f"<{n}H", *codes)
        + (pcm or b"")
    )


def unpack_audio(data: bytes) -> tuple[int, int, list[int], bytes | None]:
    """Inverse of ``pack_audio``: (turn_id, index, codes, pcm or None).

    Raises:
        ProtocolError: not an audio frame.
    """
    if len(data) < AUDIO_HEADER.size:
        raise ProtocolError("binary message too short for an audio frame")
    magic, turn_id, index, n = AUDIO_HEADER.unpack_from(data)
    end = AUDIO_HEADER.size + 2 * n
    if magic != AUDIO_MAGIC or len(data) < end:
        raise ProtocolError("not an audio frame")
    codes = list(struct.unpack_from(f"<{n}H", data, AUDIO_HEADER.size))
    pcm = data[end:]
    return turn_id, index, codes, (pcm or None)
