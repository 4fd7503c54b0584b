"""MossTTSService in real pipecat pipelines (run_test) on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.engine.text import encode_text
from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import Probe, SnapshotProbe, UrgentProbe, assistant_aggregator, user_audio_frames


def reply(*pieces: str) -> list:
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in pieces),
        LLMFullResponseEndFrame(),
    ]


def user_turn(text: str, seconds: float = 1.0) -> list:
    return [
        UserStartedSpeakingFrame(),
        *user_audio_frames(seconds),
        UserStoppedSpeakingFrame(),
        TranscriptionFrame(text, "user", "2026-11-23"),
    ]


async def run(tts, frames, *, sample_rate=24000, metrics=False, after=(), before=()):
    probe = SnapshotProbe(tts)
    params = PipelineParams(
        audio_out_sample_rate=sample_rate, enable_metrics=metrics, enable_usage_metrics=metrics
    )
    pipeline = Pipeline([*before, tts, probe, *after])
    down, up = await run_test(pipeline, frames_to_send=frames, pipeline_params=params)
    return down, up, probe.snapshots


def contexts_of(frames, kind=TTSAudioRawFrame):
    seen = []
    for f in frames:
        if isinstance(f, kind) and f.context_id not in seen:
            seen.append(f.context_id)
    return seen


def spoken_words(frames) -> str:
    return " ".join(f.text.strip() for f in frames if isinstance(f, TTSTextFrame))


async def test_two_turn_conversation_with_user_turn_in_between(talkative_engine):
    tts = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(seed=3))
    text1, text2 = "Hello there, how are you today?", "Great, let us get started."
    frames = [
        *reply("Hello ", "there, how", " are you", " today?"),
        SleepFrame(0.5),
        Probe(),
        *user_turn("I am fine thanks"),
        *reply("Great, ", "let us get", " started."),
        SleepFrame(0.5),
        Probe(),
    ]
    rate, hop = talkative_engine.codec.sampling_rate, talkative_engine.codec.samples_per_frame
    down, up, snaps = await run(tts, frames, sample_rate=rate, metrics=True)  # not resampled
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    audio_contexts = contexts_of(down)
    assert len(audio_contexts) == 2
    assert sum(isinstance(f, TTSStartedFrame) for f in down) == 2
    assert sum(isinstance(f, TTSStoppedFrame) for f in down) == 2
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert all(f.sample_rate == rate and len(f.audio) == hop * 2 for f in audio)  # a frame each
    assert any(isinstance(f, MetricsFrame) for f in down)  # TTFB / usage
    # Word frames carry the spoken text (the whole reply: nothing was interrupted).
    assert spoken_words(down).split() == (text1 + " " + text2).split()

    first, second = snaps
    assert [role for role, _ in first["turns"]] == ["assistant"]
    assert [role for role, _ in second["turns"]] == ["assistant", "user", "assistant"]
    user_tokens = second["turns"][1][1]
    assert user_tokens == len(encode_text(talkative_engine.tokenizer, "I am fine thanks"))
    # The user's audio is in the rows: 1 s of speech = 12 codec frames beside the text.
    rows = second["rows"]
    assert rows.shape[0] > first["rows"].shape[0] + 12
    assert second["cache_len"] <= rows.shape[0]


async def test_interruption_mid_reply_rolls_back_and_the_next_reply_works(talkative_engine):
    from pipecat.processors.aggregators.llm_context import LLMContext

    context = LLMContext()
    # No EOS before the text is read: the reply is still speaking when the user barges in,
    # whatever this fixture set's model would do.
    tts = MossTTSService(
        engine=talkative_engine, settings=MossTTSSettings(lookahead_s=0.5, greedy=True)
    )
    long_text = "This is a long answer that keeps going " * 6
    frames = [
        *reply(*(w + " " for w in long_text.split(" "))),
        SleepFrame(0.4),
        InterruptionFrame(),
        UrgentProbe(),  # system frames keep their order: this reads the rolled-back session
        SleepFrame(0.2),
        *reply("Okay, ", "I stopped."),
        SleepFrame(0.5),
        Probe(),
    ]
    assistant = assistant_aggregator(context)
    down, up, snaps = await run(tts, frames, after=[assistant])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    # The LLM context got only the start of the interrupted reply (what was heard), then
    # the whole second reply.
    said = [m["content"].split() for m in context.get_messages() if m["role"] == "assistant"]
    assert len(said) == 2 and said[1] == ["Okay,", "I", "stopped."]
    assert said[0] == long_text.split()[: len(said[0])] and len(said[0]) < 20
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    old, new = contexts_of(down[:cut]), contexts_of(down[cut:])
    assert len(old) == 1 and len(new) == 1 and old != new  # no old audio after the cut
    pushed_before = sum(isinstance(f, TTSAudioRawFrame) for f in down[:cut])
    after_cut, after_next = snaps
    turns = after_cut["turns"]
    assert turns == [] or [r for r, _ in turns] == ["assistant"]
    if turns:  # what was kept is at most what was pushed before the interruption
        assistant_rows = after_cut["rows"].shape[0] - after_cut["system_rows"]
        assert assistant_rows <= 3 + 12 + pushed_before + 1
    assert [r for r, _ in after_next["turns"]][-1] == "assistant"
    assert sum(isinstance(f, TTSAudioRawFrame) and f.context_id == new[0] for f in down) > 0
    # The interrupted reply's words beyond what was heard never reached the context.
    assert "going This is a long answer that keeps going This" not in spoken_words(down)


async def test_settings_update_takes_effect_on_the_next_turn(talkative_engine, tmp_path):
    voice = tmp_path / "voice.wav"
    t = np.arange(24000) / 24000
    sf.write(voice, (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 24000)
    tts = MossTTSService(engine=talkative_engine, voice_dir=tmp_path)
    frames = [
        *reply("First ", "reply."),
        UrgentProbe(),  # read while the first reply plays, before the update is sent
        SleepFrame(0.2),
        TTSUpdateSettingsFrame(  # a voice_dir voice, by its name
            delta=MossTTSSettings(voice="voice.wav", greedy=True, top_k=5, context_budget=1500)
        ),
        *reply("Second ", "reply."),
        SleepFrame(0.3),
        Probe(),
    ]
    down, up, (before, after) = await run(tts, frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert before["sampling"].greedy is False and after["sampling"].greedy is True
    assert after["sampling"].top_k == 5 and after["context_budget"] == 1500
    # The reference voice (1 s = 12 frames) now sits in the system block.
    assert after["system_rows"] >= before["system_rows"] + 12
    assert len(contexts_of(down)) == 2


@pytest.mark.parametrize(
    "pieces",
    [["   ", "\n"], ["😀🎉", "🙂"], ["word " * 600]],
    ids=["whitespace", "emoji", "very-long"],
)
async def test_odd_text_then_a_normal_reply(talkative_engine, pieces):
    tts = MossTTSService(engine=talkative_engine)
    frames = [*reply(*pieces), SleepFrame(0.3), *reply("Still ", "here."), SleepFrame(0.3)]
    down, up, _ = await run(tts, frames)
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    if pieces[0].startswith("word"):
        assert errors and "exceeds" in errors[0].error  # 3000 chars > max_text_chars 2000
    else:
        assert not errors
    last = contexts_of(down)[-1]
    assert sum(isinstance(f, TTSAudioRawFrame) and f.context_id == last for f in down) > 0


async def test_engine_failure_becomes_an_error_frame_and_the_pipeline_goes_on(
    talkative_engine, monkeypatch
):
    tts = MossTTSService(engine=talkative_engine)
    model = talkative_engine.model
    real = model.backbone
    calls = {"n": 0}

    def failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "backbone", failing_once)
    frames = [
        *reply("This ", "fails."),
        SleepFrame(0.3),
        *reply("This ", "works."),
        SleepFrame(0.3),
    ]
    down, up, _ = await run(tts, frames)
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "simulated device fault" in errors[0].error
    assert len(contexts_of(down)) == 1  # the second reply spoke


async def test_telephony_pipeline_gets_8khz_audio(talkative_engine):
    def samples(frames, rate):
        audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
        assert audio and all(f.sample_rate == rate for f in audio)
        return sum(len(f.audio) for f in audio) // 2

    greedy = MossTTSSettings(greedy=True)
    frames = [*reply("Hello ", "caller."), SleepFrame(0.3)]
    rate, hop = talkative_engine.codec.sampling_rate, talkative_engine.codec.samples_per_frame
    down_codec, _, _ = await run(
        MossTTSService(engine=talkative_engine, settings=greedy), frames, sample_rate=rate
    )
    down8, up, _ = await run(
        MossTTSService(engine=talkative_engine, settings=greedy), frames, sample_rate=8000
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    n_frames = samples(down_codec, rate) // hop
    # Every 80 ms frame arrives resampled (640 samples at 8 kHz), the resampler's tail included.
    assert abs(samples(down8, 8000) - n_frames * 640) <= 8


async def test_tts_speak_frame(talkative_engine):
    tts = MossTTSService(engine=talkative_engine)
    down, up, _ = await run(tts, [TTSSpeakFrame("Welcome to the demo."), SleepFrame(0.3)])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert sum(isinstance(f, TTSAudioRawFrame) for f in down) > 0
    assert spoken_words(down).split() == "Welcome to the demo.".split()


async def test_one_engine_serves_two_pipelines_at_once(talkative_engine):
    import asyncio

    a = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    b = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    frames = [*reply("Same ", "words ", "twice."), SleepFrame(0.5), Probe()]
    rate = talkative_engine.codec.sampling_rate  # the codec's PCM as it is: no resampler's filter
    (down_a, _, snap_a), (down_b, _, snap_b) = await asyncio.gather(
        run(a, frames, sample_rate=rate), run(b, frames, sample_rate=rate)
    )
    audio_a = b"".join(f.audio for f in down_a if isinstance(f, TTSAudioRawFrame))
    audio_b = b"".join(f.audio for f in down_b if isinstance(f, TTSAudioRawFrame))
    # Greedy: same text, same codes; PCM equal up to float rounding of the batched codec.
    pcm_a, pcm_b = (np.frombuffer(x, dtype=np.int16).astype(int) for x in (audio_a, audio_b))
    assert pcm_a.size > 0 and pcm_a.size == pcm_b.size
    assert np.abs(pcm_a - pcm_b).max() <= 2
    assert snap_a[0]["slot"] != snap_b[0]["slot"]
    assert talkative_engine.session_ids == []  # both sessions closed with their pipelines


async def test_llm_context_keeps_the_spoken_words(talkative_engine):
    """Downstream of the TTS, pipecat's assistant aggregator adds what was spoken."""
    from pipecat.processors.aggregators.llm_context import LLMContext

    context = LLMContext()
    tts = MossTTSService(engine=talkative_engine, context=context)
    text = "The quick brown fox jumps over the lazy dog."
    await run_test(
        Pipeline([tts, assistant_aggregator(context)]),
        frames_to_send=[*reply(*(w + " " for w in text.split(" "))), SleepFrame(1.0)],
    )
    said = [m for m in context.get_messages() if m.get("role") == "assistant"]
    assert said and said[-1]["content"].split() == text.split()


