"""Turn helpers the server tests share: a turn with all its text in, read in part or whole."""

from __future__ import annotations

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
