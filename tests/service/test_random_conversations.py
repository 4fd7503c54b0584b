"""Random conversations through a real pipeline: the LLM context and MOSS's history agree on
every reply, whatever comes one after another.

Each conversation draws pipecat's text aggregation mode (token or sentence) and a few steps:
replies in any script (``world_texts``, Chinese, Japanese, English, English and Chinese),
streamed in random pieces (UTF-16 code units at times), spoken as a ``TTSSpeakFrame``, or
skipped by the TTS (``skip_tts``: for the context only); sent while the reply before still
plays or after it, barged in on at a random moment (sometimes twice), or left to play out;
user turns (with a barge-in or not). They play through a real-time output transport into
pipecat's assistant aggregator.

At the end: no error; the context holds, in order, one message per reply that was heard:
the text MOSS kept when it was cut (``on_reply_interrupted``), else the whole reply; a reply
that was neither heard nor cut is in neither; MOSS's history holds as many assistant turns as
the context holds messages of spoken replies. Each reply starts with a marker (``3# ``) that
says whose a message is. The draw follows the fixture set (``variant``). Found the faults of
``test_back_to_back`` (a reply queued behind the one playing was cut instead of it; the next
reply's start, or a skipped reply's text, overtook the last words of the one before).
"""

from __future__ import annotations

import random

import pytest
from pipecat.frames.frames import Frame, InterruptionFrame, TTSSpeakFrame
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame

from ..world_texts import REPLIES, utf16_tokens
from .test_back_to_back import run_replies, skipped, spacing
from .test_cjk_replies import JA, MIXED, ZH, _tts, unit_prefixes
from .test_moss_tts_service import reply, user_turn

TEXTS = {
    **REPLIES,
    "zh": ZH,
    "ja": JA,
    "mixed_zh": MIXED,
    "en": "The quick brown fox jumps over the lazy dog, then runs far away into the woods.",
    "en_zh": "See you there. 明天见！好的!走吧。Bye now, take care.",
}
CONVERSATIONS = 3  # per fixture set, each 5 to 20 s of playback


def pieces(rnd: random.Random, text: str) -> list[str]:
    """An LLM's stream: UTF-16 code units at times (split surrogates), else 1 to 6 characters."""
    if rnd.random() < 0.2:
        return utf16_tokens(text)
    out, i = [], 0
    while i < len(text):
        n = rnd.randint(1, 6)
        out.append(text[i : i + n])
        i += n
    return out


def draw(rnd: random.Random) -> tuple[list[Frame], list[str], set[int]]:
    """A conversation's frames, its replies' texts in order, and which replies the TTS skips.
    (The service's text aggregation mode is drawn apart: ``mode``.)"""
    frames: list[Frame] = []
    texts: list[str] = []
    unspoken: set[int] = set()
    playing_s = 0.0  # audio of the replies since the last barge-in, roughly
    for _ in range(rnd.randint(3, 6)):
        kind = rnd.choices(["reply", "speak", "skip", "user"], [6, 1, 1, 2])[0]
        if kind == "user":
            if rnd.random() < 0.5:
                frames.append(InterruptionFrame())
                playing_s = 0.0
            frames += user_turn("fine, thanks", rnd.uniform(0.2, 1.0))
            continue
        text = TEXTS[rnd.choice(sorted(TEXTS))]
        text = f"{len(texts)}# " + text[: rnd.randint(20, 100)]
        if kind == "skip":  # text for the context only, queued behind the audio before it
            unspoken.add(len(texts))
            texts.append(text)
            frames += skipped(text)
            continue
        texts.append(text)
        frames += [TTSSpeakFrame(text)] if kind == "speak" else reply(*pieces(rnd, text))
        playing_s += len(text) / 6
        after = rnd.random()
        if after < 0.5:  # barged in on, maybe before a word was heard
            frames += [SleepFrame(rnd.uniform(0.0, 2.5)), InterruptionFrame()]
            frames += [InterruptionFrame()] if rnd.random() < 0.2 else []
            playing_s = 0.0
        elif after < 0.7:  # the next step comes while this one still plays
            frames.append(SleepFrame(rnd.uniform(0.0, 0.8)))
        else:
            frames.append(SleepFrame(rnd.uniform(1.0, 3.0)))
    frames.append(SleepFrame(2.0 + playing_s))
    return frames, texts, unspoken


def mode(rnd: random.Random) -> TextAggregationMode:
    """pipecat's token mode (replies streamed into MOSS) or its sentence mode (sentences handed
    over stripped of the spaces between them)."""
    return rnd.choice([TextAggregationMode.TOKEN, TextAggregationMode.SENTENCE])


def check_context_and_history(
    texts: list[str], unspoken: set[int], said: list[str], cuts: list, turns: list, lost: int = 0
) -> None:
    """The rules of the module docstring; ``lost``: how many replies may have been cut by a
    lost server (no cut tells what they kept: their message is a start of their text)."""
    cut_of: dict[int, str] = {}
    for cut in cuts:
        if cut.spoken_text:
            (owner,) = [i for i, t in enumerate(texts) if cut.spoken_text in unit_prefixes(t)]
            assert owner not in cut_of
            cut_of[owner] = cut.spoken_text
    owners = [int(message.split("#", 1)[0]) for message in said]
    assert owners == sorted(set(owners)), said  # one message a reply, in order
    for owner, message in zip(owners, said, strict=True):
        if owner in unspoken:  # pipecat's sentences, joined as written (none between CJK ones)
            assert spacing(message) == spacing(texts[owner]), owner
        elif spacing(message) != spacing(cut_of.get(owner, texts[owner])) and lost:
            assert spacing(message) in {spacing(p) for p in unit_prefixes(texts[owner])}, owner
            lost -= 1
        else:
            assert spacing(message) == spacing(cut_of.get(owner, texts[owner])), owner
    assert set(cut_of) <= set(owners)  # a reply cut after a unit was heard is in the context
    assert len(turns) == len(set(owners) - unspoken), (turns, said)


@pytest.mark.parametrize("n", range(CONVERSATIONS))
async def test_a_random_conversation_keeps_the_context_and_the_history_agreeing(
    talkative_engine, realtime_meta, n
):
    rnd = random.Random(f"{realtime_meta.get('variant', '')}/{n}")
    tts = _tts(talkative_engine, mode(rnd))
    frames, texts, unspoken = draw(rnd)
    said, cuts, _, turns = await run_replies(tts, frames)
    check_context_and_history(texts, unspoken, said, cuts, turns)
