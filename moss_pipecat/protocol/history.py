"""The conversation's history on the wire (issue #24): the server's ``history`` deltas, which a
client keeps as its journal, and the client's ``restore``, which gives a server that lost the
conversation its history back.

A turn travels as a record (``engine.records.TurnRecord``): role, text ids, ``lead`` (an
assistant turn's prompt rows) and codec frames. In ``history`` the frames are base64 of
little-endian uint16 ``[frames, rvq]``. A ``restore`` sends everything in one binary frame
after its header: a table of ``turns`` rows (role 0 user / 1 assistant, lead, text ids, frames;
uint32 each), then every turn's text ids (uint32), then the voice's frames and every turn's
frames (uint16, ``[frames, rvq]``), all little-endian; the sizes add up exactly or the
message is refused.
"""

from __future__ import annotations

import base64

import numpy as np

from moss_pipecat.protocol.client_messages import MessageError, Restore

ROLE_CODES = ("user", "assistant")


def codes_b64(frames: np.ndarray) -> str:
    """Codec frames [n, rvq] as base64 of little-endian uint16."""
    return base64.b64encode(np.ascontiguousarray(frames, dtype="<u2").tobytes()).decode()


def codes_from_b64(text: str, rvq: int) -> np.ndarray:
    """``codes_b64`` back: [n, rvq] uint16."""
    data = base64.b64decode(text)
    if len(data) % (2 * rvq):
        raise ValueError(f"codes are not a whole number of {rvq}-code frames")
    return np.frombuffer(data, dtype="<u2").reshape(-1, rvq)


Record = tuple[str, int, np.ndarray, np.ndarray]  # role, lead, ids [n] uint32, frames [A, rvq]


def pack_restore(voice: np.ndarray | None, turns: list[Record]) -> tuple[dict, bytes]:
    """A ``restore``'s fields (``turns``, ``voice_frames``, ``bytes``) and its binary frame."""
    table = np.array(
        [
            (ROLE_CODES.index(role), lead, len(ids), len(frames))
            for role, lead, ids, frames in turns
        ],
        dtype="<u4",
    ).reshape(-1, 4)
    ids = [np.asarray(i, dtype="<u4") for _, _, i, _ in turns]
    codes = ([] if voice is None else [voice]) + [f for *_, f in turns]
    parts = [table.tobytes(), *(i.tobytes() for i in ids)]
    parts += [np.ascontiguousarray(c, dtype="<u2").tobytes() for c in codes]
    data = b"".join(parts)
    voice_frames = None if voice is None or len(voice) == 0 else len(voice)
    return {"turns": len(turns), "voice_frames": voice_frames, "bytes": len(data)}, data


def unpack_restore(msg: Restore, data: bytes, rvq: int) -> tuple[np.ndarray | None, list[Record]]:
    """A ``restore``'s binary frame back: (voice [R, rvq] or None, records).

    Raises:
        MessageError: ``bad_message`` when the sizes do not add up or a role is unknown.
    """

    def refuse(why: str) -> MessageError:
        return MessageError("bad_message", f"restore: {why}", msg.req)

    n = msg.turns
    if len(data) < 16 * n:
        raise refuse("the frame is shorter than its turn table")
    table = np.frombuffer(data, dtype="<u4", count=4 * n).reshape(n, 4).astype(np.int64)
    if n and int(table[:, 0].max()) >= len(ROLE_CODES):
        raise refuse("a turn's role is neither 0 (user) nor 1 (assistant)")
    n_ids, n_frames = int(table[:, 2].sum()), int(table[:, 3].sum())
    voice_frames = msg.voice_frames or 0
    want = 16 * n + 4 * n_ids + 2 * rvq * (voice_frames + n_frames)
    if len(data) != want:
        raise refuse(f"{len(data)} bytes where the table says {want}")
    ids = np.frombuffer(data, dtype="<u4", count=n_ids, offset=16 * n).astype(np.int64)
    codes = np.frombuffer(data, dtype="<u2", offset=16 * n + 4 * n_ids).astype(np.int64)
    codes = codes.reshape(-1, rvq)  # [R + sum A, rvq]
    voice = codes[:voice_frames] if voice_frames else None
    records: list[Record] = []
    i, f = 0, voice_frames
    for role, lead, k, a in table.tolist():
        records.append((ROLE_CODES[role], lead, ids[i : i + k], codes[f : f + a]))
        i, f = i + k, f + a
    return voice, records
