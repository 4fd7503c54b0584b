"""Each MOSS reply is one OpenTelemetry span in pipecat's tracing, through real pipelines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import StatusCode
from pipecat.frames.frames import ErrorFrame, InterruptionFrame, TTSAudioRawFrame
from pipecat.tests.utils import SleepFrame

from moss_pipecat.service import MossTTSService, MossTTSSettings

from .conftest import frames_lasted
from .test_moss_tts_service import reply, run
from .tracing_helpers import CONVERSATION_ID, by_id, tts_spans

REPO = Path(__file__).resolve().parents[2]
FIRST = "Hello there, how are you today?"
LONG = "This is a long answer that keeps going " * 6
LAST = "Fine, a short one."


def audio_frames(down, context_id: str) -> int:
    return frames_lasted(
        [f for f in down if isinstance(f, TTSAudioRawFrame) and f.context_id == context_id]
    )


async def test_one_span_per_reply_under_the_turn_span(
    talkative_engine, span_exporter, traced_pipelines
):
    tts = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    frames = [
        *reply("Hello ", "there, how", " are you", " today?"),
        SleepFrame(0.3),
        *reply("Fine, ", "a short", " one."),
        SleepFrame(0.3),
    ]
    down, up, _ = await run(tts, frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]

    spans = tts_spans(span_exporter)
    assert len(spans) == 2
    for span, text in zip(spans, (FIRST, LAST), strict=True):
        attrs = span.attributes
        # A whole reply: every frame the engine made went out and was heard.
        assert attrs["tts.interrupted"] is False
        assert attrs["moss.frames"] == audio_frames(down, attrs["tts.context_id"]) > 0
        assert attrs["moss.heard_frames"] == attrs["moss.frames"]
        assert attrs["text"].split() == text.split()
        assert attrs["metrics.character_count"] == len(attrs["text"])
        assert attrs["metrics.ttfb"] > 0 and attrs["metrics.ttfa"] > 0
        assert attrs["gen_ai.request.model"] == tts.settings.model
        assert attrs["voice_id"] == "default"
        assert attrs["gen_ai.output.type"] == "speech"
        assert attrs["gen_ai.provider.name"] == "moss"  # pipecat's name from the class name
        assert attrs["settings.greedy"] is True
        assert span.status.status_code != StatusCode.ERROR
    assert spans[0].attributes["tts.context_id"] != spans[1].attributes["tts.context_id"]

    # Under pipecat's turn span, itself under the conversation span.
    spans_by_id = by_id(span_exporter)
    for span in spans:
        turn = spans_by_id[span.parent.span_id]
        assert turn.name == "turn"
        conversation = spans_by_id[turn.parent.span_id]
        assert conversation.attributes["conversation.id"] == CONVERSATION_ID


@pytest.mark.parametrize("rate", [8000, 48000])  # neither a codec's rate: resampled
async def test_a_resampled_reply_is_heard_as_the_frames_the_engine_made(
    rate, talkative_engine, span_exporter, traced_pipelines
):
    """At an output rate not the codec's, a resampler carries the frames in chunks of its own,
    its tail one more: the heard clock counts engine frames, not chunks, so a reply played to
    the end was heard as exactly the frames made (the count an interruption keeps too)."""
    tts = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    down, up, _ = await run(
        tts, [*reply("Hello ", "there, how", " are you", " today?")], sample_rate=rate
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    (span,) = tts_spans(span_exporter)
    attrs = span.attributes
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert {f.sample_rate for f in audio} == {rate}
    assert attrs["tts.interrupted"] is False
    assert attrs["moss.heard_frames"] == attrs["moss.frames"] == frames_lasted(audio) > 0


async def test_an_interrupted_reply_span_keeps_what_was_heard(
    talkative_engine, span_exporter, traced_pipelines
):
    tts = MossTTSService(
        engine=talkative_engine, settings=MossTTSSettings(lookahead_s=0.5, greedy=True)
    )
    cuts = {}

    @tts.event_handler("on_reply_interrupted")
    async def on_cut(service, context_id, summary):
        cuts[context_id] = summary

    frames = [
        *reply(*(w + " " for w in LONG.split())),
        SleepFrame(0.8),
        InterruptionFrame(),
        *reply("Fine, ", "a short", " one."),
        SleepFrame(0.3),
    ]
    _, up, _ = await run(tts, frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]

    cut, last = (s.attributes for s in tts_spans(span_exporter))
    assert cut["tts.interrupted"] is True
    assert cut["text"].split() == LONG.split()
    assert cut["moss.heard_frames"] <= cut["moss.frames"]
    # The span says what MOSS's history kept: one heard clock.
    summary = cuts.get(cut["tts.context_id"])
    if summary is not None:  # None: the box was so slow its turn had not opened
        assert cut["moss.heard_frames"] == summary.heard_frames
    assert last["tts.interrupted"] is False
    assert last["moss.heard_frames"] == last["moss.frames"] > 0


async def test_no_spans_unless_the_pipeline_enables_tracing(talkative_engine, span_exporter):
    tts = MossTTSService(engine=talkative_engine, settings=MossTTSSettings(greedy=True))
    down, _, _ = await run(tts, [*reply("Hello ", "there."), SleepFrame(0.3)])
    assert any(isinstance(f, TTSAudioRawFrame) for f in down)
    assert not tts_spans(span_exporter)
    assert not tts._tracer.enabled


def test_without_opentelemetry_the_service_imports_and_traces_nothing():
    """pipecat's tracing extra is optional. opentelemetry's API comes with fastapi, its SDK
    only with that extra: without the SDK the services import and tracing stays off."""
    code = (
        "import sys; sys.modules['opentelemetry.sdk'] = None\n"  # as if not installed
        "from moss_pipecat.service.tracing import ReplyTracer\n"
        "from moss_pipecat.service.remote import MossRemoteTTSService\n"
        "tracer = ReplyTracer(object(), attributes=dict)\n"
        "tracer.configure(True, None)\n"
        "assert not tracer.enabled\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
