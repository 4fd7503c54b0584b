"""Prompt prefix cache (issue #16.1): a conversation whose system block (system sentence +
voice) was prefilled before starts from a copy of that block's KV, and says exactly what one
prefilled from scratch says."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.prefix_cache import PrefixCache, PrefixKey
from moss_pipecat.engine.session import SyncSession
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import SamplingParams
from moss_pipecat.model.kv_cache import KVCache

from .helpers import assert_matches_fresh, random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()
SAMPLINGS = {"greedy": GREEDY, "seeded": SamplingParams()}
OFF = dict(prefix_cache_bytes=0)


# ---- the cache alone -------------------------------------------------------------------------


def _kv(n_slots: int = 3, max_len: int = 16, layers: int = 2, dtype=torch.float32) -> KVCache:
    cache = KVCache(layers, n_slots, max_len, n_kv_heads=2, head_dim=4, dtype=dtype)
    cache.k.normal_(generator=torch.Generator().manual_seed(0))
    cache.v.normal_(generator=torch.Generator().manual_seed(1))
    return cache


def _rows(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1000, (n, 17), generator=torch.Generator().manual_seed(seed))


def test_store_then_restore_copies_the_prefix_kv_into_another_slot():
    cache = _kv()
    per_pos = cache.nbytes_per_position()
    pc = PrefixCache(100 * per_pos)
    rows = _rows(5, 0)
    assert pc.restore(rows, cache, 1) is None and pc.misses == 1
    assert pc.store(rows, cache, 0) and len(pc) == 1 and pc.nbytes == 5 * per_pos
    before = cache.k[:, 1, :, 5:].clone()
    entry = pc.restore(rows, cache, 1)
    assert entry is not None and entry.hits == 1 and pc.hits == 1
    assert torch.equal(cache.k[:, 1, :, :5], cache.k[:, 0, :, :5])
    assert torch.equal(cache.v[:, 1, :, :5], cache.v[:, 0, :, :5])
    assert torch.equal(cache.k[:, 1, :, 5:], before)  # nothing past the prefix is touched
    # The entry is a copy: later writes to the source slot do not reach it.
    cache.k[:, 0] = 0
    pc.restore(rows, cache, 2)
    assert torch.equal(cache.k[:, 2, :, :5], cache.k[:, 1, :, :5])


def test_the_key_is_the_exact_rows():
    cache = _kv()
    pc = PrefixCache(1 << 20)
    rows = _rows(5, 0)
    pc.store(rows, cache, 0)
    other_voice = rows.clone()
    other_voice[3, 7] += 1  # one code of one voice frame
    assert other_voice not in pc and rows[:4] not in pc and rows.clone() in pc
    assert PrefixKey.of(rows) == PrefixKey.of(rows.clone())
    assert PrefixKey.of(rows) != PrefixKey.of(other_voice)
    assert pc.restore(other_voice, cache, 1) is None


def test_lru_eviction_by_bytes():
    cache = _kv(max_len=16)
    per_pos = cache.nbytes_per_position()
    pc = PrefixCache(10 * per_pos)  # room for 10 positions
    a, b, c = _rows(4, 1), _rows(4, 2), _rows(3, 3)
    assert pc.store(a, cache, 0) and pc.store(b, cache, 0)
    assert pc.restore(a, cache, 1) is not None  # a is now the most recently used
    assert pc.store(c, cache, 0)  # 4 + 4 + 3 > 10: the least recently used (b) goes
    assert a in pc and c in pc and b not in pc
    assert pc.evictions == 1 and pc.nbytes == 7 * per_pos <= pc.max_bytes
    assert pc.keys() == [PrefixKey.of(a), PrefixKey.of(c)]
    # An entry larger than the whole budget is never stored (and evicts nothing).
    assert not pc.store(_rows(11, 4), cache, 0) and len(pc) == 2
    pc.clear()
    assert len(pc) == 0 and pc.nbytes == 0


def test_zero_bytes_is_off():
    cache = _kv()
    pc = PrefixCache(0)
    assert not pc.enabled and not pc.store(_rows(3, 0), cache, 0) and len(pc) == 0
    with pytest.raises(InvalidInputError):
        PrefixCache(-1)
    with pytest.raises(InvalidInputError):
        EngineConfig(prefix_cache_bytes=-1)
    assert EngineConfig().prefix_cache_bytes > 0  # on by default


def test_a_cache_serves_one_models_kv_layout():
    pc = PrefixCache(1 << 20)
    rows = _rows(3, 0)
    pc.store(rows, _kv(layers=2), 0)
    with pytest.raises(InvalidInputError, match="one model"):
        pc.restore(rows, _kv(layers=3), 0)
    with pytest.raises(InvalidInputError, match="one model"):
        pc.store(_rows(3, 1), _kv(dtype=torch.float64), 0)


# ---- in the engine ---------------------------------------------------------------------------


def _script(meta: dict, seed: int) -> list:
    """A conversation: a turn, a user turn, a turn cut after 3 heard frames, a last turn."""
    delay = meta["delay_tokens_len"]
    gen = torch.Generator().manual_seed(seed)
    return [
        ("say", random_text(gen, meta, 16)),
        ("user", random_text(gen, meta, 6), random_frames(gen, 7, meta)),
        ("cut", random_text(gen, meta, delay + 6)),
        ("say", random_text(gen, meta, 9)),
    ]


async def _run(session, script) -> list:
    """Runs a script; returns [(codes, pcm, stop) per assistant turn, the final rows]."""
    out = []
    for step in script:
        if step[0] == "user":
            await session.add_user_turn(step[1], step[2])
            continue
        if step[0] == "say":
            turn = await session.start_turn(max_frames=20)
            turn.push_ids(step[1])
            turn.end_text()
            chunks = [c async for c in turn]
            stop = turn.summary.stop
        else:
            # The text never ends: generation stalls once it is all fed (EOS masked until
            # then), so exactly 1 + len - lead frames exist when the user barges in, having
            # heard 3 (a seeded session's noise counter must not depend on timing).
            text = step[1]
            turn = await session.start_turn(max_frames=40, eos_after_text=True)
            turn.push_ids(text)
            lead = session.engine.layout.lead(len(text))
            chunks = []
            async for c in turn:
                chunks.append(c)
                if len(chunks) == 1 + len(text) - lead:
                    break
            summary = await session.interrupt(3)
            assert summary.heard_frames == 3
            await turn.wait()
            chunks, stop = chunks[:3], summary.stop
        codes = torch.stack([c.codes for c in chunks]) if chunks else torch.zeros(0, 16)
        pcm = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
        out.append((codes, pcm, stop))
    snap = await session.snapshot()
    return [out, snap["rows"]]


def _assert_same(ref: list, got: list, pcm_tolerance: int = 0) -> None:
    (ref_turns, ref_rows), (got_turns, got_rows) = ref, got
    assert torch.equal(ref_rows, got_rows)
    for (c1, p1, s1), (c2, p2, s2) in zip(ref_turns, got_turns, strict=True):
        assert s1 == s2 and torch.equal(c1, c2)
        assert len(p1) == len(p2) and (len(p1) > 0) == (len(c1) > 0)
        if len(p1):
            assert np.abs(p1.astype(int) - p2.astype(int)).max() <= pcm_tolerance


CASES = [
    pytest.param(sampling, voice, False, id=f"{sampling}-{'voice' if voice else 'no-voice'}")
    for sampling in SAMPLINGS
    for voice in (True, False)
]
# The graphed step's pool (static buffers, one spare position per slot) takes the copy too.
CASES.append(pytest.param("seeded", True, True, id="seeded-voice-graphed"))


@pytest.mark.parametrize(("sampling", "with_voice", "graphed"), CASES)
async def test_a_cached_conversation_equals_one_prefilled_from_scratch(
    make_engine, tiny_codec, realtime_meta, voice_codes, sampling, with_voice, graphed
):
    voice = voice_codes if with_voice else None
    script = _script(realtime_meta, 4)
    params = SAMPLINGS[sampling]

    scratch = make_engine(codec=tiny_codec, **OFF)
    ref = await _run(scratch.create_session(voice=voice, sampling=params, seed=99), script)
    assert scratch.stats["prefix_hits"] == 0 and len(scratch.prefix_cache) == 0

    cached = make_engine(codec=tiny_codec, graphed_decode=graphed)
    assert cached.graphed == graphed
    warm = cached.create_session(voice=voice, sampling=params, seed=5)
    await _run(warm, _script(realtime_meta, 8))  # another conversation, the same prefix
    await warm.close()
    assert cached.stats["prefix_misses"] == 1 and len(cached.prefix_cache) == 1
    session = cached.create_session(voice=voice, sampling=params, seed=99)
    got = await _run(session, script)
    assert cached.stats["prefix_hits"] == 1 and cached.stats["prefix_misses"] == 1
    _assert_same(ref, got)
    # The copied prefix KV is the one a prefill makes (to float rounding of another shape).
    n = scratch.system_rows(voice).shape[0]
    for name in ("k", "v"):
        mine = getattr(cached.core.pools[0].cache, name)[
            :, cached.core.sessions[session.id].slot, :, :n
        ]
        theirs = getattr(scratch.core.pools[0].cache, name)[:, 0, :, :n]
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling", list(SAMPLINGS))
async def test_a_cached_conversation_in_company_equals_one_prefilled_alone(
    make_engine, tiny_codec, realtime_meta, voice_codes, sampling
):
    """The cached conversation shares its batches (prefills, steps, codec) with others that
    start at the same moment, some from the cache, some not (another voice)."""
    params = SAMPLINGS[sampling]
    scripts = [_script(realtime_meta, 20 + i) for i in range(4)]
    voices = [voice_codes, voice_codes, None, voice_codes.flip(0)]

    alone = []
    for script, voice in zip(scripts, voices, strict=True):
        engine = make_engine(codec=tiny_codec, max_sessions=1, **OFF)
        alone.append(
            await _run(engine.create_session(voice=voice, sampling=params, seed=7), script)
        )

    engine = make_engine(codec=tiny_codec, max_sessions=4)
    warm = engine.create_session(voice=voice_codes, sampling=params)  # the first voice only
    await _run(warm, _script(realtime_meta, 1)[:1])
    await warm.close()
    sessions = [engine.create_session(voice=v, sampling=params, seed=7) for v in voices]
    together = await asyncio.gather(*(_run(s, sc) for s, sc in zip(sessions, scripts, strict=True)))
    assert engine.stats["prefix_hits"] == 2  # the two sessions with the first voice
    assert engine.stats["prefix_misses"] == 1 + 2
    for a, b in zip(alone, together, strict=True):
        _assert_same(a, b, pcm_tolerance=1)  # batches of other sizes may round a sample


@pytest.mark.parametrize("with_voice", [True, False], ids=["voice", "no-voice"])
def test_a_cache_hit_prefills_no_prefix_row(make_engine, realtime_meta, voice_codes, with_voice):
    voice = voice_codes if with_voice else None
    engine = make_engine()
    text = random_text(torch.Generator().manual_seed(0), realtime_meta, 16)
    layout = engine.layout
    turn_rows = layout.prefill_rows(layout.header("assistant", True), text).shape[0]
    prefix = layout.system_block(
        realtime_meta["system_prompt_text_ids"], voice, realtime_meta["voice_clone_instruction_ids"]
    ).shape[0]

    def new_conversation() -> int:
        before = engine.stats["prefill_rows"]
        session = SyncSession(engine.create_session(voice=voice, sampling=GREEDY))
        session.say(ids=text, max_frames=4)
        session.close()
        return engine.stats["prefill_rows"] - before

    assert new_conversation() == prefix + turn_rows  # a miss: system + voice + the turn
    for _ in range(2):
        assert new_conversation() == turn_rows  # a hit: the prefix costs 0 rows
    assert engine.stats["prefix_rows_reused"] == 2 * prefix
    assert engine.stats["prefix_hits"] == 2 and engine.stats["prefix_misses"] == 1
    assert engine.prefix_cache.stats()["bytes"] == prefix * _per_position(engine)


def _per_position(engine) -> int:
    return engine.core.pools[0].cache.nbytes_per_position()


async def _say_matches_fresh(session, text, model, layout, max_frames: int = 12) -> None:
    turn = await session.start_turn(max_frames=max_frames)
    turn.push_ids(text)
    turn.end_text()
    chunks = [c async for c in turn]
    snap = await session.snapshot()
    assert snap["cache_len"] == snap["device_cache_len"]
    assert_matches_fresh(model, layout, snap["rows"], chunks, turn.summary, text, max_frames)


async def test_lru_eviction_and_voice_changes(
    make_engine, tiny_model, golden_layout, realtime_meta, voice_codes
):
    """Room for one prefix: each new voice is a new key and evicts the last; an evicted
    prefix is prefilled again, and every conversation matches a fresh run."""
    probe = make_engine(max_sessions=1, **OFF)
    voice_a, voice_b = (
        voice_codes,
        random_frames(torch.Generator().manual_seed(3), 4, realtime_meta),
    )
    prefix_a, prefix_b = probe.system_rows(voice_a), probe.system_rows(voice_b)
    budget = max(prefix_a.shape[0], prefix_b.shape[0]) * _per_position(probe)  # not both
    engine = make_engine(max_sessions=2, prefix_cache_bytes=budget)
    gen = torch.Generator().manual_seed(6)

    async def say(session):
        text = random_text(gen, realtime_meta, 13)
        await _say_matches_fresh(session, text, tiny_model, golden_layout)

    def counts() -> tuple[int, int, int]:
        st = engine.stats
        return st["prefix_hits"], st["prefix_misses"], engine.prefix_cache.evictions

    s = engine.create_session(voice=voice_a, sampling=GREEDY)
    await say(s)
    assert counts() == (0, 1, 0) and prefix_a in engine.prefix_cache
    await s.set_voice(voice_b)  # a new key: a miss, and b evicts a
    await say(s)
    assert counts() == (0, 2, 1)
    assert prefix_a not in engine.prefix_cache and prefix_b in engine.prefix_cache
    t = engine.create_session(voice=voice_b, sampling=GREEDY)
    await say(t)
    assert counts() == (1, 2, 1)
    await t.set_voice(voice_a)  # a was evicted: prefilled again (and b evicted)
    await say(t)
    await t.add_user_turn(random_text(gen, realtime_meta, 5), random_frames(gen, 6, realtime_meta))
    await say(t)  # a later turn: no prefix involved
    assert counts() == (1, 3, 2) and prefix_a in engine.prefix_cache
    await s.close()
    u = engine.create_session(voice=voice_a, sampling=GREEDY)
    await say(u)  # the re-prefilled a serves a new conversation
    assert counts() == (2, 3, 2) and engine.prefix_cache.nbytes <= budget


async def test_reset_and_budget_trims_keep_the_prefix_in_the_slot(
    make_engine, tiny_model, golden_layout, realtime_meta, voice_codes
):
    """A context-budget trim and a reset keep the system block's KV in the slot: nothing is
    copied or prefilled again for it, and the turns still match fresh runs."""
    engine = make_engine(max_context=320, context_budget=300, turn_reserve=80)
    session = engine.create_session(voice=voice_codes, sampling=GREEDY)
    gen = torch.Generator().manual_seed(9)
    prefix = engine.system_rows(voice_codes).shape[0]
    trimmed = False
    for i in range(8):
        await session.add_user_turn(
            random_text(gen, realtime_meta, 6), random_frames(gen, 10, realtime_meta)
        )
        text = random_text(gen, realtime_meta, 14)
        await _say_matches_fresh(session, text, tiny_model, golden_layout, 25)
        trimmed |= len((await session.snapshot())["turns"]) < 2 * (i + 1)
    assert trimmed, "the budget never forced a trim: the test does not exercise it"
    await session.reset()
    assert (await session.snapshot())["cache_len"] == prefix
    await _say_matches_fresh(
        session, random_text(gen, realtime_meta, 14), tiny_model, golden_layout
    )
    assert engine.stats["prefix_misses"] == 1 and engine.stats["prefix_hits"] == 0


async def test_a_slot_emptied_by_a_fault_restarts_from_the_cache(
    make_engine, tiny_model, golden_layout, realtime_meta, voice_codes
):
    """A turn whose prefill fails, and whose rollback fails too, leaves an empty slot: the
    next turn copies the system block from the cache and goes on as if nothing happened."""
    engine = make_engine()
    session = engine.create_session(voice=voice_codes, sampling=GREEDY)
    gen = torch.Generator().manual_seed(12)
    await _say_matches_fresh(
        session, random_text(gen, realtime_meta, 14), tiny_model, golden_layout
    )
    assert engine.stats["prefix_misses"] == 1 and engine.stats["prefix_hits"] == 0

    def fault(*args, **kwargs):
        raise RuntimeError("simulated fault")

    scheduler, core = engine.core.scheduler, engine.core
    scheduler.prefill_chunk, core.close_record = fault, fault  # instance attributes: undone below
    turn = await session.start_turn(max_frames=8)
    turn.push_ids(random_text(gen, realtime_meta, 14))
    turn.end_text()
    assert (await turn.wait()).stop == "error"
    del scheduler.prefill_chunk, core.close_record
    assert (await session.snapshot())["cache_len"] == 0

    await _say_matches_fresh(
        session, random_text(gen, realtime_meta, 14), tiny_model, golden_layout
    )
    assert engine.stats["prefix_misses"] == 1 and engine.stats["prefix_hits"] == 1
