"""More of pipecat 1.14's ``TTSService`` behaviour users rely on, on both MOSS services (the
fixture and helpers of tests/server/test_contract_both_services.py): settings updates during a
call (sampling, a model swap refused, keys no field takes, a voice file refused), a speak frame
during an LLM reply, replies with no text, interruptions before any audio, the output rates a
transport asks for, pipecat's own stop frames and the silence after them, ``StopFrame``, text
filters and transformers added after construction, metrics per reply, and fail-over in a
``ServiceSwitcher``.
"""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    CancelFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    ManuallySwitchServiceFrame,
    MetricsFrame,
    StopFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData, TTSUsageMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.service_switcher import (
    ServiceSwitcher,
    ServiceSwitcherStrategyFailover,
    ServiceSwitcherStrategyManual,
)
from pipecat.pipeline.task import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language
from pipecat.utils.text.markdown_text_filter import MarkdownTextFilter

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..service.test_pipecat_contract import errors, llm_reply, spoken_groups, words_of
from . import test_contract_both_services as both_services
from .test_contract_both_services import assistant_messages, spoken

make_tts = both_services.make_tts  # the fixture: both services on the same tiny engine


# ------------------------------------------------------------------ settings during a call
async def test_a_sampling_update_between_replies_is_taken_and_both_replies_speak(make_tts):
    tts = make_tts()
    update = TTSUpdateSettingsFrame(
        delta=MossTTSSettings(top_k=3, temperature=0.5, language=Language.DE)
    )
    frames = [*llm_reply("Before it."), update, *llm_reply("After it.")]
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    assert spoken(down) == [["Before", "it."], ["After", "it."]]
    settings = tts.settings
    assert (settings.top_k, settings.temperature, settings.language) == (3, 0.5, Language.DE)
    assert update not in down  # it was this service's: pipecat takes it


async def test_a_model_swap_is_one_error_and_the_rest_of_the_update_is_taken(make_tts):
    tts = make_tts()
    model = tts.settings.model
    update = TTSUpdateSettingsFrame(delta=MossTTSSettings(model="another-model", top_k=5))
    down, up = await run_test(tts, frames_to_send=[update, *llm_reply("Still speaking.")])
    (error,) = [f for f in up if f.__class__.__name__ == "ErrorFrame"]
    assert isinstance(error.exception, InvalidInputError) and "another-model" in error.error
    assert tts.settings.model == model and tts.settings.top_k == 5
    assert spoken(down) == [["Still", "speaking."]]


@pytest.mark.parametrize("form", ["delta", "legacy_dict"])
async def test_a_bad_sampling_update_is_one_error_and_later_updates_are_taken(make_tts, form):
    # Its sampling and limits are refused whole, at once (the rest of it is taken), so the
    # settings never hold a value the session refused: before, they kept the bad temperature
    # (which the session never had) and every later sampling update was sent with it.
    tts = make_tts()
    before = (tts.settings.temperature, tts.settings.top_k)
    bad = dict(temperature=-1.0, top_k=7, language=Language.DE)
    update = (
        TTSUpdateSettingsFrame(delta=MossTTSSettings(**bad))
        if form == "delta"
        else TTSUpdateSettingsFrame(settings=bad)  # pipecat's deprecated form, still taken
    )
    frames = [update, *llm_reply("Still speaking.")]
    frames += [TTSUpdateSettingsFrame(delta=MossTTSSettings(seed=3)), *llm_reply("And again.")]
    down, up = await run_test(tts, frames_to_send=frames)
    (error,) = [f for f in up if f.__class__.__name__ == "ErrorFrame"]
    assert isinstance(error.exception, InvalidInputError) and "temperature" in error.error
    assert (tts.settings.temperature, tts.settings.top_k) == before
    assert (tts.settings.language, tts.settings.seed) == (Language.DE, 3)
    assert spoken(down) == [["Still", "speaking."], ["And", "again."]]


async def test_keys_no_setting_takes_are_kept_as_extra_and_change_nothing_else(make_tts):
    # pipecat's legacy dict update: a key no field takes goes into ``extra`` (its documented
    # behaviour for service-specific keys); the service speaks on with its sampling as it was.
    tts = make_tts()
    top_k = tts.settings.top_k
    update = TTSUpdateSettingsFrame(settings={"speed": 1.2, "top_k": top_k})
    down, up = await run_test(tts, frames_to_send=[update, *llm_reply("Unchanged voice.")])
    assert errors(up) == []
    assert tts.settings.extra == {"speed": 1.2} and tts.settings.top_k == top_k
    assert spoken(down) == [["Unchanged", "voice."]]


