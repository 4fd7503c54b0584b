"""Reference computations for engine tests: a fresh model run over a conversation's rows."""

from __future__ import annotations

import torch

from moss_pipecat.model import SamplingParams, generate_turn


def random_text(gen: torch.Generator, meta: dict, n: int) -> list[int]:
    lo, hi = meta["text_ids_drawn_from"]
    return torch.randint(lo, hi, (n,), generator=gen).tolist()


def random_frames(gen: torch.Generator, n: int, meta: dict) -> torch.Tensor:
    """[n, rvq] random audio codes (below the audio pad) of the set whose golden.json is meta."""
    audio = meta["audio"]
    return torch.randint(0, audio["audio_pad"], (n, audio["channels"]), generator=gen)


def fresh_reference(model, layout, rows, summary, text_ids, max_frames):
    """Regenerates the conversation's last assistant turn on a fresh cache.

    ``rows`` is the session's whole history after the turn ended; the turn's steps and
    closing rows are cut off again (they follow from how it stopped), the rest is prefilled
    at once and the turn generated greedily by ``generate_turn``.
    """
    a = summary.audio_frames
    steps, closing = (a, 1) if summary.stop == "eos" else (a - 1, 2)
    prompt = rows[: rows.shape[0] - steps - closing]
    lead = layout.lead(len(text_ids))
    cache = model.new_cache(1, prompt.shape[0] + max_frames + 4)
    return generate_turn(
        model, cache, 0, prompt, text_ids[lead:], max_frames, SamplingParams.greedy_decoding()
    )


def assert_matches_fresh(model, layout, rows, chunks, summary, text_ids, max_frames):
    ref = fresh_reference(model, layout, rows, summary, text_ids, max_frames)
    assert ref.stop == summary.stop
    n_audio = ref.frames.shape[0] - (1 if ref.stop == "eos" else 0)
    assert summary.audio_frames == n_audio
    got = torch.stack([c.codes for c in chunks]) if chunks else ref.frames[:0]
    assert torch.equal(got, ref.frames[:n_audio])
