"""The remote session API against the local one: audio uploads, voice, settings, reset."""

from __future__ import annotations

import numpy as np
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.model import SamplingParams

from .conftest import GREEDY


def _audio(seed: int, seconds: float, rate: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    return np.round(wav * 32767).astype(np.int16)


async def _say(session, text: str, max_frames: int = 12) -> torch.Tensor:
    turn = await session.start_turn(max_frames=max_frames)
    for i in range(0, len(text), 3):
        turn.push_text(text[i : i + 3])
    turn.end_text()
    chunks = [c async for c in turn]
    return torch.stack([c.codes for c in chunks]) if chunks else torch.zeros(0, 16)


async def _conversation(session, add_user, set_voice, set_sampling):
    out = [await _say(session, "Hello, nice to meet you.")]
    await add_user()
    out.append(await _say(session, "Sure, let me help."))
    await set_voice()
    out.append(await _say(session, "With another voice now."))
    await set_sampling()
    out.append(await _say(session, "Sampled, with a seed."))
    await session.reset()
    out.append(await _say(session, "From the start."))
    return out


async def test_remote_audio_voice_settings_and_reset_equal_local(
    make_tiny_engine, make_server, tiny_codec
):
    user = _audio(1, 1.3, 16000)
    ref = _audio(2, 2.0, 24000)
    sampled = SamplingParams(temperature=0.9, top_k=20, top_p=0.8)

    engine = make_tiny_engine()
    local = engine.create_session(sampling=GREEDY)

    def frames(pcm, rate):
        wav = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
        return tiny_codec.encode_frames(wav, rate, engine.layout.rvq)

    async def local_user():
        text = "yes please"
        await local.add_user_turn(local.user_text_ids(text), frames(user, 16000))

    expected = await _conversation(
        local,
        local_user,
        lambda: local.set_voice(frames(ref, 24000)),
        lambda: local.set_sampling(sampled, seed=99),
    )
    await local.close()
    engine.shutdown()

    engine = make_tiny_engine()
    server = await make_server(engine)
    remote = await RemoteEngine(server.url).create_session(sampling=GREEDY)
    got = await _conversation(
        remote,
        lambda: remote.add_user_audio_turn("yes please", user, 16000),
        lambda: remote.set_voice_audio(ref, 24000),
        lambda: remote.set_sampling(sampled, seed=99),
    )
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    snap = await remote.snapshot()
    assert snap["turns"] == [("assistant", snap["turns"][0][1])]
    assert snap["sampling"] == sampled
    # Float audio and raw PCM bytes are accepted too.
    await remote.add_user_audio_turn("ok", user.astype(np.float32) / 32768.0, 16000)
    await remote.add_user_audio_turn("ok", user.tobytes(), 16000)
    await remote.set_voice(None)
    await remote.close()
    assert engine.session_ids == []


async def test_create_session_with_voice_codes_and_seed_equals_local(
    make_tiny_engine, make_server, voice_codes
):
    voice = voice_codes
    sampling = SamplingParams()
    engine = make_tiny_engine()
    local = engine.create_session(voice=voice, sampling=sampling, seed=5)
    expected = await _say(local, "A seeded voice.", 10)
    engine.shutdown()

    engine = make_tiny_engine()
    server = await make_server(engine)
    client = RemoteEngine(server.url)
    remote = await client.create_session(
        conversation_id="v-1", voice=voice, sampling=sampling, seed=5
    )
    assert torch.equal(await _say(remote, "A seeded voice.", 10), expected)
    await client.aclose()
    assert engine.session_ids == []


async def test_per_turn_eos_options_travel_to_the_engine(make_tiny_engine, make_server):
    # A turn's EOS options (min_frames, eos_after_text) set remotely act as set locally: the
    # turn speaks at least min_frames frames and its frames equal the local turn's.
    async def say(session, **eos):
        turn = await session.start_turn(max_frames=40, **eos)
        turn.push_text("Hi.")
        turn.end_text()
        return torch.stack([c.codes for c in [c async for c in turn]])

    options = [dict(min_frames=9), dict(min_frames=5, eos_after_text=True)]
    engine = make_tiny_engine()
    local = engine.create_session(sampling=GREEDY)
    expected = [await say(local, **eos) for eos in options]
    engine.shutdown()

    engine = make_tiny_engine()
    server = await make_server(engine)
    client = RemoteEngine(server.url)
    remote = await client.create_session(sampling=GREEDY)
    for eos, want in zip(options, expected, strict=True):
        got = await say(remote, **eos)
        assert got.shape[0] >= eos["min_frames"]
        assert torch.equal(got, want)
    await client.aclose()
