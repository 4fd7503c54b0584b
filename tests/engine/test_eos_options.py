"""EOS masking: ``min_frames`` / ``eos_after_text`` (per turn, engine defaults, generate_turn).

Tests that need a turn to last N frames set these options instead of relying on where a
random-weight model happens to stop. Here a model whose codebook-0 head always prefers EOS
shows the mask: EOS is suppressed for exactly the frames asked, then allowed.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.engine.factory import TINY_ENGINE_CONFIG
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import MossTTSRealtime, SamplingParams, generate_turn

from .helpers import random_text

GREEDY = SamplingParams.greedy_decoding()


@pytest.fixture(scope="module")
def eos_model(realtime_dir) -> MossTTSRealtime:
    """The tiny model with codebook 0's EOS logit raised so far that, unmasked, greedy decoding
    ends every turn at its first frame."""
    model = MossTTSRealtime.from_pretrained(realtime_dir)
    eos = model.cfg.audio_eos

    def raise_eos(module, args, logits):
        logits = logits.clone()  # EOS above every other logit, whatever its own weights say
        logits[:, eos] = logits.max(dim=-1).values + 1e4
        return logits

    model.local_transformer.local_lm_heads[0].register_forward_hook(raise_eos)
    return model


def _long_prompt(layout, golden, text):
    """Turn-1 prompt (system block + header + lead text) for ``text``."""
    head = layout.prefill_rows(layout.header("assistant", first=True), text)
    return torch.cat((golden["session.system_rows"], head))


def _turn(model, layout, golden, text, max_frames, **options):
    prompt = _long_prompt(layout, golden, text)
    cache = model.new_cache(1, prompt.shape[0] + max_frames + 2)
    rest = text[layout.lead(len(text)) :]
    return generate_turn(model, cache, 0, prompt, rest, max_frames, GREEDY, **options)


def test_generate_turn_min_frames_suppresses_eos_then_allows_it(
    eos_model, tiny_model, golden_layout, realtime_golden, realtime_meta
):
    text = random_text(torch.Generator().manual_seed(3), realtime_meta, golden_layout.delay + 6)
    eos = eos_model.cfg.audio_eos
    off = _turn(eos_model, golden_layout, realtime_golden, text, 30)
    assert off.stop == "eos" and off.frames.shape[0] == 1  # unmasked: EOS at once
    for n in (1, 5):
        res = _turn(eos_model, golden_layout, realtime_golden, text, 30, min_frames=n)
        assert res.stop == "eos" and res.frames.shape[0] == n + 1
        assert (res.frames[:n, 0] != eos).all() and res.frames[n, 0] == eos
        # Masking touches only the EOS choice: the frames are the plain model's.
        ref = _turn(tiny_model, golden_layout, realtime_golden, text, n, min_frames=n)
        assert torch.equal(res.frames[:n], ref.frames)
    capped = _turn(eos_model, golden_layout, realtime_golden, text, 8, min_frames=50)
    assert capped.stop == "max_frames" and capped.frames.shape[0] == 8


def test_generate_turn_eos_after_text(eos_model, golden_layout, realtime_golden, realtime_meta):
    gen = torch.Generator().manual_seed(4)
    for n_text in (golden_layout.delay + 5, 3):
        text = random_text(gen, realtime_meta, n_text)
        rest = text[golden_layout.lead(n_text) :]
        res = _turn(eos_model, golden_layout, realtime_golden, text, 40, eos_after_text=True)
        # Frame j follows the j-th fed token: EOS comes with the frame after the last one.
        assert res.stop == "eos" and res.frames.shape[0] == len(rest) + 1
        assert res.fed.tolist() == rest


def test_masked_eos_keeps_the_golden_frames(tiny_model, realtime_golden, realtime_meta):
    """Suppressing EOS past each golden turn's end changes no frame before it (whatever the
    fixture set: wherever its turns stop and however they stop)."""
    g, turns = realtime_golden, realtime_meta["turns"]
    cache = tiny_model.new_cache(1, g["session.rows"].shape[0] + 64)
    eos = tiny_model.cfg.audio_eos
    for k, text_key in ((1, "session.text1"), (2, "session.text2")):
        t = turns[f"turn{k}"]
        frames = g[f"turn{k}.frames"]
        n_audio = t["n_frames"] - (t["stop"] == "eos")
        length = cache.length(0)
        res = generate_turn(
            tiny_model,
            cache,
            0,
            g[f"turn{k}.prompt"],
            g[text_key][t["n_prefill_text"] :].tolist(),
            t["max_frames"],
            SamplingParams.greedy_decoding(
                realtime_meta["decoding"]["repetition_penalty"],
                realtime_meta["decoding"]["repetition_window"],
            ),
            min_frames=t["max_frames"],
        )
        assert res.stop == "max_frames" and (res.frames[:, 0] != eos).all()
        assert torch.equal(res.frames[:n_audio], frames[:n_audio])
        # Continue turn 2 on the golden cache: keep only what the golden session fed.
        cache.truncate(0, length + t["prompt_rows"] + t["n_steps"])


def _engine(model, layout, meta, **config) -> MossEngine:
    config.setdefault("lookahead_s", None)
    cfg = EngineConfig(max_context=1024, context_budget=900, turn_reserve=100, **config)
    return MossEngine(
        model,
        layout,
        config=cfg,
        system_text_ids=meta["system_prompt_text_ids"],
        voice_instruction_ids=meta["voice_clone_instruction_ids"],
    ).start()


@pytest.mark.parametrize("graphed", [False, True])
async def test_engine_masks_eos_per_turn_in_one_batch(
    eos_model, golden_layout, realtime_meta, graphed
):
    """Four sessions stepped together, each with its own mask (engine default or per turn),
    on the eager and the padded graphed paths."""
    engine = _engine(
        eos_model, golden_layout, realtime_meta, max_sessions=4, eos_min_frames=2,
        graphed_decode=graphed,
    )  # fmt: skip
    try:
        text = random_text(torch.Generator().manual_seed(5), realtime_meta, golden_layout.delay + 4)
        options = [{"min_frames": 0}, {}, {"min_frames": 6}, {"eos_after_text": True}]
        turns = []
        for opt in options:
            session = engine.create_session(sampling=GREEDY)
            turn = await session.start_turn(max_frames=20, **opt)
            turn.push_ids(text)
            turn.end_text()
            turns.append(turn)

        async def drain(turn):
            return [c async for c in turn], turn.summary

        results = await asyncio.gather(*(drain(t) for t in turns))
        # eos_after_text keeps the engine's min_frames (2); the 4 remaining tokens decide.
        expected = [0, 2, 6, 4]
        for (chunks, summary), n in zip(results, expected, strict=True):
            assert summary.stop == "eos"
            assert summary.audio_frames == len(chunks) == n
    finally:
        engine.shutdown()


async def test_eos_after_text_waits_for_the_end_of_the_text(
    eos_model, golden_layout, realtime_meta
):
    engine = _engine(eos_model, golden_layout, realtime_meta, max_sessions=1)
    try:
        session = engine.create_session(sampling=GREEDY)
        text = random_text(torch.Generator().manual_seed(6), realtime_meta, golden_layout.delay + 3)
        turn = await session.start_turn(max_frames=30, eos_after_text=True)
        turn.push_ids(text)  # no end_text yet: the model may not stop, whatever it prefers
        chunks = []
        async for chunk in turn:
            chunks.append(chunk)
            if len(chunks) == 4:  # frames 0..3: the 3 remaining tokens are all fed
                break
        await asyncio.sleep(0.2)
        assert turn.summary is None  # waiting for text, not ended
        turn.end_text()
        chunks += [c async for c in turn]
        assert turn.summary.stop == "eos" and len(chunks) == turn.summary.audio_frames == 4
    finally:
        engine.shutdown()


async def test_eos_options_errors(make_engine):
    with pytest.raises(InvalidInputError, match="eos_min_frames"):
        EngineConfig(eos_min_frames=-1)
    engine = make_engine(max_sessions=1)
    session = engine.create_session(sampling=GREEDY)
    for bad in (-1, 1.5):
        with pytest.raises(InvalidInputError, match="min_frames"):
            await session.start_turn(min_frames=bad)
    await session.close()


def test_cli_eos_flags_make_the_engine_config():
    from moss_pipecat.cli import _engine_config, build_parser

    def rules(*argv: str) -> tuple[int, bool]:
        cfg = _engine_config(build_parser().parse_args(["serve", *argv]))
        return cfg.eos_min_frames, cfg.eos_after_text

    # A real model ends a turn where it says EOS; the tiny fixtures' random one follows the
    # stand-in's rules, as in the in-process agents, unless told otherwise.
    assert rules("--model", "m") == (0, False)
    assert rules("--tiny", "/x") == (
        TINY_ENGINE_CONFIG.eos_min_frames,
        TINY_ENGINE_CONFIG.eos_after_text,
    )
    assert TINY_ENGINE_CONFIG.eos_min_frames > 0 and TINY_ENGINE_CONFIG.eos_after_text
    assert rules("--model", "m", "--eos-min-frames", "7", "--eos-after-text") == (7, True)
    assert rules("--tiny", "/x", "--eos-min-frames", "0", "--no-eos-after-text") == (0, False)
    assert rules("--tiny", "/x", "--eos-min-frames", "3") == (3, True)


def test_ray_options_take_the_same_eos_rules():
    from moss_pipecat.server.options import EngineOptions

    tiny = EngineOptions(tiny="/x").engine_config()
    assert (tiny.eos_min_frames, tiny.eos_after_text) == (
        TINY_ENGINE_CONFIG.eos_min_frames,
        TINY_ENGINE_CONFIG.eos_after_text,
    )
    cfg = EngineOptions(tiny="/x", eos_min_frames="0", eos_after_text="false").engine_config()
    assert (cfg.eos_min_frames, cfg.eos_after_text) == (0, False)
    real = EngineOptions(model="m").engine_config()
    assert (real.eos_min_frames, real.eos_after_text) == (0, False)
