"""Seeded conversation scripts, run the same way on a local ``Session`` and a ``RemoteSession``.

A script is a list of steps: ("say", text, pieces, interrupt) or ("user", ids, frames). ``text``
is a list of token ids (pushed with ``push_ids``) or a string (pushed with ``push_text``);
``interrupt`` is None or (after_chunks, heard_frames) with heard < after, so the cut is
independent of how far generation ran ahead.
"""

from __future__ import annotations

import random

import torch

WORDS = "hello there how are you today fine thanks the weather is nice we could go out".split()


def make_script(seed: int, meta: dict, turns: int = 3) -> list[tuple]:
    """``meta``: the fixture set's realtime golden.json (text id range, codebooks, audio pad)."""
    rnd = random.Random(seed)
    lo, hi = meta["text_ids_drawn_from"]
    rvq, pad = meta["audio"]["channels"], meta["audio"]["audio_pad"]
    steps: list[tuple] = []
    for t in range(turns):
        if t:
            ids = [rnd.randrange(lo, hi) for _ in range(rnd.randint(2, 8))]
            frames = torch.tensor(
                [[rnd.randrange(pad) for _ in range(rvq)] for _ in range(rnd.randint(2, 9))]
            )
            steps.append(("user", ids, frames))
        if rnd.random() < 0.5:
            text = [rnd.randrange(lo, hi) for _ in range(rnd.randint(3, 25))]
        else:
            text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 12))) + "."
        pieces = []
        i = 0
        while i < len(text):
            n = rnd.randint(1, 6)
            pieces.append(text[i : i + n])
            i += n
        interrupt = None
        if rnd.random() < 0.6:
            after = rnd.randint(2, 10)
            interrupt = (after, rnd.randint(0, after - 1))
        steps.append(("say", text, pieces, interrupt))
    return steps


async def run_script(session, script, max_frames: int = 24) -> list[tuple]:
    """Runs a script; returns per assistant turn (codes [n, rvq], stop, heard, pcm sizes)."""
    out = []
    for step in script:
        if step[0] == "user":
            await session.add_user_turn(step[1], step[2])
            continue
        _, _text, pieces, interrupt = step
        turn = await session.start_turn(max_frames=max_frames)
        for piece in pieces:
            if isinstance(piece, str):
                turn.push_text(piece)
            else:
                turn.push_ids(piece)
        turn.end_text()
        chunks = []
        cut = None
        async for chunk in turn:
            chunks.append(chunk)
            if interrupt is not None and len(chunks) == interrupt[0]:
                cut = await session.interrupt(interrupt[1])
                break
        summary = await turn.wait()
        if cut is not None:
            assert cut.stop == "interrupted" and cut.heard_frames == interrupt[1]
            summary = cut
        codes = torch.stack([c.codes for c in chunks]) if chunks else torch.zeros(0, 16)
        pcm = sorted({len(c.pcm) for c in chunks if c.pcm is not None})
        out.append((codes, summary.stop, summary.heard_frames, pcm))
    return out
