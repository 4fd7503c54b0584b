"""pipecat's own TTS contract, replayed on MossTTSService with pipecat's test harness.

The scenarios are those pipecat's tests put to every TTS service (frame groups with no
sleeps between frames, one TTSStartedFrame/TTSStoppedFrame per utterance, a new reply never
overtaking the previous one's end, speak frames that add to the context or not, speech that
an interruption may not cut, interrupted replies not counted as silent ones, sample rates,
metrics, settings frames meant for another service, cancellation, pauses longer than
pipecat's idle end, an EndFrame mid-reply, a written-off service), asserted on the real tiny
model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    BotBackchannelFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    DataFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMAssistantPushAggregationFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TextType,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.metrics.metrics import (
    ProcessingMetricsData,
    TTFBMetricsData,
    TTSUsageMetricsData,
)
from pipecat.pipeline.task import PipelineParams
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text

from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import Probe
from .test_moss_tts_service import run


@dataclass
class FooFrame(DataFrame):
    label: str = ""


def service(engine, **kwargs) -> MossTTSService:
    return MossTTSService(engine=engine, settings=MossTTSSettings(greedy=True), **kwargs)


def llm_reply(text: str) -> list:
    words = text.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in tokens),
        LLMFullResponseEndFrame(),
    ]


def errors(up) -> list[str]:
    return [f.error for f in up if isinstance(f, ErrorFrame)]


def words_of(frames, context_id=None) -> list[str]:
    return [
        f.text
        for f in frames
        if isinstance(f, TTSTextFrame) and (context_id is None or f.context_id == context_id)
    ]


def spoken_groups(frames) -> list[tuple[str, list[type]]]:
    """(context_id, frame types) per TTSStartedFrame..TTSStoppedFrame group, in order.

    An interruption ends the open group (pipecat sends no TTSStoppedFrame for a context it
    drops) unless that group's frames go on after it (an uninterruptible one)."""
    out: list[tuple[str, list[type]]] = []
    open_ctx = cut = None
    for f in frames:
        if isinstance(f, InterruptionFrame):
            open_ctx, cut = None, open_ctx
        elif cut is not None and getattr(f, "context_id", None) == cut:
            open_ctx, cut = cut, None
        if isinstance(f, TTSStartedFrame):
            assert open_ctx is None, "a group started inside another"
            open_ctx = f.context_id
            out.append((f.context_id, []))
        elif open_ctx is not None:
            if isinstance(f, TTSStoppedFrame):
                assert f.context_id == open_ctx
                open_ctx = None
            elif isinstance(f, (TTSAudioRawFrame, TTSTextFrame)):
                assert f.context_id == open_ctx, "a frame of another context inside a group"
                out[-1][1].append(type(f))
    assert open_ctx is None, "a group never stopped"
    return out


# ------------------------------------------------------------------ frame order, no sleeps
async def test_speak_frames_sent_back_to_back_each_form_one_group_before_the_next_frame(
    talkative_engine,
):
    # pipecat's ordering scenario: nothing waits between the frames, the EndFrame follows
    # at once; every utterance still comes out whole, before the frame sent after it.
    frames = [
        TTSSpeakFrame("The first notice.", append_to_context=False),
        FooFrame(label="1"),
        TTSSpeakFrame("The second notice.", append_to_context=False),
        FooFrame(label="2"),
    ]
    down, up = await run_test(service(talkative_engine), frames_to_send=frames)
    assert errors(up) == []
    kinds = [type(f) for f in down]
    foos = [i for i, k in enumerate(kinds) if k is FooFrame]
    assert len(foos) == 2
    for group in (kinds[: foos[0]], kinds[foos[0] + 1 : foos[1]]):
        # Token streaming: the sentence's announcement opens the context, then its audio and
        # words (with their progress), then the stop.
        assert group[:2] == [TTSStartedFrame, AggregatedTextFrame]
        assert group[-1] is TTSStoppedFrame
        assert set(group[2:-1]) == {TTSAudioRawFrame, TTSTextFrame, AggregatedTextProgressFrame}
    assert [f.label for f in down if isinstance(f, FooFrame)] == ["1", "2"]
    groups = spoken_groups(down)
    assert len(groups) == 2 and groups[0][0] != groups[1][0]
    assert words_of(down, groups[0][0]) == ["The", "first", "notice."]
    assert words_of(down, groups[1][0]) == ["The", "second", "notice."]