async def test_a_voice_update_without_a_voice_dir_is_one_error_and_the_voice_stays(
    make_tts, tmp_path
):
    wav = tmp_path / "voice.wav"
    wav.write_bytes(b"RIFF")  # never read: the update may not name a file at all
    tts = make_tts()
    update = TTSUpdateSettingsFrame(delta=MossTTSSettings(voice=str(wav)))
    down, up = await run_test(tts, frames_to_send=[update, *llm_reply("Same voice.")])
    (error,) = errors(up)
    assert "voice_dir" in error
    assert tts.settings.voice is None and spoken(down) == [["Same", "voice."]]


# ------------------------------------------------------------------ speak frames and replies
async def test_a_speak_frame_during_an_llm_reply_is_spoken_whole_after_it(make_tts):
    reply = "The reply keeps going with every word it has."
    tokens = [w if i == 0 else " " + w for i, w in enumerate(reply.split())]
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in tokens[:3]),
        TTSSpeakFrame("Meanwhile, a notice.", append_to_context=False),
        *(LLMTextFrame(t) for t in tokens[3:]),
        LLMFullResponseEndFrame(),
    ]
    down, up, said = await assistant_messages(make_tts(), frames)
    assert errors(up) == []
    assert spoken(down) == [reply.split(), ["Meanwhile,", "a", "notice."]]
    assert said == [reply]


async def test_a_reply_with_no_text_opens_nothing_and_the_next_one_speaks(make_tts):
    frames = [
        LLMFullResponseStartFrame(),
        LLMFullResponseEndFrame(),
        LLMFullResponseStartFrame(),
        LLMTextFrame("   "),
        LLMFullResponseEndFrame(),
        *llm_reply("Now words."),
    ]
    down, up = await run_test(make_tts(), frames_to_send=frames)
    assert errors(up) == []
    assert spoken(down) == [["Now", "words."]]
    assert sum(isinstance(f, LLMFullResponseEndFrame) for f in down) == 3


@pytest.mark.parametrize("where", ["first", "after_text"])
async def test_an_interruption_before_any_audio_leaves_the_next_reply_whole(make_tts, where):
    first = (
        [InterruptionFrame()]
        if where == "first"
        # The text reaches the service before the interruption overtakes it (a system frame);
        # with fewer text tokens than the model's text delay, no audio can come before it.
        else [LLMFullResponseStartFrame(), LLMTextFrame("Never"), SleepFrame(0.05)]
    )
    first += [] if where == "first" else [InterruptionFrame()]
    down, up, said = await assistant_messages(make_tts(), [*first, *llm_reply("Spoken whole.")])
    assert errors(up) == []
    # (pipecat sent the cut reply's TTSStartedFrame as its context opened; nothing followed)
    assert spoken(down)[-1] == ["Spoken", "whole."] and said == ["Spoken whole."]
    assert "Never" not in [f.text for f in down if isinstance(f, TTSTextFrame)]


@pytest.mark.parametrize("append", [True, False])
async def test_queued_speak_frames_each_speak_whole_and_join_the_context_as_asked(make_tts, append):
    texts = ["First notice.", "Second one.", "And a third."]
    frames = [TTSSpeakFrame(t, append_to_context=append) for t in texts]
    down, up, said = await assistant_messages(make_tts(), frames)
    assert errors(up) == []
    assert spoken(down) == [t.split() for t in texts]
    assert said == (texts if append else [])


async def test_a_speak_frame_joining_the_context_during_a_reply_is_kept_with_it(make_tts):
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame("The reply"),
        TTSSpeakFrame("A notice.", append_to_context=True),
        LLMTextFrame(" goes on."),
        LLMFullResponseEndFrame(),
    ]
    down, up, said = await assistant_messages(make_tts(), frames)
    assert errors(up) == []
    assert spoken(down) == [["The", "reply", "goes", "on."], ["A", "notice."]]
    # pipecat commits what was spoken in an LLM turn at its end, in the order it was spoken.
    assert said == ["The reply goes on. A notice."]


async def test_an_end_frame_mid_reply_speaks_what_it_has_and_closes_the_session(make_tts):
    text = "Ending before the reply ends."
    frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(" " + w) for w in text.split())]
    tts = make_tts()
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    ((_, kinds),) = spoken_groups(down)
    assert TTSAudioRawFrame in kinds and tts.session is None
    words = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert words == text.split()[: len(words)]


