"""The tiny fixtures' stand-in rules hold on a model that says EOS at once.

A random-weight fixture model may end a reply on EOS at its first frame; a bot then hears
nothing (pipecat: "TTS context completed with no audio"). Every way the package serves the
tiny fixtures takes the stand-in's EOS rules (``TINY_ENGINE_CONFIG``): the agents and the demo
directly, ``moss-pipecat serve --tiny`` and the Ray app's ``tiny=`` through their options. Here
they run on a generated EOS-eager set (``FixtureSpec.eos_eager``), checked first to be one.
"""

from __future__ import annotations

import dataclasses

import pytest

from moss_pipecat.engine import TINY_ENGINE_CONFIG, load_tiny_engine
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.server.options import EngineOptions

from ..test_fixture_sets import SPEC

EAGER = dataclasses.replace(SPEC, seed=5, eos_frame=3, eos_eager=True)
TEXTS = ("Hello there, how are you today?", "Fine.", "OK", "你好，世界。")
SMALL = dict(max_sessions=1, max_context=2048, context_budget=1800, turn_reserve=200)


@pytest.fixture(scope="module")
def eager_set(make_fixture_set):
    return make_fixture_set(EAGER)


async def _replies(engine) -> list[tuple[str, int]]:
    """(how it stopped, audio frames) of each reply of a conversation of TEXTS, in two sampled
    sessions."""
    replies = []
    try:
        for seed in range(2):
            session = engine.create_session(seed=seed)
            for text in TEXTS:
                turn = await session.start_turn()
                turn.push_text(text)
                turn.end_text()
                frames = sum([1 async for _ in turn])
                summary = await turn.wait()
                assert summary.audio_frames == frames
                replies.append((summary.stop, frames))
            await session.close()
    finally:
        engine.shutdown()
    return replies


async def test_the_generated_set_ends_most_replies_at_once(eager_set):
    config = EngineConfig(**SMALL, lookahead_s=None, max_turn_frames=40)
    replies = await _replies(load_tiny_engine(eager_set, config=config))
    assert sum(stop == "eos" and n <= 2 for stop, n in replies) >= 0.6 * len(replies), replies


@pytest.mark.parametrize("path", ["agents_and_demo", "serve_and_ray"])
async def test_every_tiny_serving_path_gives_every_reply_its_frames(eager_set, path):
    if path == "agents_and_demo":
        config = dataclasses.replace(TINY_ENGINE_CONFIG, **SMALL, lookahead_s=None)
        engine = load_tiny_engine(eager_set, config=config)
    else:  # the options `moss-pipecat serve --tiny` and the Ray app build their engine from
        engine = EngineOptions(tiny=str(eager_set), lookahead_s=0, **SMALL).load_engine()
    # No reply ends on EOS before the stand-in's frame 25: each runs to it or to its frame cap
    # (the agents' caps are tighter: 10 + 3 per text token).
    replies = await _replies(engine)
    early = TINY_ENGINE_CONFIG.eos_min_frames
    assert all(n >= early or stop == "max_frames" for stop, n in replies), replies
    assert min(n for _, n in replies) >= TINY_ENGINE_CONFIG.min_turn_frames, replies


def test_the_examples_take_the_stand_in_rules_unless_told(eager_set):
    from examples._common import load_engine_from_args, parser

    def rules(*argv: str) -> tuple[int, bool]:
        args = parser("", "out").parse_args(["--fixtures", str(eager_set), *argv])
        engine = load_engine_from_args(args)
        engine.shutdown()
        return engine.config.eos_min_frames, engine.config.eos_after_text

    stand_in = (TINY_ENGINE_CONFIG.eos_min_frames, TINY_ENGINE_CONFIG.eos_after_text)
    assert rules() == stand_in
    assert rules("--eos-min-frames", "3") == (3, TINY_ENGINE_CONFIG.eos_after_text)