async def test_a_second_reply_never_overtakes_the_end_of_the_first(talkative_engine):
    frames = [*llm_reply("Hello there."), *llm_reply("And welcome.")]
    down, up = await run_test(service(talkative_engine), frames_to_send=frames)
    assert errors(up) == []
    turn = [LLMFullResponseStartFrame, TTSStoppedFrame, LLMFullResponseEndFrame]
    assert [type(f) for f in down if isinstance(f, tuple(turn))] == turn * 2
    groups = spoken_groups(down)
    assert [words_of(down, ctx) for ctx, _ in groups] == [["Hello", "there."], ["And", "welcome."]]


# ------------------------------------------------------------------ speak frames and context
@pytest.mark.parametrize("append", [True, False])
async def test_a_speak_frame_says_whether_its_words_join_the_context(talkative_engine, append):
    frames = [TTSSpeakFrame("Hello world, here I am.", append_to_context=append)]
    down, up = await run_test(service(talkative_engine), frames_to_send=frames)
    assert errors(up) == []
    (started,) = [f for f in down if isinstance(f, TTSStartedFrame)]
    assert started.append_to_context is append
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text for f in words] == ["Hello", "world,", "here", "I", "am."]
    assert all(f.append_to_context is append for f in words)
    assert all(f.context_id == started.context_id for f in words)
    pushes = [f for f in down if isinstance(f, LLMAssistantPushAggregationFrame)]
    if append:
        # Outside an LLM reply, the speak frame commits its words itself, after the last.
        (push,) = pushes
        assert push.pts is not None and push.pts > max(f.pts for f in words)
        assert down.index(push) > max(down.index(f) for f in words)
    else:
        assert pushes == []


async def test_token_mode_announces_whole_sentences_and_keeps_spaces(talkative_engine):
    text = "Hi there. How are you today?"
    down, up = await run_test(service(talkative_engine), frames_to_send=llm_reply(text))
    assert errors(up) == []
    anchors = [
        f for f in down if type(f) is AggregatedTextFrame and f.text_type == TextType.SENTENCE
    ]
    assert "".join(f.text for f in anchors).split() == text.split()
    assert all(f.will_be_spoken and not f.append_to_context for f in anchors)
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert {f.segment_id for f in words} <= {f.id for f in anchors}
    parts = [TextPartForConcatenation(f.text, f.includes_inter_frame_spaces) for f in words]
    assert concatenate_aggregated_text(parts) == text
    pts = [f.pts for f in words]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)


async def test_sentence_aggregation_mode_speaks_the_reply_as_one_utterance(talkative_engine):
    tts = service(talkative_engine, text_aggregation_mode=TextAggregationMode.SENTENCE)
    text = "One sentence here. Another one follows."
    down, up = await run_test(tts, frames_to_send=llm_reply(text))
    assert errors(up) == []
    groups = spoken_groups(down)
    assert len(groups) == 1 and TTSAudioRawFrame in groups[0][1]
    assert " ".join(words_of(down)).split() == text.split()


# ------------------------------------------------------------------ uninterruptible speech
async def test_uninterruptible_speech_survives_an_interruption(talkative_engine):
    tts = service(talkative_engine)
    protected = TTSSpeakFrame("Please hold on a moment.", append_to_context=False)
    protected.interruptible = False
    frames = [
        protected,
        SleepFrame(0.05),
        VADUserStartedSpeakingFrame(),
        InterruptionFrame(),
        SleepFrame(0.1),
        TTSSpeakFrame("Next reply."),
        SleepFrame(0.5),
        Probe(),
    ]
    down, up, (snap,) = await run(tts, frames)
    assert errors(up) == []
    # The engine kept the protected turn (nothing rolled back) and spoke the next after it.
    assert [role for role, _ in snap["turns"]] == ["assistant", "assistant"]
    groups = spoken_groups(down)
    assert len(groups) == 2
    (first, kinds1), (second, kinds2) = groups
    assert words_of(down, first) == ["Please", "hold", "on", "a", "moment."]
    assert words_of(down, second) == ["Next", "reply."]
    assert TTSAudioRawFrame in kinds1 and TTSAudioRawFrame in kinds2
    for kind in (TTSStartedFrame, TTSStoppedFrame):
        assert [f.interruptible for f in down if isinstance(f, kind)] == [False, True]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert {f.interruptible for f in audio if f.context_id == first} == {False}
    assert {f.interruptible for f in audio if f.context_id == second} == {True}


