"""MossRemoteTTSService keeps replies that follow one another apart, and a barge-in cuts the
reply the user was hearing, exactly as the local service (``tests/service/
test_back_to_back.py``, whose checks these run)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

from ..engine_rules import SPEAKS
from ..service.conftest import SERVICE_LIMITS
from ..service.test_back_to_back import (
    BEHIND_LOOKAHEAD_S,
    FIRSTS,
    TEXTS,
    check_back_to_back,
    check_barge_in_behind,
    check_not_spoken,
)
from ..service.test_heard_clock import LATENCY_S
from .test_remote_cjk import LoggedRemote


async def _remote(
    make_tiny_engine, make_server, remote=None, lookahead_s: float | None = 0.5
) -> MossRemoteTTSService:
    """The local tests' service, remote: their engine's limits (three replies, none trimmed,
    each ending soon after its text)."""
    server = await make_server(make_tiny_engine(**{**SERVICE_LIMITS, **SPEAKS}))
    return MossRemoteTTSService(
        url=server.url,
        remote=remote(server.url) if remote is not None else None,
        output_latency_s=LATENCY_S,
        settings=MossTTSSettings(greedy=True, lookahead_s=lookahead_s),
    )


@pytest.mark.parametrize("first", FIRSTS)
async def test_remote_replies_back_to_back_keep_their_own_messages(
    make_tiny_engine, make_server, first
):
    await check_back_to_back(await _remote(make_tiny_engine, make_server), first())


async def test_remote_replies_not_spoken_between_two_keep_their_own_messages(
    make_tiny_engine, make_server
):
    await check_not_spoken(await _remote(make_tiny_engine, make_server))


@pytest.mark.parametrize("text", TEXTS)
async def test_a_remote_barge_in_cuts_the_reply_playing_not_the_one_queued(
    make_tiny_engine, make_server, text
):
    @asynccontextmanager
    async def opened():
        remote = LoggedRemote()
        tts = await _remote(make_tiny_engine, make_server, remote, BEHIND_LOOKAHEAD_S)
        try:
            yield tts, remote.log
        finally:
            await remote.aclose()

    await check_barge_in_behind(opened, text)
