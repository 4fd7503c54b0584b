"""What the random remote-call tests (connection drops, partitions) share: the words of their
replies, the engine rules of both twins, the steps that do the same on the call and on its
local twin (remote == local is checked after each), and the check that the call's journal
holds its server's copy (also used by deterministic tests)."""

from __future__ import annotations

import random

import numpy as np
import torch

from moss_pipecat.engine.records import HistoryCursor
from moss_pipecat.model import SamplingParams

from ..engine.helpers import random_frames

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
SAMPLED = SamplingParams()
# A turn ends soon after its text (never at a random EOS first); frames come as made.
RULES = {"eos_min_frames": 80, "eos_after_text": True, "lookahead_s": None}


def reply_text(rnd: random.Random) -> str:
    return " ".join(rnd.choices(WORDS, k=rnd.randint(1, 8))) + "."


async def user_step(rnd: random.Random, gen: torch.Generator, remote, local, meta) -> None:
    """A user turn (a random transcript, and codec frames drawn from ``gen``) on both."""
    text = " ".join(rnd.choices(WORDS, k=rnd.randint(1, 6)))
    frames = random_frames(gen, rnd.randint(1, 8), meta)
    ids = local.user_text_ids(text)
    await remote.add_user_turn(ids, frames)
    await local.add_user_turn(ids, frames)


async def seed_step(rnd: random.Random, remote, local) -> None:
    """A reseed of both: the noise restarts."""
    seed_value = rnd.randrange(100)
    await remote.set_sampling(SAMPLED, seed=seed_value)
    await local.set_sampling(SAMPLED, seed=seed_value)


async def assert_the_journal_holds_the_servers(remote, server) -> None:
    """The session's journal holds the history its server holds (turns, voice, noise): what a
    restore would give back, however the journal got there (deltas, full copies, resumes)."""
    conv = server.hub.conversations[remote.id]
    change = await conv.session.history_delta(HistoryCursor(), full=True)  # (not the feed's)
    j = remote.journal
    assert j.valid and j.lost is None and not (j.restore_due or j.stale)
    assert len(j.turns) == len(change.turns)
    for mine, theirs in zip(j.turns, change.turns, strict=True):
        assert (mine.role, mine.lead, list(mine.ids)) == (
            theirs.role,
            theirs.lead,
            list(theirs.text_ids),
        )
        assert np.array_equal(mine.frames, theirs.frames.numpy())
    voice = None if change.voice is None else change.voice.numpy()
    assert (j.voice is None) == (voice is None) and (
        voice is None or np.array_equal(j.voice, voice)
    )
    assert (j.seed, j.noise, j.turn_noise) == (change.seed, change.noise_counter, change.turn_noise)
