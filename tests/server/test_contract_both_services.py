"""pipecat's TTS contract scenarios on both MOSS services: ``MossTTSService`` (in process) and
``MossRemoteTTSService`` (the same tiny engine behind an engine server), with pipecat's
``run_test``.

The scenarios of pipecat's own TTS tests (tests/test_tts_frame_ordering.py and the metrics and
silent-context tests) that tests/service/test_pipecat_contract.py runs on the local service
alone, or not at all: replies in order with their end after their words, word times and the
LLM end frame's pts, speak frames and the assistant aggregation, text marked skip_tts, sample
rates, usage metrics in either aggregation mode (``aggregate_sentences`` included), text
transforms (spoken as transformed, kept in the context as written) and one that strips
everything, a coarse LLM chunk across a sentence end, each segment's announcement before its
progress, bare ``AggregatedTextFrame``s with a skipped text type, ``pause_frame_processing``,
cancellation, and the constructor arguments the services cannot honour.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    BotBackchannelFrame,
    CancelFrame,
    EndFrame,
    Frame,
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
)
from pipecat.metrics.metrics import TTFBMetricsData, TTSUsageMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text

from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.conftest import assistant_aggregator
from ..service.test_heard_clock import PlayingOutputTransport
from ..service.test_pipecat_contract import FooFrame, errors, llm_reply, spoken_groups, words_of
from .conftest import TALKATIVE


@pytest.fixture(params=["local", "remote"])
async def make_tts(request, make_tiny_engine, make_server):
    """Makes the service under test (``**kwargs``: TTSService arguments) on a tiny engine whose
    turns never end before their text was read, nor before 4 frames."""
    engine = make_tiny_engine(
        max_sessions=4,
        **TALKATIVE,
    )
    settings = MossTTSSettings(greedy=True)
    if request.param == "local":
        return lambda settings=settings, **kwargs: MossTTSService(
            engine=engine, settings=settings, **kwargs
        )
    server = await make_server(engine)
    return lambda settings=settings, **kwargs: MossRemoteTTSService(
        url=server.url, settings=settings, **kwargs
    )


def spoken(down) -> list[list[str]]:
    return [words_of(down, ctx) for ctx, _ in spoken_groups(down)]


class Tap(FrameProcessor):
    """Keeps every frame going downstream (the assistant aggregator after it takes some)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
        await self.push_frame(frame, direction)


async def assistant_messages(tts, frames) -> tuple[list, list, list[str]]:
    """Runs ``frames`` through the TTS and an assistant aggregator; returns the frames the TTS
    pushed and what the LLM context's assistant messages say."""
    context, tap = LLMContext(), Tap()
    pipeline = Pipeline([tts, tap, assistant_aggregator(context)])
    _, up = await run_test(pipeline, frames_to_send=frames)
    said = [m["content"] for m in context.get_messages() if m["role"] == "assistant"]
    return tap.frames, up, said


# ------------------------------------------------------------------ replies and their ends
async def test_replies_come_in_order_each_with_its_words_before_its_end(make_tts):
    frames = [*llm_reply("Hello there."), *llm_reply("And welcome back.")]
    down, up = await run_test(make_tts(), frames_to_send=frames)
    assert errors(up) == []
    turn = [LLMFullResponseStartFrame, TTSStoppedFrame, LLMFullResponseEndFrame]
    assert [type(f) for f in down if isinstance(f, tuple(turn))] == turn * 2
    assert spoken(down) == [["Hello", "there."], ["And", "welcome", "back."]]
    # One context per reply, on everything the reply's text and audio make.
    contexts = [ctx for ctx, _ in spoken_groups(down)]
    text = [f for f in down if isinstance(f, (AggregatedTextFrame, AggregatedTextProgressFrame))]
    assert len(set(contexts)) == 2 and text and {f.context_id for f in text} == set(contexts)
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert all(a.pts < b.pts for a, b in pairwise(words))
    # Each reply's end frame follows its words, in order and on the transport's clock.
    for end in [f for f in down if isinstance(f, LLMFullResponseEndFrame)]:
        before = [w for w in words if down.index(w) < down.index(end)]
        assert before and end.pts is not None and end.pts >= before[-1].pts


@pytest.mark.parametrize("append", [True, False])
async def test_a_speak_frame_commits_its_words_only_when_it_joins_the_context(make_tts, append):
    frames = [TTSSpeakFrame("Hello world, here I am.", append_to_context=append)]
    down, up, said = await assistant_messages(make_tts(), frames)
    assert errors(up) == []
    (started,) = [f for f in down if isinstance(f, TTSStartedFrame)]
    assert started.append_to_context is append
    assert spoken(down) == [["Hello", "world,", "here", "I", "am."]]
    assert said == (["Hello world, here I am."] if append else [])