class SessionSpy(FrameProcessor):
    """Notes each session the TTS before it held while frames passed."""

    def __init__(self, tts) -> None:
        super().__init__()
        self._tts, self.sessions = tts, []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if self._tts.session is not None and self._tts.session not in self.sessions:
            self.sessions.append(self._tts.session)
        await self.push_frame(frame, direction)


@pytest.mark.parametrize("what", ["before_audio", "reply", "uninterruptible"])
async def test_a_cancel_closes_the_one_session_whatever_is_speaking(make_tts, what):
    if what == "uninterruptible":
        speech = TTSSpeakFrame("A notice no one may cut short, " * 4, append_to_context=False)
        speech.interruptible = False
        frames = [speech]
    else:
        words = 3 if what == "before_audio" else 30  # 3 tokens: fewer than the text delay
        frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(f" w{i}") for i in range(words))]
    tts = make_tts()
    spy = SessionSpy(tts)
    frames += [SleepFrame(0.2), CancelFrame()]
    _, up = await run_test(Pipeline([tts, spy]), frames_to_send=frames, send_end_frame=False)
    assert errors(up) == []
    (session,) = spy.sessions
    assert session.closed and tts.session is None


# ------------------------------------------------------------------ output audio
async def test_pipecats_own_stop_frames_add_no_second_stop(make_tts):
    tts = make_tts(push_stop_frames=True, stop_frame_timeout_s=0.5)
    frames = [*llm_reply("One reply."), TTSSpeakFrame("And a notice.")]
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    assert spoken(down) == [["One", "reply."], ["And", "a", "notice."]]  # pairs, one stop each
    assert sum(isinstance(f, TTSStoppedFrame) for f in down) == 2


async def test_the_silence_asked_for_comes_with_each_stop(make_tts):
    # pipecat pushes the silence as the TTSStoppedFrame passes, just ahead of it.
    tts = make_tts(sample_rate=16000, push_silence_after_stop=True, silence_time_s=0.25)
    frames = [*llm_reply("Then silence."), TTSSpeakFrame("Again.", append_to_context=False)]
    down, up = await run_test(tts, frames_to_send=frames)
    assert errors(up) == []
    silences = [f for f in down if isinstance(f, TTSAudioRawFrame) and f.context_id is None]
    stops = [down.index(f) for f in down if isinstance(f, TTSStoppedFrame)]
    assert len(stops) == 2 and [down.index(f) + 1 for f in silences] == stops
    assert {(f.sample_rate, f.audio) for f in silences} == {(16000, bytes(4000 * 2))}  # 0.25 s
    words = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert words == ["Then", "silence.", "Again."]


async def test_after_a_stop_frame_the_service_goes_on_in_the_next_pipeline(make_tts):
    # StopFrame stops the pipeline and keeps its processors running, to be used again (pipecat
    # queues it behind the audio in flight): the conversation goes on in the same session.
    tts = make_tts()
    frames = [*llm_reply("Before the stop."), StopFrame()]
    down, up = await run_test(tts, frames_to_send=frames, send_end_frame=False)
    assert errors(up) == []
    assert spoken(down) == [["Before", "the", "stop."]]
    (stop,) = [i for i, f in enumerate(down) if isinstance(f, StopFrame)]
    assert stop > max(i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame))
    session = tts.session
    assert session is not None
    frames = [*llm_reply("After it."), StopFrame()]
    down, up = await run_test(tts, frames_to_send=frames, send_end_frame=False)
    assert errors(up) == []
    assert spoken(down) == [["After", "it."]] and tts.session is session
    _, up = await run_test(tts, frames_to_send=[])  # ends: the session closes
    assert errors(up) == [] and tts.session is None


async def test_frames_carry_the_transport_destination_asked_for(make_tts):
    tts = make_tts(transport_destination="phone")
    down, up = await run_test(tts, frames_to_send=llm_reply("Routed audio."))
    assert errors(up) == []
    kinds = (TTSStartedFrame, TTSAudioRawFrame, TTSTextFrame, TTSStoppedFrame)
    routed = [f for f in down if isinstance(f, kinds)]
    assert {type(f) for f in routed} == set(kinds)
    assert {f.transport_destination for f in routed} == {"phone"}


# ------------------------------------------------------------------ text filters, transformers
async def test_a_markdown_filter_speaks_plain_words_and_the_context_keeps_the_llms_text(make_tts):
    with pytest.warns(DeprecationWarning):  # deprecated in 1.14, still taken
        tts = make_tts(text_filters=[MarkdownTextFilter()])
    down, up, said = await assistant_messages(tts, llm_reply("A **bold** move here."))
    assert errors(up) == []
    assert spoken(down) == [["A", "bold", "move", "here."]]
    assert said == ["A **bold** move here."]


