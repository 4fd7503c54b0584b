"""A barge-in while the server is unreachable but alive (a network partition longer than the
client's ``reconnect_timeout``): the cut is made in the journal, and the server keeps the
conversation, with the reply cut where its connection departed: at what it had sent, more than
was heard. When it answers again it resumes the call with that copy, and the client makes the
journal's cut there again before anything else. Before, the resumed copy replaced the
journal's and the history kept the frames sent past what was heard (and their noise)."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.model import SamplingParams

from .conftest import TOKEN, eventually
from .proxies import SeveringProxy
from .random_calls import assert_the_journal_holds_the_servers
from .turns import LONG_TEXT, back_to_back, read_chunks, same_next_reply, say, speak

KINDS = ("in-flight", "finished", "back-to-back")
# (case, heard, silent): a silent partition takes the keepalive's time to be found; once each.
CASES = [(c, heard, False) for c in KINDS for heard in (3, 0)] + [(c, 3, True) for c in KINDS]


@pytest.mark.parametrize(("case", "heard", "silent"), CASES)
async def test_a_cut_made_while_the_server_was_unreachable_is_made_when_it_resumes_the_call(
    make_tiny_engine, make_server, case, heard, silent
):
    """In flight: the reply playing when the partition came, 8 frames read, cut at ``heard``.
    Finished: the server had sent all of it, and it plays on (before, its cut failed after
    ``reconnect_timeout``, an ``ErrorFrame``, and nothing was cut anywhere). Back-to-back: the
    reply after a first one draws when the partition comes; the service cuts the newer one to
    nothing, then the playing one at ``heard``. After the partition the same server resumes
    the call (nothing restored): its rows are a local engine's after the same cuts, and the
    next seeded reply is the same. Silent: the partition closes no connection; the client
    finds its link dead by its keepalive, and the server still holds the old connection (and
    the reply in flight on it) when the new one takes the call over."""
    sampled, rules = SamplingParams(), {"eos_min_frames": 60}
    engine = make_tiny_engine(**rules)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=60)
    proxy = SeveringProxy(server.port)
    keepalive = {"ping_interval": 0.2, "ping_timeout": 0.3} if silent else {}
    client = RemoteEngine(await proxy.start(), token=TOKEN, reconnect_timeout=0.3, **keepalive)
    session = await client.create_session(conversation_id=f"cut-{case}", sampling=sampled, seed=5)
    local = make_tiny_engine(**rules).create_session(sampling=sampled, seed=5)
    try:
        if case != "back-to-back":
            for s in (session, local):
                await say(s, "Hello there.", 3)
            playing = newer = await speak(session, LONG_TEXT, 30 if case == "in-flight" else 8)
            mine = await speak(local, LONG_TEXT, 30 if case == "in-flight" else 8)
            for t in (playing, mine):
                await (read_chunks(t, 8) if case == "in-flight" else t.wait())
        else:
            playing, newer = await back_to_back(session, local)
            mine = await local.start_turn(max_frames=6)
            mine.push_text("How are you?")
            mine.end_text()
            await mine.wait()
        proxy.sever(silent)
        await eventually(lambda: session._link.failure is not None, what="the link to fail")
        assert newer.lost == (case != "finished")
        if newer is not playing:
            assert (await session.interrupt(0, turn_id=newer.turn_id)).heard_frames == 0
        cut = await session.interrupt(heard, turn_id=playing.turn_id)
        my_cut = await local.interrupt(heard)
        assert (cut.stop, cut.heard_frames, cut.spoken_text) == (
            my_cut.stop,
            my_cut.heard_frames,
            my_cut.spoken_text,
        )
        proxy.heal()
        after = await session.snapshot()  # the same server resumes the call
        assert session.resumed and session.restored == 0 and session.history_lost == 0
        mine = await local.snapshot()
        assert after["turn_frames"] == mine["turn_frames"]
        assert torch.equal(after["rows"], mine["rows"])
        assert await same_next_reply(session, local)
        await assert_the_journal_holds_the_servers(session, server)
        await session.close()
    finally:
        await client.aclose()
        await proxy.stop()


async def test_a_held_cut_a_server_cannot_take_by_name_is_not_made_and_the_journal_follows(
    make_tiny_engine, make_server, monkeypatch
):
    """A server that resumes the call but takes no ``interrupt.turn_id`` (while it lists
    ``hello.history_at``) gets no held cut: unnamed it could cut another turn. Its copy keeps
    the whole reply, and the journal must follow it, not keep its own cut: a cut made here
    leaves the journal naming no copy, so the resume brings the full history."""
    from moss_pipecat import protocol as P

    monkeypatch.setattr(P, "FEATURES", (P.HELLO_HISTORY_AT,))
    sampled, rules = SamplingParams(), {"eos_min_frames": 60}
    server = await make_server(make_tiny_engine(**rules), token=TOKEN, idle_expiry_s=60)
    proxy = SeveringProxy(server.port)
    client = RemoteEngine(await proxy.start(), token=TOKEN, reconnect_timeout=0.3)
    session = await client.create_session(conversation_id="unnamed", sampling=sampled, seed=5)
    local = make_tiny_engine(**rules).create_session(sampling=sampled, seed=5)
    try:
        for s in (session, local):
            await say(s, "Hello there.", 3)
        playing = await speak(session, LONG_TEXT, 8)
        await playing.wait()
        await (await speak(local, LONG_TEXT, 8)).wait()  # never cut: the server's copy
        proxy.sever()
        await eventually(lambda: session._link.failure is not None, what="the link to fail")
        assert (await session.interrupt(3, turn_id=playing.turn_id)).heard_frames == 3
        copies = session.journal.copies
        proxy.heal()
        after = await session.snapshot()  # resumed; the held cut is not made there
        assert session.resumed and session.restored == 0
        assert session.journal.copies == copies + 1
        assert torch.equal(after["rows"], (await local.snapshot())["rows"])
        await assert_the_journal_holds_the_servers(session, server)
        await session.close()
    finally:
        await client.aclose()
        await proxy.stop()