async def test_a_queued_uninterruptible_utterance_survives_the_interrupted_one(talkative_engine):
    # The first utterance is still being spoken when the interruption comes: paced at real
    # time (0.5 s ahead), its ~20 text tokens (a frame each, at least) take over a second. (Not
    # paced, a fast model had made both utterances, whole, before it.)
    tts = MossTTSService(
        engine=talkative_engine, settings=MossTTSSettings(greedy=True, lookahead_s=0.5)
    )
    keep = TTSSpeakFrame("Keep this one.", append_to_context=False)
    keep.interruptible = False
    drop = "Drop this one please, it goes on for a good while longer than the interruption."
    frames = [
        TTSSpeakFrame(drop, append_to_context=False),
        keep,
        SleepFrame(0.05),
        InterruptionFrame(),
        SleepFrame(0.1),
    ]
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    after = spoken_groups(down[cut:])
    kept = [ctx for ctx, _ in after]
    assert len(kept) == 1
    assert words_of(down, kept[0]) == ["Keep", "this", "one."]
    assert all(not f.interruptible for f in down[cut:] if isinstance(f, TTSAudioRawFrame))


async def test_a_backchannel_is_spoken_and_kept_out_of_the_context(talkative_engine):
    down, up = await run_test(
        service(talkative_engine), frames_to_send=[BotBackchannelFrame("Mm-hmm.")]
    )
    assert errors(up) == []
    (started,) = [f for f in down if isinstance(f, TTSStartedFrame)]
    assert started.append_to_context is False and started.interruptible is False
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text for f in words] == ["Mm-hmm."]
    assert not any(f.append_to_context for f in words)
    assert not any(isinstance(f, LLMAssistantPushAggregationFrame) for f in down)


# ------------------------------------------------------------------ interruptions
async def test_an_interrupted_reply_is_not_a_silent_context(talkative_engine):
    tts = service(talkative_engine, max_consecutive_zero_audio_contexts=1)
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame("Interrupted"),
        SleepFrame(0.05),  # the text reaches the service before the interruption overtakes it
        InterruptionFrame(),
        SleepFrame(0.2),
        *llm_reply("Spoken after it."),
    ]
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    assert tts.is_usable
    groups = spoken_groups(down)
    assert [words_of(down, ctx) for ctx, _ in groups][-1] == ["Spoken", "after", "it."]


# ------------------------------------------------------------------ audio format
@pytest.mark.parametrize(
    ("init_rate", "pipeline_rate", "out_rate"), [(16000, 24000, 16000), (None, 48000, 48000)]
)
async def test_audio_comes_at_the_service_or_pipeline_rate(
    talkative_engine, init_rate, pipeline_rate, out_rate
):
    tts = service(talkative_engine, sample_rate=init_rate)
    down, up = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("Rate check.")],
        pipeline_params=PipelineParams(audio_out_sample_rate=pipeline_rate),
    )
    assert errors(up) == []
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == out_rate and f.num_channels == 1 for f in audio)
    assert all(len(f.audio) % 2 == 0 for f in audio)
    assert tts.sample_rate == out_rate


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("mode", [TextAggregationMode.TOKEN, TextAggregationMode.SENTENCE])
async def test_metrics_ttfb_per_utterance_and_usage_in_characters(talkative_engine, mode):
    tts = service(talkative_engine, text_aggregation_mode=mode)
    text = "Count these. And these too."
    params = PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    frames = [*llm_reply(text), SleepFrame(0.5), TTSSpeakFrame("Two.")]
    down, up = await run_test(tts, frames_to_send=frames, pipeline_params=params)
    assert errors(up) == []
    data = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    # (Each metric first comes once at value 0 when the pipeline starts, with no model.)
    measured = [d for d in data if d.model is not None and d.processor == tts.name]
    assert sum(isinstance(d, TTFBMetricsData) and d.value > 0 for d in measured) == 2
    usage = [d.value for d in measured if isinstance(d, TTSUsageMetricsData)]
    if mode == TextAggregationMode.TOKEN:  # pipecat counts a streamed reply when it ends
        assert usage == [len(text), len("Two.")]
    else:  # one count per sentence the service was given
        assert usage == [len("Count these."), len("And these too."), len("Two.")]
    # Synthesis happens after run_tts returns: no processing time is measured around it.
    assert not tts.supports_processing_metrics
    assert not [d for d in measured if isinstance(d, ProcessingMetricsData)]


