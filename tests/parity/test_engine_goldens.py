"""The reference session's greedy goldens, reproduced through the engine's session API."""

from __future__ import annotations

import torch

from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams


def _greedy(meta) -> SamplingParams:
    d = meta["decoding"]
    return SamplingParams.greedy_decoding(d["repetition_penalty"], d["repetition_window"])


def _voice(golden, meta):
    return golden["session.ref_codes"] if meta["conversation"]["ref_frames"] else None


def _check_turn(chunks, summary, golden, meta, k: int) -> None:
    t = meta["turns"][f"turn{k}"]
    frames = golden[f"turn{k}.frames"]
    assert summary.stop == t["stop"]
    # Chunks carry audio frames only: an EOS frame ends the turn without audio.
    n_audio = t["n_frames"] - (1 if t["stop"] == "eos" else 0)
    assert [c.index for c in chunks] == list(range(n_audio))
    assert torch.equal(torch.stack([c.codes for c in chunks]), frames[:n_audio])
    assert summary.audio_frames == summary.heard_frames == n_audio


async def test_session_api_reproduces_both_turns_on_the_kept_cache(
    make_engine, realtime_golden, realtime_meta
):
    g, meta = realtime_golden, realtime_meta
    engine = make_engine(max_sessions=2)
    session = engine.create_session(voice=_voice(g, meta), sampling=_greedy(meta))

    turn = await session.start_turn(max_frames=meta["turns"]["turn1"]["max_frames"])
    text1 = g["session.text1"].tolist()
    for i in range(0, len(text1), 5):  # text arrives in pieces, as from an LLM
        turn.push_ids(text1[i : i + 5])
    turn.end_text()
    chunks = [c async for c in turn]
    _check_turn(chunks, turn.summary, g, meta, 1)

    await session.add_user_turn(g["session.user_text"].tolist(), g["session.user_codes"])
    rows_before_turn2 = engine.stats["prefill_rows"]
    turn = await session.start_turn(max_frames=meta["turns"]["turn2"]["max_frames"])
    turn.push_ids(g["session.text2"].tolist())
    turn.end_text()
    chunks = [c async for c in turn]
    _check_turn(chunks, turn.summary, g, meta, 2)

    # Turn 2 appended only its own prompt: the history was never re-fed.
    assert engine.stats["prefill_rows"] - rows_before_turn2 == g["turn2.prompt"].shape[0]
    snap = await session.snapshot()
    n = g["session.rows"].shape[0]
    assert snap["cache_len"] == snap["device_cache_len"] == n
    assert torch.equal(snap["rows"][:n], g["session.rows"])
    # ...and the conversation is closed in the training layout (turn 2's closing rows).
    closing = torch.tensor(meta["turns"]["turn2"]["closing_rows"])
    assert torch.equal(snap["rows"][n:], closing)
    await session.close()


def test_sync_wrapper_reproduces_turn1(make_engine, realtime_golden, realtime_meta):
    g, meta = realtime_golden, realtime_meta
    engine = make_engine(max_sessions=1)
    session = SyncSession(engine.create_session(voice=_voice(g, meta), sampling=_greedy(meta)))
    chunks, summary = session.say(
        ids=g["session.text1"].tolist(), max_frames=meta["turns"]["turn1"]["max_frames"]
    )
    _check_turn(chunks, summary, g, meta, 1)
    session.close()