async def test_text_marked_skip_tts_is_passed_on_unspoken(make_tts):
    start, text, end = (
        LLMFullResponseStartFrame(),
        LLMTextFrame("Not for speech."),
        LLMFullResponseEndFrame(),
    )
    for f in (start, text, end):
        f.skip_tts = True
    down, up = await run_test(make_tts(), frames_to_send=[start, text, end, *llm_reply("Said.")])
    assert errors(up) == []
    assert spoken(down) == [["Said."]]
    skipped = [f for f in down if isinstance(f, AggregatedTextFrame) and f.skip_tts]
    assert [f.text for f in skipped] == ["Not for speech."]


@pytest.mark.parametrize(
    ("init_rate", "pipeline_rate"),
    [(16000, 24000), (None, 8000), (None, 16000), (44100, 16000), (None, 44100), (48000, 24000)],
)
async def test_audio_is_mono_at_the_service_or_else_the_pipeline_rate(
    make_tts, init_rate, pipeline_rate
):
    tts = make_tts(sample_rate=init_rate)
    params = PipelineParams(audio_out_sample_rate=pipeline_rate)
    down, up = await run_test(
        tts, frames_to_send=[TTSSpeakFrame("Rate check.")], pipeline_params=params
    )
    assert errors(up) == []
    rate = init_rate or pipeline_rate
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and {(f.sample_rate, f.num_channels) for f in audio} == {(rate, 1)}
    assert all(len(f.audio) % 2 == 0 for f in audio) and tts.sample_rate == rate
    assert spoken(down) == [["Rate", "check."]]


# ------------------------------------------------------------------ aggregation and metrics
@pytest.mark.parametrize(
    ("kwargs", "sentences"),
    [
        ({}, False),  # the services' default: token streaming
        ({"aggregate_sentences": False}, False),  # pipecat's deprecated switch, either way
        ({"aggregate_sentences": True}, True),
        ({"text_aggregation_mode": TextAggregationMode.SENTENCE}, True),
    ],
)
async def test_the_aggregation_mode_asked_for_is_the_one_used(make_tts, kwargs, sentences):
    tts = make_tts(**kwargs)
    text = "Count these. And these too."
    params = PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    down, up = await run_test(tts, frames_to_send=llm_reply(text), pipeline_params=params)
    assert errors(up) == []
    (reply,) = spoken(down)
    assert reply == text.split()
    data = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    measured = [d for d in data if d.model is not None and d.processor == tts.name]
    assert sum(isinstance(d, TTFBMetricsData) and d.value > 0 for d in measured) == 1
    usage = [d.value for d in measured if isinstance(d, TTSUsageMetricsData)]
    # pipecat counts each sentence it hands over, or a streamed reply as it ends.
    assert usage == ([len("Count these."), len("And these too.")] if sentences else [len(text)])


async def test_a_coarse_llm_chunk_across_a_sentence_end_is_split_at_it(make_tts):
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame("Hey"),
        LLMTextFrame(" there! I'm here."),
        LLMFullResponseEndFrame(),
    ]
    down, up, said = await assistant_messages(make_tts(), frames)
    assert errors(up) == []
    anchors = [f for f in down if type(f) is AggregatedTextFrame and f.will_be_spoken]
    assert [f.text for f in anchors] == ["Hey there!", " I'm here."]
    progress = [f for f in down if isinstance(f, AggregatedTextProgressFrame)]
    first = [p.accumulated_text for p in progress if p.segment_id == anchors[0].id]
    assert first == ["Hey", "Hey there!"]
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    parts = [TextPartForConcatenation(f.text, f.includes_inter_frame_spaces) for f in words]
    assert concatenate_aggregated_text(parts) == "Hey there! I'm here."
    assert said == ["Hey there! I'm here."]


async def test_each_segment_is_announced_once_before_its_progress(make_tts):
    frames = [
        TTSSpeakFrame("Comment ca va.", append_to_context=False),
        TTSSpeakFrame("Bom dia.", append_to_context=False),
    ]
    down, up = await run_test(make_tts(), frames_to_send=frames)
    assert errors(up) == []
    anchors = [f for f in down if type(f) is AggregatedTextFrame and f.will_be_spoken]
    assert [f.text for f in anchors] == ["Comment ca va.", "Bom dia."]
    progress = [f for f in down if isinstance(f, AggregatedTextProgressFrame)]
    for anchor in anchors:  # on the transport's clock queue, ahead of what it announces
        mine = [p for p in progress if p.segment_id == anchor.id]
        assert mine and anchor.pts is not None and anchor.pts <= min(p.pts for p in mine)
        assert down.index(anchor) < down.index(mine[0])


