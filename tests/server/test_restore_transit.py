"""A restore lost in transit (issue #24): the connection that made a lost conversation anew on
another server drops right after its ``restore`` is sent, or after the server applied it but
before its reply came. The next connection resumes the conversation the server made anew, and
the server's full history after ``ready`` says whether to restore again: the history is never
lost, and never restored twice."""

from __future__ import annotations

import json

import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.client.journal import Journal
from moss_pipecat.client.link import Link

from ..engine.helpers import random_frames
from .conftest import GREEDY
from .turns import read_chunks, say, speak


async def _call_lost_with_its_server(make_tiny_engine, make_server, meta, in_flight=False):
    """A call on server ``a`` (a user turn and a reply; with ``in_flight`` a second reply is
    streaming), then ``a`` is gone; ``b`` is up. Returns (session, the lost history's
    snapshot, b's engine, the reply in flight or None)."""
    # Paced, no EOS before 30 frames: the reply in flight is still streaming at the loss.
    a = await make_server(make_tiny_engine(lookahead_s=0.4, eos_min_frames=30))
    b_engine = make_tiny_engine(eos_min_frames=3)
    b = await make_server(b_engine)  # keeps a detached conversation (default idle expiry)
    session = await RemoteEngine([a.url, b.url]).create_session(
        conversation_id="transit", sampling=GREEDY
    )
    frames = random_frames(torch.Generator().manual_seed(3), 5, meta)
    lo = meta["text_ids_drawn_from"][0]
    await session.add_user_turn(list(range(lo, lo + 3)), frames)
    await say(session, "Hello there.", 4)
    before = await session.snapshot()
    assert [r for r, _ in before["turns"]] == ["user", "assistant"]
    lost = None
    if in_flight:
        lost = await speak(
            session, "This reply is lost with its server, whatever was heard of it.", 60
        )
        await read_chunks(lost, 2)
    await a.stop()
    return session, before, b_engine, lost


def _count_restores(monkeypatch, drop_first: bool) -> list[str]:
    """Patches ``Link.send_nowait`` to list the ``restore`` messages sent; with ``drop_first``
    the first one (and its binary frame) never leaves: its connection is cut instead."""
    sent: list[str] = []
    dropping = False
    real = Link.send_nowait

    def send_nowait(link: Link, data: str | bytes) -> None:
        nonlocal dropping
        if isinstance(data, str) and json.loads(data)["type"] == "restore":
            sent.append(data)
            if drop_first and len(sent) == 1:
                dropping = True
                link.ws.transport.abort()  # lost on the way: the server never reads it
                return
        if dropping and isinstance(data, bytes):
            dropping = False
            return
        real(link, data)

    monkeypatch.setattr(Link, "send_nowait", send_nowait)
    return sent


async def _goes_on(session, before, engine, heard: int = 0) -> None:
    """The history is the lost one (with the reply in flight at the loss, cut to its ``heard``
    frames), on one conversation, and the call goes on."""
    after = await session.snapshot()
    n = before["rows"].shape[0]
    assert torch.equal(after["rows"][:n], before["rows"])
    assert after["turn_frames"] == before["turn_frames"] + ([heard] if heard else [])
    assert after["rows"].shape[0] > n if heard else after["rows"].shape[0] == n
    assert session.restored == 1 and session.history_lost == 0
    assert engine.session_ids == [session.id]
    assert await say(session, "Still here.", 3) == 3
    assert len(session.journal.turns) == 3 + bool(heard) and session.journal.valid
    assert not session.journal.restore_due
    await session.close()


async def test_a_restore_lost_before_the_server_read_it_is_sent_again(
    make_tiny_engine, make_server, realtime_meta, monkeypatch
):
    session, before, engine, lost = await _call_lost_with_its_server(
        make_tiny_engine, make_server, realtime_meta, in_flight=True
    )
    sent = _count_restores(monkeypatch, drop_first=True)
    # The barge-in on the reply in flight at the loss says 2 of its frames were heard: made
    # anew on b with them, restore lost, resumed there and restored again (the same restore),
    # the reply kept to those 2 frames (cut in the journal, which says so; nothing more to cut
    # on b).
    assert lost is not None and not lost.ended
    cut = await session.interrupt(2)
    assert (cut.stop, cut.heard_frames) == ("interrupted", 2)
    assert len(sent) == 2 and sent[0] == sent[1]
    assert session.resumed and session.reconnects == 2
    await _goes_on(session, before, engine, heard=2)


async def test_a_restore_whose_reply_was_lost_is_not_sent_again(
    make_tiny_engine, make_server, realtime_meta, monkeypatch
):
    session, before, engine, _ = await _call_lost_with_its_server(
        make_tiny_engine, make_server, realtime_meta
    )
    sent = _count_restores(monkeypatch, drop_first=False)
    cut: list[int] = []
    real_apply = Journal.apply

    def apply(journal: Journal, msg) -> None:
        # The server applied the restore and sent the history it now holds; the connection
        # is lost before that (and the restore's reply) reaches the client.
        if journal.restore_due and msg.full and msg.turns and not cut:
            cut.append(msg.rev)
            session._link.ws.transport.abort()
            raise ConnectionResetError("lost before the restore's reply")  # the reader stops
        real_apply(journal, msg)

    monkeypatch.setattr(Journal, "apply", apply)
    await session.snapshot()  # resumed on b, whose full history says the restore landed
    assert cut and len(sent) == 1
    assert session.resumed and session.reconnects == 2
    await _goes_on(session, before, engine)
