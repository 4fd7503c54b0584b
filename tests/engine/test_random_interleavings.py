"""Random interleavings of every session command across concurrent sessions, on engines of
random shapes (KV pools that force moves, small prefill chunks and tick budgets, a small context
budget that forces trims, the prefix cache, graphed or eager steps).

The other engine tests each hold one interleaving; these draw many and check, after every
command, what must hold whatever the order: the host's view of a slot's cache is the device's,
a finished greedy turn is what a fresh model run over the session's rows makes, a restored
conversation holds the rows of the one it was taken from, and every slot is free at the end.
Seeded sampling: each session's replies are the same in company and alone.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from moss_pipecat.engine.records import HistoryCursor
from moss_pipecat.model import SamplingParams

from .helpers import assert_matches_fresh, random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()
SAMPLED = SamplingParams(
    temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.1, repetition_window=8
)
ACTORS = 3
OPS = ("speak", "cut", "user", "reset", "voice", "restore", "limits")


def engine_config(rnd: random.Random) -> dict:
    """An engine drawn at random. Its largest pool holds every actor twice (a restore holds
    two sessions), so no session is ever trimmed for want of a larger slot."""
    pools = rnd.choice([None, ((1, 128), (2, 256), (2 * ACTORS, 512))])
    return dict(
        max_sessions=2 * ACTORS if pools is None else sum(n for n, _ in pools),
        max_context=512,
        context_budget=rnd.choice([300, 450]),
        turn_reserve=rnd.choice([40, 100]),
        prefill_chunk=rnd.choice([7, 64, 1024]),
        prefill_budget_rows=rnd.choice([None, 16, 100]),
        min_turn_frames=200,  # turns end on EOS or their own max_frames only
        max_turn_frames=200,
        kv_pools=pools,
        prefix_cache_bytes=rnd.choice([0, 2**20]),
        graphed_decode=rnd.random() < 0.5,
    )


class Actor:
    """One conversation driven by random commands; ``replies`` keeps each reply's frames."""

    def __init__(self, engine, meta, checks, rnd: random.Random, seed: int, sampling) -> None:
        self.engine, self.meta, self.check_fresh = engine, meta, checks
        self.rnd, self.seed, self.sampling = rnd, seed, sampling
        self.replies: list[torch.Tensor] = []
        self.log: list[str] = []

    def _gen(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.rnd.randrange(10**6))

    def _voice(self) -> torch.Tensor | None:
        if self.rnd.random() < 0.3:
            return None
        return random_frames(self._gen(), self.rnd.randint(1, 10), self.meta)

    async def run(self, steps: int, weights: list[float]) -> None:
        engine = self.engine
        self.s = engine.create_session(voice=self._voice(), sampling=self.sampling, seed=self.seed)
        for _ in range(steps):
            op = self.rnd.choices(OPS, weights)[0]
            await getattr(self, op)()
            self.log.append(op)
            snap = await self.s.snapshot()
            assert snap["cache_len"] == snap["device_cache_len"], self.log
        await self.s.close()

    async def speak(self, cut: bool = False) -> None:
        rnd = self.rnd
        text = random_text(self._gen(), self.meta, rnd.randint(1, 30))
        max_frames = rnd.randint(2, 30)
        turn = await self.s.start_turn(max_frames=max_frames)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        pushed = rnd.randint(1, len(pieces)) if cut else len(pieces)
        for piece in pieces[:pushed]:
            turn.push_ids(piece)
            if rnd.random() < 0.3:
                await asyncio.sleep(rnd.choice([0, 0.001, 0.01]))
        if not cut:
            turn.end_text()
            chunks = [c async for c in turn]
            if chunks:
                self.replies.append(torch.stack([c.codes for c in chunks]))
            if self.check_fresh:
                snap = await self.s.snapshot()
                summary = turn.summary
                assert_matches_fresh(
                    *self.check_fresh, snap["rows"], chunks, summary, text, max_frames
                )
            return
        # A barge-in after some frames (or none), keeping some of them. Frames are read only
        # from a turn whose text has ended: one still waiting for text stalls (by design).
        ended = pushed == len(pieces) and rnd.random() < 0.5
        if ended:
            turn.end_text()
        want, got = rnd.randint(0, 6) if ended else 0, 0
        if want:
            async for _ in turn:
                got += 1
                if got == want:
                    break
        await self.s.interrupt(rnd.randint(0, got))

    async def cut(self) -> None:
        await self.speak(cut=True)

    async def user(self) -> None:
        g = self._gen()
        n_text, n_frames = self.rnd.randint(0, 15), self.rnd.randint(1, 20)
        await self.s.add_user_turn(
            random_text(g, self.meta, n_text), random_frames(g, n_frames, self.meta)
        )

    async def reset(self) -> None:
        await self.s.reset()

    async def voice(self) -> None:
        await self.s.set_voice(self._voice())

    async def limits(self) -> None:
        await self.s.set_limits(context_budget=self.rnd.choice([None, 150, 250, 400]))

    async def restore(self) -> None:
        """The conversation moves to a new session through its history records."""
        change = await self.s.history_delta(HistoryCursor(), full=True)
        moved = self.engine.create_session(sampling=self.sampling)
        await moved.restore(change.turns, change.voice, change.seed, change.noise_counter)
        before, after = await self.s.snapshot(), await moved.snapshot()
        await self.s.close()
        self.s = moved
        # Every turn back, unless the new session's budget is the engine's and smaller.
        n = after["system_rows"]
        assert torch.equal(before["rows"][:n], after["rows"][:n])
        kept = after["rows"].shape[0] - n
        assert (
            kept == before["rows"].shape[0] - n
            or after["context_budget"] < before["context_budget"]
        )
        assert torch.equal(before["rows"][before["rows"].shape[0] - kept :], after["rows"][n:])