async def test_a_transformer_added_after_construction_applies_to_the_next_reply(make_tts):
    async def spell_out(text: str, _type: str) -> str:
        return text.replace("&", "and")

    tts = make_tts()
    tts.add_text_transformer(spell_out)
    down, up, said = await assistant_messages(tts, llm_reply("Salt & pepper."))
    assert errors(up) == []
    assert spoken(down) == [["Salt", "and", "pepper."]]
    assert said == ["Salt & pepper."]


async def test_a_trailing_space_for_each_sentence_changes_no_word(make_tts):
    tts = make_tts(text_aggregation_mode=TextAggregationMode.SENTENCE, append_trailing_space=True)
    text = "First sentence here. Then the second!"
    down, up, said = await assistant_messages(tts, llm_reply(text))
    assert errors(up) == []
    assert spoken(down) == [text.split()] and said == [text]


# ------------------------------------------------------------------ metrics
async def test_each_reply_has_one_ttfb_its_usage_and_no_processing_time(make_tts):
    # Held frames keep each reply's TTFB its own: pipecat measures from the opening of the
    # latest audio context to the next first audio, so a reply opened while the previous one
    # is still to play shares its measurement (pipecat's base class, whatever the service).
    tts = make_tts(pause_frame_processing=True)
    params = PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    texts = ["First reply.", "Second one here."]
    frames = [*llm_reply(texts[0]), *llm_reply(texts[1])]
    down, up = await run_test(tts, frames_to_send=frames, pipeline_params=params)
    assert errors(up) == []
    data = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    mine = [d for d in data if d.model is not None and d.processor == tts.name]
    assert sum(isinstance(d, TTFBMetricsData) and d.value > 0 for d in mine) == 2
    assert [d.value for d in mine if isinstance(d, TTSUsageMetricsData)] == [len(t) for t in texts]
    assert not [d for d in mine if isinstance(d, ProcessingMetricsData)]
    assert len(spoken_groups(down)) == 2


# ------------------------------------------------------------------ fail-over
@pytest.fixture
async def make_refused(request, make_tiny_engine, make_server):
    """A service of the kind under test whose engine has no free conversation slot."""
    engine = make_tiny_engine(max_sessions=1)
    await engine.acreate_session()  # the only slot, held for the test
    if request.node.callspec.params["make_tts"] == "local":
        return lambda: MossTTSService(engine=engine)
    server = await make_server(engine)
    return lambda: MossRemoteTTSService(url=server.url)


async def test_a_refused_service_in_a_failover_switcher_hands_the_call_to_the_next(
    make_tts, make_refused
):
    primary, backup = make_refused(), make_tts()
    switcher = ServiceSwitcher([primary, backup], ServiceSwitcherStrategyFailover)
    down, up = await run_test(switcher, frames_to_send=llm_reply("The backup speaks."))
    assert errors(up) == []  # the switcher answered for the refusal by switching
    assert not primary.is_usable and switcher.strategy.active_service is backup
    assert spoken(down) == [["The", "backup", "speaks."]]


async def test_a_manual_switch_between_replies_hands_the_next_one_over(make_tts):
    first, second = make_tts(), make_tts()
    spies = SessionSpy(first), SessionSpy(second)
    switcher = ServiceSwitcher([first, second], ServiceSwitcherStrategyManual)
    frames = [
        *llm_reply("Said by the first."),
        ManuallySwitchServiceFrame(service=second),
        *llm_reply("Said by the second."),
    ]
    down, up = await run_test(Pipeline([switcher, *spies]), frames_to_send=frames)
    assert errors(up) == []
    # The switch takes effect as it reaches the switcher, while the first may still be
    # speaking (pipecat's switcher, whatever the services): each reply is whole in its context.
    contexts = [f.context_id for f in down if isinstance(f, TTSStartedFrame)]
    assert len(contexts) == 2
    assert [words_of(down, ctx) for ctx in contexts] == [
        ["Said", "by", "the", "first."],
        ["Said", "by", "the", "second."],
    ]
    stops = [f.context_id for f in down if isinstance(f, TTSStoppedFrame)]
    assert sorted(stops) == sorted(contexts)
    # Each held its own conversation while the call lasted; both ended with it.
    (a,), (b,) = (spy.sessions for spy in spies)
    assert a is not b and a.closed and b.closed
