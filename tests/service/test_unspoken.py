"""The sentences of a reply the TTS skips get the seams the model's text gets
(``units.sentence_seam``), and nothing else is touched (``service/unspoken.py``). The whole
path, through pipecat's aggregator: ``test_back_to_back.py``."""

from __future__ import annotations

from pipecat.frames.frames import (
    AggregatedTextFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSTextFrame,
)
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text

from moss_pipecat.service.unspoken import UnspokenReplies


def _skip(frame):
    frame.skip_tts = True
    return frame


def _sentence(text: str) -> AggregatedTextFrame:
    return _skip(AggregatedTextFrame(text, "sentence", raw_text=text))


def _joined(frames) -> str:
    """What pipecat's assistant aggregator makes of them."""
    parts = [
        TextPartForConcatenation(f.raw_text or f.text, f.includes_inter_frame_spaces)
        for f in frames
    ]
    return concatenate_aggregated_text(parts)


def _through(unspoken: UnspokenReplies, *sentences: str) -> list[AggregatedTextFrame]:
    frames = [_sentence(s) for s in sentences]
    for f in [_skip(LLMFullResponseStartFrame()), *frames, _skip(LLMFullResponseEndFrame())]:
        unspoken.passing(f)
    return frames


def test_sentences_join_as_the_model_reads_them():
    unspoken = UnspokenReplies()
    assert _joined(_through(unspoken, "One.", "Two!", "Three?")) == "One. Two! Three?"
    assert _joined(_through(unspoken, "你好。", "明天见！")) == "你好。明天见！"
    assert _joined(_through(unspoken, "Hello there.", "你好。", "Ok then.")) == (
        "Hello there. 你好。Ok then."
    )
    frames = _through(unspoken, "Wait...", "今日は。")
    assert [f.text for f in frames] == ["Wait...", " 今日は。"]
    assert all(f.includes_inter_frame_spaces for f in frames)


def test_only_a_skipped_replys_own_sentences_are_touched():
    unspoken = UnspokenReplies()
    unspoken.passing(LLMFullResponseStartFrame())  # a spoken reply
    inside = [_sentence("好。"), _sentence("好。")]  # text skipped inside it (a code block)
    word = TTSTextFrame("好。", "word")
    for f in [*inside, word]:
        unspoken.passing(f)
    assert [f.text for f in inside] == ["好。", "好。"]
    assert not any(f.includes_inter_frame_spaces for f in inside)
    unspoken.passing(_skip(LLMFullResponseStartFrame()))
    unspoken.passing(LLMFullResponseStartFrame())  # the next, spoken reply's start, among them
    unspoken.passing(first := _sentence("One."))
    unspoken.passing(InterruptionFrame())  # the skipped reply's end is dropped with it
    unspoken.passing(after := _sentence("Two."))
    assert first.includes_inter_frame_spaces and not after.includes_inter_frame_spaces
    assert after.text == "Two."