# ------------------------------------------------------------------ text transforms
async def test_transformed_text_is_spoken_and_the_context_keeps_the_llms_text(make_tts):
    async def spell_out(text: str, _type: str) -> str:
        return text.replace("&", "and")

    tts = make_tts(text_transforms=[("*", spell_out)])
    down, up, said = await assistant_messages(tts, llm_reply("Tom & Jerry are here."))
    assert errors(up) == []
    assert spoken(down) == [["Tom", "and", "Jerry", "are", "here."]]
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.raw_text for f in words] == ["Tom", "&", "Jerry", "are", "here."]
    assert said == ["Tom & Jerry are here."]


async def test_a_transform_that_leaves_nothing_speaks_nothing_and_holds_nothing(make_tts):
    async def strip(_text: str, _type: str) -> str:
        return ""

    frames = [*llm_reply("Leaked reasoning tokens."), FooFrame(label="after")]
    down, up = await run_test(make_tts(text_transforms=[("*", strip)]), frames_to_send=frames)
    assert errors(up) == []
    assert not any(isinstance(f, (TTSStartedFrame, TTSAudioRawFrame)) for f in down)
    assert [f.label for f in down if isinstance(f, FooFrame)] == ["after"]


# ------------------------------------------------------------------ bare aggregated text
async def test_bare_aggregated_text_is_one_utterance_and_skipped_text_follows_it(make_tts):
    # Text that comes already aggregated, outside any LLM reply: no end of reply will come to
    # end it, so it is spoken (and its words matched) as a whole utterance; a text type the
    # service skips comes out after the words spoken before it, for the context.
    frames = [
        AggregatedTextFrame("hello world", TextType.SENTENCE),
        AggregatedTextFrame("some code", "code"),
        TTSSpeakFrame("And then.", append_to_context=False),
    ]
    down, up = await run_test(make_tts(skip_text_types=["code"]), frames_to_send=frames)
    assert errors(up) == []
    assert spoken(down) == [["hello", "world"], ["And", "then."]]
    (skipped,) = [f for f in down if isinstance(f, AggregatedTextFrame) and f.text == "some code"]
    assert skipped.skip_tts and skipped.append_to_context
    first_words = [f for f in down if isinstance(f, TTSTextFrame) and f.text in ("hello", "world")]
    assert down.index(skipped) > max(down.index(f) for f in first_words)


async def test_bare_aggregated_text_gives_each_word_its_span_of_the_raw_text(make_tts):
    frame = AggregatedTextFrame("4111 1111", TextType.SENTENCE, raw_text="<card>4111 1111</card>")
    down, up = await run_test(make_tts(), frames_to_send=[frame])
    assert errors(up) == []
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    spans = [("4111", "<card>4111"), ("1111", "1111</card>")]
    assert [(f.text, f.raw_text) for f in words] == spans


# ------------------------------------------------------------------ pausing frame processing
async def test_paused_frame_processing_keeps_each_group_whole_before_the_next_frame(make_tts):
    # pipecat holds the frames after an utterance until its audio context ends: every
    # context a MOSS reply opens ends, so the pause always ends.
    frames = [
        TTSSpeakFrame("The first notice.", append_to_context=False),
        FooFrame(label="1"),
        *llm_reply("A reply."),
        FooFrame(label="2"),
        TTSSpeakFrame("The last one.", append_to_context=False),
        FooFrame(label="3"),
    ]
    down, up = await run_test(make_tts(pause_frame_processing=True), frames_to_send=frames)
    assert errors(up) == []
    assert spoken(down) == [["The", "first", "notice."], ["A", "reply."], ["The", "last", "one."]]
    marks = [f for f in down if isinstance(f, (FooFrame, TTSStoppedFrame))]
    labels = [f.label if isinstance(f, FooFrame) else "stop" for f in marks]
    assert labels == ["stop", "1", "stop", "2", "stop", "3"]


async def test_an_interruption_while_frames_are_paused_lets_them_flow_again(make_tts):
    frames = [
        *llm_reply("Cut short by the user, this reply goes on and on and on."),
        SleepFrame(0.1),
        InterruptionFrame(),
        SleepFrame(0.1),
        FooFrame(label="after"),
        TTSSpeakFrame("Still here.", append_to_context=False),
    ]
    down, up = await run_test(make_tts(pause_frame_processing=True), frames_to_send=frames)
    assert errors(up) == []
    assert [f.label for f in down if isinstance(f, FooFrame)] == ["after"]
    assert spoken(down)[-1] == ["Still", "here."]


