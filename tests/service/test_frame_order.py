"""pipecat's TTS frame-order contract, on MossTTSService (the scenarios of pipecat's own
tests/test_tts_frame_ordering.py, replayed on the real tiny model).

Every spoken unit comes out as one group: TTSStartedFrame, its audio, its TTSStoppedFrame;
groups never interleave; a frame sent after a unit comes out after that unit's group; a
reply's word frames come before its LLMFullResponseEndFrame; a TTSSpeakFrame arriving while
an LLM reply streams is spoken after that reply, whole, and does not cut the reply short.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import (
    DataFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.tests.utils import SleepFrame

from moss_pipecat.service import MossTTSService, MossTTSSettings

from .test_moss_tts_service import reply, run


@dataclass
class FooFrame(DataFrame):
    label: str = ""


def groups(frames) -> list[tuple[str, list]]:
    """(context_id, kinds) per TTS group, in output order; checks groups do not interleave."""
    out: list[tuple[str, list]] = []
    open_ctx = None
    for f in frames:
        if isinstance(f, TTSStartedFrame):
            assert open_ctx is None, "a group started inside another"
            open_ctx = f.context_id
            out.append((f.context_id, ["started"]))
        elif isinstance(f, (TTSAudioRawFrame, TTSTextFrame)) and f.context_id is not None:
            assert f.context_id == open_ctx, "a frame outside its group"
            out[-1][1].append("audio" if isinstance(f, TTSAudioRawFrame) else "word")
        elif isinstance(f, TTSStoppedFrame):
            assert f.context_id == open_ctx
            out[-1][1].append("stopped")
            open_ctx = None
        elif isinstance(f, FooFrame):
            out.append((f"foo:{f.label}", []))
    assert open_ctx is None
    return out


def service(engine) -> MossTTSService:
    return MossTTSService(engine=engine, settings=MossTTSSettings(greedy=True))


async def test_speak_frames_each_play_as_one_group_before_the_next_frame(talkative_engine):
    frames = []
    for i in range(3):
        frames += [TTSSpeakFrame(f"Speak frame number {i} is here."), FooFrame(label=str(i))]
    frames.append(SleepFrame(1.0))
    down, up, _ = await run(service(talkative_engine), frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    seq = groups(down)
    assert [name.startswith("foo") for name, _ in seq] == [False, True] * 3
    for _, kinds in seq[::2]:
        assert kinds[0] == "started" and kinds[-1] == "stopped" and "audio" in kinds
    assert [foo for foo, _ in seq[1::2]] == ["foo:0", "foo:1", "foo:2"]


async def test_llm_reply_words_come_before_its_end_frame(talkative_engine):
    text = "Words come first, then the end."
    frames = [*reply(*(w + " " for w in text.split())), SleepFrame(1.0)]
    down, up, _ = await run(service(talkative_engine), frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    kinds = [type(f) for f in down if isinstance(f, (TTSTextFrame, LLMFullResponseEndFrame))]
    assert kinds[-1] is LLMFullResponseEndFrame and kinds.count(LLMFullResponseEndFrame) == 1
    words = [f.text.strip() for f in down if isinstance(f, TTSTextFrame)]
    assert words == text.split()
    ((_, group),) = groups(down)
    assert group[0] == "started" and group[-1] == "stopped"


async def test_speak_frame_during_a_streaming_reply_waits_and_is_spoken_whole(talkative_engine):
    llm_text = "The streaming reply keeps going with every word it has."
    words = [w + " " for w in llm_text.split()]
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(w) for w in words[:3]),
        TTSSpeakFrame("Meanwhile, a notice."),
        *(LLMTextFrame(w) for w in words[3:]),
        LLMFullResponseEndFrame(),
        SleepFrame(2.0),
    ]
    down, up, _ = await run(service(talkative_engine), frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    seq = groups(down)
    assert len(seq) == 2
    (first, kinds1), (second, kinds2) = seq
    spoken = {
        ctx: [f.text.strip() for f in down if isinstance(f, TTSTextFrame) and f.context_id == ctx]
        for ctx in (first, second)
    }
    # The reply first, with all its words (its text was not cut at the speak frame) ...
    assert spoken[first] == llm_text.split()
    # ... then the speak frame, whole.
    assert spoken[second] == "Meanwhile, a notice.".split()
    assert "audio" in kinds1 and "audio" in kinds2


async def test_interruption_then_frames_keep_flowing(talkative_engine):
    frames = [
        *reply("A reply ", "that gets ", "interrupted ", "right away ", "by the user."),
        SleepFrame(0.2),
        InterruptionFrame(),
        FooFrame(label="after"),
        TTSSpeakFrame("Back again."),
        FooFrame(label="end"),
        SleepFrame(1.0),
    ]
    down, up, _ = await run(service(talkative_engine), frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    seq = groups(down[cut:])
    assert seq[0][0] == "foo:after" and seq[-1][0] == "foo:end"
    assert len(seq) == 3 and "audio" in seq[1][1] and seq[1][1][-1] == "stopped"
