"""MossRemoteTTSService keeps CJK and mixed replies as heard, exactly as the local service
(``tests/service/test_cjk_replies.py``): the units' spacing travels in ``turn.words``, and the
units the LLM context took in the interrupt's ``heard_units`` (``tests/service/
test_context_race.py``: word frames on their way when the user barges in)."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import InterruptionFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame

from moss_pipecat.client import RemoteEngine
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..engine_rules import SPEAKS
from ..service.heard_units import SLACK_S, EngineLog, check_within_one_unit_of_heard
from ..service.test_cjk_replies import (
    CUTS_S,
    MIXED,
    TEXTS,
    assistant_text,
    check_barge_in,
    check_word_frames,
    tokens,
    unit_prefixes,
)
from ..service.test_context_race import (
    NEXT_REPLY,
    barge_in_taken_late,
    barge_in_with_a_word_on_its_way,
)
from ..service.test_heard_clock import LATENCY_S, run_playing
from ..service.test_moss_tts_service import reply
from ..service.test_trailing_marks import TEXTS as MARKED
from ..service.test_trailing_marks import check_barge_in_after
from ..service.test_world_replies import CUT_S, barge_in_text, stream
from ..world_texts import REPLIES, utf16_tokens
from .conftest import GREEDY


async def _remote(make_tiny_engine, make_server, remote=None) -> MossRemoteTTSService:
    engine = make_tiny_engine(max_sessions=2, **SPEAKS)
    server = await make_server(engine)
    return MossRemoteTTSService(
        url=server.url,
        remote=remote(server.url) if remote is not None else None,
        output_latency_s=LATENCY_S,
        settings=MossTTSSettings(greedy=True, lookahead_s=0.5),
    )


@pytest.mark.parametrize("lang", list(TEXTS))
async def test_a_remote_barge_in_keeps_in_the_context_what_moss_kept(
    make_tiny_engine, make_server, lang
):
    cut_s = CUTS_S[list(TEXTS).index(lang)]  # each language at another playback point
    text = TEXTS[lang]
    await _barge_in(make_tiny_engine, make_server, text, tokens(text), cut_s)


# Scripts without spaces, a unit pipecat splits at its sentence end, emoji split into lone
# surrogates (which UTF-8, the wire, cannot carry), 500 Thai characters without a space.
@pytest.mark.parametrize("name", ["th", "th_spaced", "emoji", "cjk_punct", "long_thai"])
async def test_a_remote_barge_in_keeps_what_moss_kept_in_any_script(
    make_tiny_engine, make_server, name
):
    text = barge_in_text(name)
    await _barge_in(make_tiny_engine, make_server, text, stream(name, text), CUT_S, SLACK_S)


class LoggedRemote:
    """The service's ``remote=`` factory: its RemoteEngine wrapped in an ``EngineLog``
    (``log``), which the test closes (``aclose``)."""

    def __init__(self) -> None:
        self.log: EngineLog | None = None

    def __call__(self, url: str) -> EngineLog:
        self.log = EngineLog(RemoteEngine(url))
        return self.log

    async def aclose(self) -> None:
        if self.log is not None:
            await self.log.aclose()


async def _barge_in(make_tiny_engine, make_server, text, pieces, cut_s, slack_s=0.0) -> None:
    context = LLMContext()
    frames = [*reply(*pieces), SleepFrame(cut_s), InterruptionFrame(), SleepFrame(0.3)]
    remote = LoggedRemote()
    tts = await _remote(make_tiny_engine, make_server, remote)
    try:
        down, transport, recorder, cuts = await run_playing(tts, frames, context)
    finally:
        await remote.aclose()
    check_barge_in(text, assistant_text(context), cuts)
    check_word_frames(recorder, transport, down)
    (units,) = remote.log.turns  # the units as they came over the wire (turn.words)
    heard_s, speaking_s = transport.heard_s(), transport.speaking_s()
    check_within_one_unit_of_heard(cuts[0], units, heard_s, speaking_s, slack_s)


async def test_a_whole_mixed_reply_reaches_the_context_as_written(make_tiny_engine, make_server):
    context = LLMContext()
    tts = await _remote(make_tiny_engine, make_server)
    frames = [*reply(*tokens(MIXED)), SleepFrame(6.0)]
    down, transport, recorder, cuts = await run_playing(tts, frames, context)
    assert not cuts
    assert assistant_text(context) == MIXED
    check_word_frames(recorder, transport, down)


@pytest.mark.parametrize("lang", ["zh", "mixed"])
async def test_a_remote_barge_in_with_a_word_on_its_way_keeps_the_same_units(
    make_tiny_engine, make_server, lang
):
    """The 4th unit's word frame is dropped on its way to the aggregator: the server's history
    keeps the three units the context took (``heard_units`` over the wire)."""
    text = TEXTS[lang]
    tts = await _remote(make_tiny_engine, make_server)
    said, cuts, _ = await barge_in_with_a_word_on_its_way(tts, tokens(text), reorder=False)
    (cut,) = cuts
    assert said[0] == cut.spoken_text
    assert unit_prefixes(text).index(cut.spoken_text) == 3
    assert said[1].split() == NEXT_REPLY.split()


async def test_a_remote_barge_in_taken_late_keeps_the_same_units(make_tiny_engine, make_server):
    """A unit released after the service passed the interruption on reaches the aggregator
    first: the gate keeps it out and the server's history keeps the units the context holds."""
    text = TEXTS["ja"]
    tts = await _remote(make_tiny_engine, make_server)
    said, cuts, before = await barge_in_taken_late(tts, tokens(text))
    (cut,) = cuts
    assert said == [cut.spoken_text]
    assert unit_prefixes(text).index(cut.spoken_text) <= before


async def test_a_remote_turn_joins_a_surrogate_pair_split_across_pieces(
    make_tiny_engine, make_server
):
    """A caller handing an emoji over as two lone surrogates (UTF-8, the wire, can carry
    neither): the server's turn gets the text whole, a lone half as U+FFFD."""
    # eos_after_text: no EOS before the last piece arrived (the summary's text is all of it).
    server = await make_server(make_tiny_engine(max_sessions=2, eos_after_text=True))
    client = RemoteEngine(server.url)
    try:
        session = await client.create_session(sampling=GREEDY)
        for pieces, want in (
            (utf16_tokens(REPLIES["emoji"]), REPLIES["emoji"]),
            (
                ["ok \ud83d", "\ude00 and \ude00 then \ud83d"],
                "ok \U0001f600 and \ufffd then \ufffd",
            ),
        ):
            turn = await session.start_turn(max_frames=4)
            for piece in pieces:
                turn.push_text(piece)
            turn.end_text()
            _ = [c async for c in turn]
            assert turn.summary.text == want
    finally:
        await client.aclose()


async def test_a_remote_reply_keeps_the_marks_its_words_carried(make_tiny_engine, make_server):
    """Marks after a sentence's last word go with it (``test_trailing_marks``): the units the
    interrupt keeps (``heard_units``) count them."""
    engine = make_tiny_engine(
        max_sessions=2, frames_per_text_token=1.5, min_turn_frames=8, **SPEAKS
    )
    server = await make_server(engine)  # a reply's length bounded by its text, as the service's
    tts = MossRemoteTTSService(
        url=server.url,
        output_latency_s=LATENCY_S,
        settings=MossTTSSettings(greedy=True, lookahead_s=0.5),
    )
    await check_barge_in_after(tts, MARKED["mid"])
