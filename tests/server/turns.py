"""Turn helpers the server tests share: a turn with all its text in, read in part or whole."""

from __future__ import annotations

import torch

# Longer than any turn of these tests speaks: the turn runs to its max_frames.
LONG_TEXT = "This is a rather long sentence that keeps the model talking for a while. " * 3


async def speak(session, text: str, max_frames: int):
    """A turn with all of ``text`` pushed and ended, left streaming (nothing of it read)."""
    turn = await session.start_turn(max_frames=max_frames)
    turn.push_text(text)
    turn.end_text()
    return turn


async def say(session, text: str, max_frames: int) -> int:
    """A whole turn with ``text``: how many audio frames it made."""
    return (await (await speak(session, text, max_frames)).wait()).audio_frames


async def read_chunks(turn, n: int) -> list:
    """The turn's first ``n`` chunks (fewer if it ends first), leaving the rest unread."""
    chunks = []
    async for chunk in turn:
        chunks.append(chunk)
        if len(chunks) == n:
            break
    return chunks


async def back_to_back(session, local):
    """A call and its local twin say one reply each; then the call says a second one whole
    and opens a third behind it, 2 frames read (a back-to-back pair when a barge-in comes).
    Returns the call's (second, third) turns."""
    for s in (session, local):
        await say(s, "Hello there.", 3)
    first = await speak(session, "How are you?", 6)
    await first.wait()
    second = await session.start_turn(max_frames=30)
    second.push_text(LONG_TEXT)
    await read_chunks(second, 2)
    return first, second


async def same_next_reply(session, local) -> bool:
    """Whether the next reply of both (``And after.``, 5 frames) is the same, frame for frame."""
    replies = []
    for s in (session, local):
        turn = await speak(s, "And after.", 5)
        replies.append([chunk.codes async for chunk in turn])
    return all(torch.equal(torch.as_tensor(a), b) for a, b in zip(*replies, strict=True))
