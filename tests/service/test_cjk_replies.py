"""Chinese, Japanese and mixed replies keep exactly what was heard (issue #21).

Replies are streamed a token (one or two characters) at a time into MossTTSService and played
by a real-time output transport; a barge-in at several playback points must leave in the LLM
context the text MOSS's history kept (``spoken_text``): the same units, no space added between
CJK characters nor lost between words. The remote service is held to the same
(``tests/server/test_remote_cjk.py``).
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from pipecat.frames.frames import InterruptionFrame, TTSAudioRawFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame

from moss_pipecat.engine.word_times import WordTimer
from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.speech.units import is_unit_char, join_units

from .heard_units import EngineLog, check_within_one_unit_of_heard
from .test_heard_clock import LATENCY_S, run_playing
from .test_moss_tts_service import reply

ZH = "你好，今天天气很好。我们去公园散步吧。然后一起吃午饭，下午再回家休息。"
JA = "こんにちは、今日はいい天気ですね。公園に行きましょう。それから昼ご飯を食べます。"
MIXED = "你好 Alice，明天见。我们一起去 Central Park 散步吧，然后用iPhone拍照。"
# Long enough that every cut below lands while the text is still being read (the turn cannot
# end before: the talkative engine masks EOS until the whole text is fed).
TEXTS = {"zh": ZH * 3, "ja": JA * 3, "mixed": MIXED * 3}
CUTS_S = (1.0, 1.8, 2.6)


def tokens(text: str) -> list[str]:
    """An LLM's stream: one, then two characters a piece, spaces kept where they were."""
    pieces, i = [], 0
    while i < len(text):
        n = 1 + len(pieces) % 2
        pieces.append(text[i : i + n])
        i += n
    return pieces


def assistant_text(context: LLMContext) -> str:
    (said,) = [m["content"] for m in context.get_messages() if m["role"] == "assistant"] or [""]
    return said


def unit_prefixes(text: str) -> list[str]:
    """The text as written after each of its units (the only texts a cut can keep)."""
    timer = WordTimer(chars_per_second=14.0)
    timer.add_text(text)
    units = timer.finish(10_000, fed_chars=len(text))
    return [join_units(units[:n]) for n in range(len(units) + 1)]


def check_barge_in(text: str, said: str, cuts: list) -> None:
    """One cut mid-reply; the context holds exactly what MOSS kept, a prefix of the text cut
    after a unit, with no space added or lost (a word frame is released once its frame has
    played, and MOSS keeps the frames played: the same units)."""
    (cut,) = cuts
    assert 0 < cut.heard_frames < cut.audio_frames
    prefixes = unit_prefixes(text)
    kept = prefixes.index(cut.spoken_text)  # raises if MOSS kept anything else
    assert kept > 0
    assert said == cut.spoken_text


def check_word_frames(recorder, transport, down) -> None:
    """Word frames come while the reply plays: PTS in order (units of one frame share the
    frame's end) inside the audio, CJK ones marked as carrying their own spacing."""
    pts = [f.pts for f in recorder.words]
    assert pts and all(a < b for a, b in pairwise(pts))
    assert sum(isinstance(f, TTSAudioRawFrame) for f in down) > 0
    start, end = transport.audio_start_ns(), transport.played[-1][0] + transport.played[-1][1]
    assert start - 0.05e9 <= pts[0] and pts[-1] < end
    for f in recorder.words:
        if any(map(is_unit_char, f.text)) and all(
            is_unit_char(ch) or not ch.isalnum() for ch in f.text
        ):
            assert f.includes_inter_frame_spaces, f.text


def _tts(
    engine,
    mode: TextAggregationMode = TextAggregationMode.TOKEN,
    lookahead_s: float | None = 0.5,
) -> MossTTSService:
    return MossTTSService(
        engine=engine,
        output_latency_s=LATENCY_S,
        settings=MossTTSSettings(greedy=True, lookahead_s=lookahead_s),
        text_aggregation_mode=mode,
    )


@pytest.mark.parametrize("lang", list(TEXTS))
@pytest.mark.parametrize("cut_s", CUTS_S)
async def test_a_barge_in_keeps_in_the_context_what_moss_kept(talkative_engine, lang, cut_s):
    text, context = TEXTS[lang], LLMContext()
    frames = [*reply(*tokens(text)), SleepFrame(cut_s), InterruptionFrame(), SleepFrame(0.3)]
    log = EngineLog(talkative_engine)
    down, transport, recorder, cuts = await run_playing(_tts(log), frames, context)
    check_barge_in(text, assistant_text(context), cuts)
    check_word_frames(recorder, transport, down)
    (units,) = log.turns
    check_within_one_unit_of_heard(cuts[0], units, transport.heard_s(), transport.speaking_s())


@pytest.mark.parametrize("lang", ["zh", "ja", "mixed"])
async def test_a_whole_reply_reaches_the_context_as_written(talkative_engine, lang):
    text, context = {"zh": ZH, "ja": JA, "mixed": MIXED}[lang], LLMContext()
    frames = [*reply(*tokens(text)), SleepFrame(6.0)]
    down, transport, recorder, cuts = await run_playing(_tts(talkative_engine), frames, context)
    assert not cuts
    assert assistant_text(context) == text  # every unit, no space added or lost
    check_word_frames(recorder, transport, down)
    # Units stream while the reply plays: the first is out long before the audio ends.
    assert recorder.words[0].pts < transport.played[len(transport.played) // 2][0]