# ------------------------------------------------------------------ silent contexts
async def test_an_interrupted_reply_is_not_counted_as_a_silent_one(make_tts):
    tts = make_tts(max_consecutive_zero_audio_contexts=1)
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
    assert tts.is_usable and spoken(down)[-1] == ["Spoken", "after", "it."]


async def test_a_written_off_service_ends_each_utterance_it_opens_silently(make_tts):
    tts = make_tts()
    await tts.set_usable(False)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Nobody hears this.")])
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]
    assert not any(isinstance(f, TTSAudioRawFrame) for f in down)


async def test_a_backchannel_is_spoken_whole_and_kept_out_of_the_context(make_tts):
    down, up, said = await assistant_messages(make_tts(), [BotBackchannelFrame("Mm-hmm.")])
    assert errors(up) == []
    (started,) = [f for f in down if isinstance(f, TTSStartedFrame)]
    assert started.append_to_context is False and started.interruptible is False
    assert spoken(down) == [["Mm-hmm."]] and said == []


# ------------------------------------------------------------------ cancellation
async def test_cancel_mid_reply_closes_the_session(make_tts):
    tts = make_tts()
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(f" word{i}") for i in range(30)),
        SleepFrame(0.2),
        CancelFrame(),
    ]
    _, up = await run_test(tts, frames_to_send=frames, send_end_frame=False)
    assert errors(up) == []
    assert tts.session is None


class TalkOverTheEnd(FrameProcessor):
    """Passes every frame on; once the ``EndFrame`` has passed, pushes an ``InterruptionFrame``
    after each of ``delays`` (s): a caller talking over the bot's goodbye."""

    def __init__(self, delays: tuple[float, ...]) -> None:
        super().__init__()
        self.delays = delays

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, EndFrame):
            self.create_task(self._talk())

    async def _talk(self) -> None:
        for delay in self.delays:
            await asyncio.sleep(delay)
            await self.push_frame(InterruptionFrame())


# The service holds the EndFrame until what it has queued has played: seconds here.
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("lookahead_s", "delays", "transport"),
    [(None, (1.0,), False), (0.5, (0.05, 0.05), True)],
    ids=["once", "twice-to-a-transport"],
)
async def test_an_interruption_while_the_service_ends_still_ends_the_pipeline(
    make_tts, lookahead_s, delays, transport
):
    # pipecat 1.14's TTSService.stop lost its EndFrame to an interruption (see
    # pipecat_compat.stop_through_interruptions): the pipeline never ended.
    tts = make_tts(settings=MossTTSSettings(greedy=True, lookahead_s=lookahead_s))
    goodbye = "This is a long goodbye that goes on for a good while, so the user talks over it."
    output = [PlayingOutputTransport()] if transport else []
    pipeline = Pipeline([TalkOverTheEnd(delays), tts, *output])
    down, up = await run_test(pipeline, frames_to_send=[TTSSpeakFrame(goodbye)])
    assert errors(up) == []
    assert any(isinstance(f, TTSStartedFrame) for f in down)
    assert tts.session is None


async def test_a_speak_frame_outside_a_reply_pushes_its_aggregation_after_its_words(make_tts):
    down, up = await run_test(make_tts(), frames_to_send=[TTSSpeakFrame("Hello there.")])
    assert errors(up) == []
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    (push,) = [f for f in down if isinstance(f, LLMAssistantPushAggregationFrame)]
    assert push.pts is not None and push.pts > max(f.pts for f in words)


# ------------------------------------------------------------------ construction
@pytest.mark.parametrize("cls", [MossTTSService, MossRemoteTTSService])
@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"push_text_frames": True}, "push_text_frames=False"),
        ({"push_start_frame": False}, "push_start_frame=True"),
        ({"reuse_context_id_within_turn": False}, "reuse_context_id_within_turn=True"),
        (
            {"aggregate_sentences": False, "reuse_context_id_within_turn": False},
            "reuse_context_id_within_turn=True",
        ),
    ],
)
def test_arguments_the_services_cannot_honour_are_refused_clearly(cls, kwargs, says):
    where = {"url": "ws://127.0.0.1:1/v1/ws"} if cls is MossRemoteTTSService else {}
    with pytest.raises(ValueError, match=says):
        cls(**where, **kwargs)


@pytest.mark.parametrize("cls", [MossTTSService, MossRemoteTTSService])
def test_arguments_the_services_honour_are_taken(cls):
    where = {"url": "ws://127.0.0.1:1/v1/ws"} if cls is MossRemoteTTSService else {}
    cls(**where, push_text_frames=False, push_start_frame=True, pause_frame_processing=True)
    cls(**where, aggregate_sentences=True, reuse_context_id_within_turn=False)