async def drive(engine, meta, seed: int, sampling, checks, alone: bool = False) -> list[Actor]:
    actors = [
        Actor(engine, meta, checks, random.Random(seed * 100 + i), seed=i, sampling=sampling)
        for i in range(ACTORS)
    ]
    weights = [5, 3, 3, 0.5, 0.7, 1, 0.7] if sampling is GREEDY else [5, 0, 3, 0.5, 0.7, 1, 0]
    runs = [a.run(8, weights) for a in actors]
    try:
        async with asyncio.timeout(120):  # a hang guard: a turn that never ends fails here
            if alone:
                for r in runs:
                    await r
            else:
                await asyncio.gather(*runs)
    except TimeoutError:
        pytest.fail(f"hung: {[a.log for a in actors]}")
    assert engine.session_ids == []  # every slot given back
    assert all(len(p.free) == p.n_slots for p in engine.core.pools)
    return actors


@pytest.mark.parametrize("seed", range(3))
async def test_greedy_turns_equal_a_fresh_run_whatever_the_interleaving(
    make_engine, tiny_model, golden_layout, realtime_meta, seed
):
    engine = make_engine(lookahead_s=None, **engine_config(random.Random(seed)))
    await drive(engine, realtime_meta, seed, GREEDY, (tiny_model, golden_layout))


@pytest.mark.parametrize("seed", range(2))
async def test_seeded_replies_are_the_same_in_company_and_alone(make_engine, realtime_meta, seed):
    config = engine_config(random.Random(seed + 50))
    together = await drive(
        make_engine(lookahead_s=None, **config), realtime_meta, seed, SAMPLED, None
    )
    alone = await drive(
        make_engine(lookahead_s=None, **config), realtime_meta, seed, SAMPLED, None, alone=True
    )
    for a, b in zip(together, alone, strict=True):
        assert a.log == b.log
        assert len(a.replies) == len(b.replies)
        for x, y in zip(a.replies, b.replies, strict=True):
            assert torch.equal(x, y), a.log