# ------------------------------------------------------------------ settings frames
async def test_a_settings_frame_for_another_service_passes_through(talkative_engine):
    tts = service(talkative_engine)
    other = service(talkative_engine)
    update = TTSUpdateSettingsFrame(delta=MossTTSSettings(top_k=3), service=other)
    frames = [update, TTSSpeakFrame("Same settings."), SleepFrame(0.3), Probe()]
    down, up, (snap,) = await run(tts, frames)
    assert errors(up) == []
    assert update in down
    assert snap["sampling"].top_k == SamplingParams().top_k  # the default, not 3


async def test_a_legacy_settings_dict_is_applied(talkative_engine):
    tts = service(talkative_engine)
    update = TTSUpdateSettingsFrame(settings={"top_k": 3, "temperature": 0.5})
    frames = [update, TTSSpeakFrame("Updated."), SleepFrame(0.3), Probe()]
    _, up, (snap,) = await run(tts, frames)
    assert errors(up) == []
    assert snap["sampling"].top_k == 3 and snap["sampling"].temperature == 0.5


# ------------------------------------------------------------------ cancellation
async def test_cancel_mid_reply_ends_the_pipeline_and_closes_the_session(talkative_engine):
    tts = service(talkative_engine)
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(f" word{i}") for i in range(30)),
        SleepFrame(0.2),
        CancelFrame(),
    ]
    _, up = await run_test(tts, frames_to_send=frames, send_end_frame=False)
    assert errors(up) == []
    assert tts.session is None
    assert talkative_engine.session_ids == []


# ------------------------------------------------------------------ pauses and the end
async def test_a_pause_in_the_llm_text_longer_than_pipecats_idle_end_keeps_one_utterance(
    talkative_engine,
):
    # pipecat ends an audio context after stop_frame_timeout_s (3 s by default) with nothing
    # coming; a reply waiting that long for LLM text must still be one utterance, its words
    # before the pause included.
    first = "This is the first part of a reply,"
    rest = "and then it goes on to its end."
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(" " + w) for w in first.split()),
        SleepFrame(3.5),
        *(LLMTextFrame(" " + w) for w in rest.split()),
        LLMFullResponseEndFrame(),
    ]
    down, up = await run_test(service(talkative_engine), frames_to_send=frames)
    assert errors(up) == []
    ((ctx, kinds),) = spoken_groups(down)
    assert sum(isinstance(f, TTSStartedFrame) for f in down) == 1 and TTSAudioRawFrame in kinds
    assert words_of(down, ctx) == (first + " " + rest).split()


async def test_an_end_frame_mid_reply_lets_it_speak_what_it_has_and_stop(talkative_engine):
    # The LLM reply never ends before the pipeline does: the EndFrame follows its text.
    text = "Ending before the reply ends."
    frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(" " + w) for w in text.split())]
    tts = service(talkative_engine)
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    ((ctx, kinds),) = spoken_groups(down)
    assert TTSAudioRawFrame in kinds
    # pipecat ends the reply's last sentence after the audio contexts end, so its words may
    # never come as word frames; those that do are the reply's, in order.
    words = words_of(down, ctx)
    assert words == text.split()[: len(words)]
    assert tts.session is None


async def test_a_written_off_service_still_ends_each_utterance_it_opens(talkative_engine):
    # pipecat stops giving text to a service it wrote off (too many silent contexts, or a
    # permanent error) but still opens the utterance: it must end, with no audio.
    tts = service(talkative_engine)
    await tts.set_usable(False)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Nobody will hear this.")])
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]
    assert not any(isinstance(f, TTSAudioRawFrame) for f in down)


