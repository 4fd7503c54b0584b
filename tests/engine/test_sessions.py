"""Engine behaviour: multi-turn history, interruption rollback, context trimming, batching."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import torch

from moss_pipecat.engine.session import SyncSession
from moss_pipecat.model import SamplingParams

from .helpers import assert_matches_fresh, random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()


async def _speak(session, ids, max_frames=None, piece=4, pause=0.0, min_frames=None):
    turn = await session.start_turn(max_frames=max_frames, min_frames=min_frames)
    for i in range(0, len(ids), piece):
        turn.push_ids(ids[i : i + piece])
        if pause:
            await asyncio.sleep(pause)
    turn.end_text()
    chunks = [c async for c in turn]
    return chunks, turn.summary


async def test_multi_turn_with_user_turns_equals_recomputing_from_scratch(
    make_engine, tiny_model, golden_layout, realtime_meta, voice_codes
):
    engine = make_engine()
    session = engine.create_session(voice=voice_codes, sampling=GREEDY)
    gen = torch.Generator().manual_seed(11)
    for turn_no, n_text in enumerate([20, 7, 15]):
        if turn_no:
            await session.add_user_turn(
                random_text(gen, realtime_meta, 9), random_frames(gen, 8, realtime_meta)
            )
        text = random_text(gen, realtime_meta, n_text)
        chunks, summary = await _speak(session, text, max_frames=30)
        assert summary.stop in ("eos", "max_frames")
        snap = await session.snapshot()
        assert snap["cache_len"] == snap["device_cache_len"]
        assert_matches_fresh(tiny_model, golden_layout, snap["rows"], chunks, summary, text, 30)
    assert [r for r, _ in snap["turns"]] == ["assistant", "user"] * 2 + ["assistant"]


@pytest.mark.parametrize("heard", [0, 1, 4])
async def test_interrupt_mid_turn_then_new_turn_equals_fresh_run(
    make_engine, tiny_model, golden_layout, realtime_golden, realtime_meta, voice_codes, heard
):
    g, layout = realtime_golden, golden_layout
    engine = make_engine()
    session = engine.create_session(voice=voice_codes, sampling=GREEDY)
    snap0 = await session.snapshot()
    text = random_text(torch.Generator().manual_seed(2), realtime_meta, layout.delay + 6)
    lead = layout.lead(len(text))
    # No end_text: generation stalls once the known text is fed; eos_after_text keeps the
    # model from ending the turn before that, wherever this fixture set's model would stop.
    turn = await session.start_turn(eos_after_text=True)
    turn.push_ids(text)
    stall_at = 1 + len(text) - lead
    chunks = []
    async for c in turn:
        chunks.append(c)
        if len(chunks) == stall_at:
            break
    assert turn.summary is None
    summary = await session.interrupt(heard)
    assert summary.stop == "interrupted" and summary.heard_frames == heard
    assert await turn.wait() is not None and turn.summary.stop == "interrupted"

    snap = await session.snapshot()
    frames = torch.stack([c.codes for c in chunks])
    expected = snap0["rows"]
    if heard:
        header = layout.header("assistant", first=True)
        expected = torch.cat(
            (expected, layout.turn_rows(header, text[: lead + heard + 1], frames[:heard]))
        )
    assert torch.equal(snap["rows"], expected)
    assert snap["cache_len"] <= expected.shape[0]

    # The conversation goes on from what was heard.
    await session.add_user_turn(g["session.user_text"].tolist(), g["session.user_codes"])
    text2 = g["session.text2"].tolist()
    chunks2, summary2 = await _speak(session, text2, max_frames=20)
    snap = await session.snapshot()
    assert_matches_fresh(tiny_model, layout, snap["rows"], chunks2, summary2, text2, 20)


async def test_interrupt_after_generation_finished_rolls_back_to_heard(
    make_engine, tiny_model, golden_layout, realtime_golden
):
    """The turn is fully generated but still playing when the user barges in."""
    g, layout = realtime_golden, golden_layout
    engine = make_engine()
    session = engine.create_session(sampling=GREEDY)
    text = g["session.text1"].tolist()
    chunks, summary = await _speak(session, text, max_frames=32, min_frames=8)
    assert summary.audio_frames >= 8
    cut = await session.interrupt(3)
    assert cut.heard_frames == 3 and cut.audio_frames == summary.audio_frames
    assert await session.interrupt(3) is None  # nothing left to cut
    snap = await session.snapshot()
    header = layout.header("assistant", first=True)
    frames = torch.stack([c.codes for c in chunks])
    lead = layout.lead(len(text))
    expected_turn = layout.turn_rows(header, text[: lead + 4], frames[:3])
    assert torch.equal(snap["rows"][snap["system_rows"] :], expected_turn)
    chunks2, summary2 = await _speak(session, g["session.text2"].tolist(), max_frames=20)
    snap = await session.snapshot()
    assert_matches_fresh(
        tiny_model, layout, snap["rows"], chunks2, summary2, g["session.text2"].tolist(), 20
    )


async def test_a_cut_naming_its_turn_cuts_only_that_turn(make_engine, realtime_golden):
    """``Interrupt.turn_id``: a cut that names a turn cuts it while it is open or just
    finished, and nothing once it was cut away or another turn came after it (a cut sent
    again after its reply was lost must not take the turn before it)."""
    g = realtime_golden
    session = make_engine().create_session(sampling=GREEDY)
    first = (await _speak(session, g["session.text1"].tolist(), max_frames=8, min_frames=8))[1]
    rows = (await session.snapshot())["rows"]
    turn = await session.start_turn(20, min_frames=20)
    turn.push_ids(g["session.text2"].tolist())
    turn.end_text()
    assert await session.interrupt(0, turn_id=first.turn_id) is None  # not the open turn
    cut = await session.interrupt(0, turn_id=turn.turn_id)
    assert cut.turn_id == turn.turn_id and cut.heard_frames == 0
    # The cut turn is gone and the first is the last again: named, the cut leaves it alone.
    assert await session.interrupt(0, turn_id=turn.turn_id) is None
    assert torch.equal((await session.snapshot())["rows"], rows)
    cut = await session.interrupt(2, turn_id=first.turn_id)  # the just finished turn, named
    assert cut.turn_id == first.turn_id and cut.heard_frames == 2


async def test_long_conversation_stays_in_budget_and_keeps_the_voice(
    make_engine, tiny_model, golden_layout, realtime_meta, voice_codes
):
    engine = make_engine(max_context=320, context_budget=300, turn_reserve=80)
    session = engine.create_session(voice=voice_codes, sampling=GREEDY)
    system = (await session.snapshot())["rows"]
    gen = torch.Generator().manual_seed(5)
    trimmed = False
    for i in range(10):
        await session.add_user_turn(
            random_text(gen, realtime_meta, 6), random_frames(gen, 10, realtime_meta)
        )
        text = random_text(gen, realtime_meta, 14)
        chunks, summary = await _speak(session, text, max_frames=25)
        snap = await session.snapshot()
        trimmed |= len(snap["turns"]) < 2 * (i + 1)  # 2 turns were added per round
        assert snap["cache_len"] <= 320 and snap["rows"].shape[0] <= 320
        assert torch.equal(snap["rows"][: system.shape[0]], system)  # system + voice kept
        first_header = golden_layout.header(snap["turns"][0][0], first=True)
        n = system.shape[0]
        assert torch.equal(snap["rows"][n : n + first_header.shape[0]], first_header)
        assert_matches_fresh(tiny_model, golden_layout, snap["rows"], chunks, summary, text, 25)
    assert trimmed, "the budget never forced a trim: the test does not exercise it"


@pytest.fixture(scope="module")
def runs_alone() -> dict:
    """The eight scripts' runs alone on the plain eager path: the same reference for both
    cases of ``test_eight_concurrent_sessions_equal_each_alone`` (the same scripts, engines and
    greedy sampling), made by whichever runs first rather than twice."""
    return {}


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed-step"])
async def test_eight_concurrent_sessions_equal_each_alone(
    make_engine, realtime_meta, tiny_codec, graphed, runs_alone
):
    """Batched (and, with graphed=True, padded static-buffer / CUDA-graph) decode steps give
    exactly the frames each session gets alone on the plain eager path, and the same audio
    (batched codec steps; graphed: the padded codec step)."""
    gen = torch.Generator().manual_seed(3)
    scripts = []
    for _ in range(8):
        scripts.append(
            [
                random_text(gen, realtime_meta, int(torch.randint(3, 30, (), generator=gen))),
                (random_text(gen, realtime_meta, 5), random_frames(gen, 7, realtime_meta)),
                random_text(gen, realtime_meta, int(torch.randint(3, 30, (), generator=gen))),
            ]
        )

    async def run(session, script, rnd: random.Random | None):
        out = []
        for step in script:
            if isinstance(step, tuple):
                await session.add_user_turn(*step)
                continue
            piece = rnd.randint(1, 6) if rnd else len(step)
            pause = rnd.choice([0, 0, 0.001, 0.003]) if rnd else 0
            # min_frames: replies overlap in time (batched steps), whatever the random model.
            chunks, summary = await _speak(session, step, 24, piece, pause, min_frames=4)
            pcm = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
            codes = torch.stack([c.codes for c in chunks]) if chunks else torch.zeros(0, 16)
            out.append((codes, summary.stop, pcm))
        return out

    if "runs" not in runs_alone:
        made = []
        for script in scripts:
            engine = make_engine(max_sessions=1, graphed_decode=False, codec=tiny_codec)
            made.append(await run(engine.create_session(sampling=GREEDY), script, None))
        runs_alone.update(scripts=scripts, runs=made)  # only a whole reference is kept
    # The reference is for these very scripts (texts, and user turns' texts and frames).
    for ours, theirs in zip(runs_alone["scripts"], scripts, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            assert a[0] == b[0] and torch.equal(a[1], b[1]) if isinstance(a, tuple) else a == b
    alone = runs_alone["runs"]
    engine = make_engine(max_sessions=8, graphed_decode=graphed, codec=tiny_codec)
    assert engine.graphed == graphed and not engine.uses_cuda_graphs
    if graphed:  # every bucket prepared up front (captured on CUDA) changes nothing
        n_kv = len(engine.core.runner.decode_graphs[0].kv_buckets)
        # batch 1/2/4/8 for the decode step (x kv buckets), the first frame and the codec,
        # and for prefill chunks (x 3 row buckets x kv buckets)
        assert engine.capture_graphs() == 4 * n_kv + 4 + 4 + 4 * 3 * n_kv
    sessions = [engine.create_session(sampling=GREEDY) for _ in scripts]
    together = await asyncio.gather(
        *(
            run(s, sc, random.Random(i))
            for i, (s, sc) in enumerate(zip(sessions, scripts, strict=True))
        )
    )
    for a, b in zip(alone, together, strict=True):
        assert [stop for _, stop, _ in a] == [stop for _, stop, _ in b]
        for (fa, _, pa), (fb, _, pb) in zip(a, b, strict=True):
            assert torch.equal(fa, fb)
            # float32 batches of different sizes may round one int16 sample differently
            assert len(pa) == len(pb)
            assert len(pa) == 0 or np.abs(pa.astype(int) - pb.astype(int)).max() <= 1
    assert engine.stats["decode_steps"] > engine.stats["ticks"]  # steps really were batched


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_seeded_sampling_is_independent_of_batch_company(make_engine, realtime_golden, graphed):
    """The same seeded session alone and in a batch of 8 makes the same frames (its noise is
    keyed by its seed and frame counter, made inside the step: eager and graphed)."""
    text = realtime_golden["session.text1"].tolist()

    def run(n_other: int):
        engine = make_engine(max_sessions=8, graphed_decode=graphed)
        me = SyncSession(engine.create_session(sampling=SamplingParams(), seed=1234))
        others = [
            SyncSession(engine.create_session(sampling=SamplingParams(), seed=i))
            for i in range(n_other)
        ]
        turns = [o.start_turn(max_frames=20, min_frames=20) for o in others]
        for t in turns:
            t.push_ids(text[::-1])
            t.end_text()
        chunks, _ = me.say(ids=text, max_frames=20, min_frames=20)
        for t in turns:
            t.wait_sync()
        return torch.stack([c.codes for c in chunks])

    assert torch.equal(run(0), run(7))


def test_lookahead_paces_generation_to_real_time(make_engine, realtime_golden):
    import time

    engine = make_engine(lookahead_s=0.24)  # 3 frames ahead of real time
    session = SyncSession(engine.create_session(sampling=GREEDY))
    text = realtime_golden["session.text2"].tolist()
    turn = session.start_turn(max_frames=15, min_frames=15)  # 15 frames, wherever EOS would be
    turn.push_ids(text)
    turn.end_text()
    first = None
    n = 0
    for _ in turn:
        first = first or time.monotonic()
        n += 1
    elapsed = time.monotonic() - first
    assert n == 15
    # Frames beyond the lookahead are released at most one per 80 ms of real time.
    assert elapsed >= (n - 1 - 3) * 0.08 - 0.02
