"""MossRemoteTTSService keeps a reply's word frames in the order of its words when the LLM
finishes a sentence while it is spoken, as the local service does (the moment forced with
events: ``tests/service/test_word_order.py``)."""

from __future__ import annotations

import pytest

from moss_pipecat.client import RemoteEngine
from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..engine_rules import SPEAKS
from ..service.heard_units import EngineLog
from ..service.test_word_order import (
    CHINESE,
    ENGLISH,
    JAPANESE,
    check_in_order,
    speak_a_sentence_ended_while_spoken,
)


@pytest.mark.parametrize("script", [ENGLISH, CHINESE, JAPANESE], ids=["en", "zh", "ja"])
async def test_remote_words_parked_until_their_sentence_ends_come_out_before_the_next(
    make_tiny_engine, make_server, script
):
    engine = make_tiny_engine(max_sessions=1, **SPEAKS)
    server = await make_server(engine)
    log = EngineLog(RemoteEngine(server.url))
    tts = MossRemoteTTSService(remote=log, settings=MossTTSSettings(greedy=True))
    try:
        rate = engine.codec.sampling_rate
        said = await speak_a_sentence_ended_while_spoken(tts, log, rate, script)
    finally:
        await log.aclose()
    check_in_order(*said, script)