async def test_an_uninterruptible_speak_frame_behind_an_interrupted_reply_speaks_whole(
    talkative_engine,
):
    # The protected utterance waits for the streaming reply's engine turn; the interruption
    # drops and rolls back that reply, and the protected one then speaks, whole, in order.
    tts = service(talkative_engine)
    protected = TTSSpeakFrame("One more thing.", append_to_context=False)
    protected.interruptible = False
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(f" word{i}") for i in range(3)),
        protected,
        *(LLMTextFrame(f" word{i}") for i in range(3, 12)),
        SleepFrame(0.1),
        InterruptionFrame(),
        SleepFrame(0.1),
        *llm_reply("After that."),
        SleepFrame(0.5),
        Probe(),
    ]
    down, up, (snap,) = await run(tts, frames)
    assert errors(up) == []
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    after = spoken_groups(down[cut:])
    assert [words_of(down, ctx) for ctx, _ in after] == [
        ["One", "more", "thing."],
        ["After", "that."],
    ]
    assert snap["phase"] == "idle"
    assert [role for role, _ in snap["turns"]][-2:] == ["assistant", "assistant"]


async def test_text_the_llm_marks_skip_tts_is_not_spoken(talkative_engine):
    start, text, end = (
        LLMFullResponseStartFrame(),
        LLMTextFrame("Not for speech."),
        LLMFullResponseEndFrame(),
    )
    for f in (start, text, end):
        f.skip_tts = True
    frames = [start, text, end, *llm_reply("Spoken.")]
    down, up = await run_test(service(talkative_engine), frames_to_send=frames)
    assert errors(up) == []
    (group,) = spoken_groups(down)
    assert words_of(down, group[0]) == ["Spoken."]
    skipped = [f for f in down if isinstance(f, AggregatedTextFrame) and f.skip_tts]
    assert [f.text for f in skipped] == ["Not for speech."]


@pytest.mark.parametrize("seed", range(4))
async def test_barge_ins_among_uninterruptible_utterances(talkative_engine, seed):
    # Interruptions land anywhere among streaming replies and protected speak frames: every
    # protected utterance is spoken whole, the rest stop, and the conversation stays usable.
    rng = random.Random(seed)
    frames, protected = [], []
    for i in range(8):
        tokens = [LLMTextFrame(f" w{i}x{k}") for k in range(rng.randint(2, 8))]
        frames += [LLMFullResponseStartFrame(), *tokens[:1]]
        if rng.random() < 0.6:
            speak = TTSSpeakFrame(f"Protected number {i}.", append_to_context=False)
            speak.interruptible = False
            protected.append(speak.text.split())
            frames.append(speak)
        # (At least 50 ms: the interruption, a system frame, must not overtake the text.)
        frames += [*tokens[1:], SleepFrame(rng.uniform(0.05, 0.2)), InterruptionFrame()]
    frames += [*llm_reply("That is all."), SleepFrame(1.0), Probe()]
    down, up, (snap,) = await run(service(talkative_engine), frames)
    assert errors(up) == []
    spoken = [words_of(down, ctx) for ctx, _ in spoken_groups(down)]
    assert [w for w in spoken if w[:1] == ["Protected"]] == protected
    assert spoken[-1] == ["That", "is", "all."], spoken
    assert snap["phase"] == "idle"
    assert all(role == "assistant" for role, _ in snap["turns"])


async def test_bot_speaking_frames_without_a_transport_never_hold_a_reply(talkative_engine):
    # pipecat's tests model the output transport by sending BotStarted/BotStoppedSpeakingFrame
    # themselves; with no transport downstream, a reply after them still plays and ends.
    frames = [
        TTSSpeakFrame("First one here."),
        SleepFrame(0.5),
        BotStartedSpeakingFrame(),
        BotStoppedSpeakingFrame(),
        TTSSpeakFrame("Second one."),
        FooFrame(label="after"),
    ]
    down, up = await run_test(service(talkative_engine), frames_to_send=frames)
    assert errors(up) == []
    groups = spoken_groups(down)
    spoken = [words_of(down, ctx) for ctx, _ in groups]
    assert spoken == [["First", "one", "here."], ["Second", "one."]]
    stops = [i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame)]
    assert [f.label for f in down[stops[-1] :] if isinstance(f, FooFrame)] == ["after"]