@pytest.mark.parametrize(
    "kind", ["missing", "not-audio", "outside-voice-dir", "dot-dot", "symlink-out", "no-voice-dir"]
)
async def test_a_bad_voice_is_one_error_and_the_service_keeps_speaking(
    talkative_engine, tmp_path, kind
):
    voices, elsewhere = tmp_path / "voices", tmp_path / "elsewhere"
    voices.mkdir()
    elsewhere.mkdir()
    real = elsewhere / "real.wav"  # a readable voice, but not where voices live
    t = np.arange(24000) / 24000
    sf.write(real, (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 24000)
    bad = {
        "missing": str(voices / "nope.wav"),
        "not-audio": str(voices / "notes.wav"),
        "outside-voice-dir": str(real),
        "dot-dot": "../elsewhere/real.wav",
        "symlink-out": "link.wav",
        "no-voice-dir": str(real),
    }[kind]
    (voices / "notes.wav").write_text("this is not a wav file")
    (voices / "link.wav").symlink_to(real)
    tts = MossTTSService(
        engine=talkative_engine,
        settings=MossTTSSettings(greedy=True),
        voice_dir=None if kind == "no-voice-dir" else voices,
    )
    frames = [*reply("First ", "reply."), SleepFrame(0.3), Probe()]
    frames += [TTSUpdateSettingsFrame(delta=MossTTSSettings(voice=bad))]
    for i in range(3):
        frames += [*reply(f"Reply {i} ", "after the bad voice."), SleepFrame(0.4)]
    frames.append(Probe())
    down, up, (before, after) = await run(tts, frames)
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "voice" in errors[0]
    contexts = contexts_of(down)
    assert len(contexts) == 4  # every reply spoke
    assert after["system_rows"] == before["system_rows"]  # the previous voice stayed


async def test_a_runtime_model_change_is_refused_and_the_replies_go_on(talkative_engine):
    tts = MossTTSService(engine=talkative_engine)
    model = tts._settings.model
    frames = [*reply("First ", "reply."), SleepFrame(0.3)]
    frames += [TTSUpdateSettingsFrame(delta=MossTTSSettings(model="someone/else", greedy=True))]
    frames += [*reply("Second ", "reply."), SleepFrame(0.4), Probe()]
    down, up, (after,) = await run(tts, frames)
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "model cannot change" in errors[0]
    assert tts._settings.model == model
    assert after["sampling"].greedy is True  # the rest of the update applied
    assert len(contexts_of(down)) == 2
