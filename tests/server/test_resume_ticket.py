"""Resume tickets (``server.tickets``): a ticket takes a conversation back only from a holder
that made it after the ticket's owner did, and only when the servers of the deployment issued
it for that id and secret recently. Any other ticket (another id, another secret, forged,
another deployment's, expired, newer than the holder's) is refused like a hello without one
(``forbidden``), and the live conversation goes on untouched. The tickets here are minted with
the deployment's key, as another of its servers would."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.cli import build_parser, serve_options
from moss_pipecat.client import RemoteEngine
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.protocol.errors import ForbiddenError
from moss_pipecat.server import ServerConfig
from moss_pipecat.server.config import RESUME_KEY_ENV
from moss_pipecat.server.options import ServerOptions
from moss_pipecat.server.ray_app import app_resume_key
from moss_pipecat.server.tickets import ResumeTickets

from ..engine.helpers import random_frames
from .conftest import GREEDY, TOKEN, eventually
from .turns import LONG_TEXT, read_chunks, say, speak
from .wire import refused_hello

KEY = "deployment-resume-key-for-tests-0123456789"


@pytest.fixture
def shared_key(monkeypatch):
    """Every server made in the test shares ``KEY`` (as a deployment's servers do)."""
    monkeypatch.setenv(RESUME_KEY_ENV, KEY)
    return KEY


async def test_tickets_that_prove_nothing_are_refused_and_touch_nothing(
    shared_key, make_tiny_engine, make_server
):
    # Paced, no EOS before 60 frames: the owner's turn streams while the others knock.
    server = await make_server(make_tiny_engine(lookahead_s=0.4, eos_min_frames=60), token=TOKEN)
    hub = server.hub
    owner = await RemoteEngine(server.url, token=TOKEN).create_session(
        conversation_id="victim", sampling=GREEDY
    )
    assert await say(owner, "Mine.", 3) == 3
    before = await owner.snapshot()
    conn = hub.conversations["victim"].conn
    turn = await speak(owner, LONG_TEXT, 30)
    indices = [chunk.index for chunk in await read_chunks(turn, 3)]

    book = ResumeTickets(shared_key, hub.limits.resume_ticket_max_age_s)
    _, created, issued, mac = owner.resume_ticket.split(".")
    earlier = int(created) - 60_000  # made a minute before the owner did
    mine = secrets.token_urlsafe(32)
    max_age_ms = int(hub.limits.resume_ticket_max_age_s * 1000)
    other_deployment = ResumeTickets("another-deployment-resume-key-0123456789", 900)
    cases = {
        "ticket_invalid": [
            book.issue("other-id", mine, earlier),  # another conversation's
            owner.resume_ticket,  # the owner's, without its secret
            f"1.{earlier}.{issued}.{mac}",  # the owner's, its creation time forged
            other_deployment.issue("victim", mine, earlier),
        ],
        "ticket_expired": [book.issue("victim", mine, earlier, book.now_ms() - 2 * max_age_ms)],
        # Made at the same time as the holder's or after it: the holder came first.
        "ticket_newer": [book.issue("victim", mine, int(created))],
    }
    words = {"ticket_invalid": "not valid", "ticket_expired": "expired", "ticket_newer": "earlier"}
    pipelined = [{"type": "snapshot", "req": 1}, {"type": "reset", "req": 2}]
    for reason, tickets in cases.items():
        for ticket in tickets:
            hello = {"resume_secret": mine, "resume_ticket": ticket, "after": pipelined}
            reply, rest = await refused_hello(server, conversation_id="victim", **hello)
            assert (reply["type"], reply["code"], reply["fatal"]) == ("error", "forbidden", True)
            assert "resume_secret" in reply["message"] and rest == []
            assert words[reason] in reply["message"]
            assert owner.resume_secret not in reply["message"] and KEY not in reply["message"]
        assert hub.metrics.resume_refused.value(reason=reason) == len(tickets)
    # A ticket that is not one is refused at the edge (before the conversation is looked up).
    hello = {"conversation_id": "victim", "resume_secret": mine, "resume_ticket": "1.2.3.not-a-mac"}
    ws_reply, rest = await refused_hello(server, P.CLOSE_PROTOCOL, **hello)
    assert (ws_reply["code"], ws_reply["fatal"], rest) == ("bad_message", True, [])
    assert "resume_ticket" in ws_reply["message"]
    # Through the project's client, at once (no retries).
    with pytest.raises(ForbiddenError, match="created earlier"):
        await RemoteEngine(server.url, token=TOKEN, reconnect_timeout=30).create_session(
            conversation_id="victim",
            resume_secret=mine,
            resume_ticket=book.issue("victim", mine, int(created) + 1),
        )

    # The owner never noticed: same connection, its turn streams to the end, its history is
    # what it was plus that turn.
    assert hub.metrics.takeovers.value() == 0
    assert hub.conversations["victim"].conn is conn and owner._link.alive
    async for chunk in turn:
        indices.append(chunk.index)
    assert indices == list(range(30)) and turn.summary.stop == "max_frames"
    after = await owner.snapshot()
    n = before["rows"].shape[0]
    assert torch.equal(after["rows"][:n], before["rows"])
    assert [r for r, _ in after["turns"]] == ["assistant", "assistant"]
    assert owner.reconnects == 0
    await owner.close()


async def test_the_first_creator_takes_its_conversation_back_from_a_squatter(
    shared_key, make_tiny_engine, make_server, realtime_meta
):
    a = await make_server(make_tiny_engine(eos_min_frames=3))
    b_engine = make_tiny_engine(lookahead_s=0.4, eos_min_frames=60)  # the squatter streams
    b = await make_server(b_engine)
    owner = await RemoteEngine([a.url, b.url]).create_session(
        conversation_id="CA42", sampling=GREEDY
    )
    lo = realtime_meta["text_ids_drawn_from"][0]
    frames = random_frames(torch.Generator().manual_seed(9), 4, realtime_meta)
    await owner.add_user_turn(list(range(lo, lo + 3)), frames)
    assert await say(owner, "Hello there.", 3) == 3
    before = await owner.snapshot()
    created = owner.resume_ticket.split(".")[1]
    await a.stop()  # lost, with the conversation

    # Whoever knows the id is first on b: a conversation of its own, a turn streaming.
    attacker = await RemoteEngine(b.url).create_session(conversation_id="CA42", sampling=GREEDY)
    assert not attacker.resumed and await say(attacker, "Not yours.", 3) == 3
    squat = await speak(attacker, LONG_TEXT, 60)
    await read_chunks(squat, 1)

    # The owner's next call takes it back (its ticket, from a, holds on b) and restores it.
    assert await say(owner, "Still here.", 3) == 3
    assert owner.server_id == b.hub.server_id and not owner.resumed
    assert (owner.restored, owner.history_lost) == (1, 0)
    after = await owner.snapshot()
    n = before["rows"].shape[0]
    assert torch.equal(after["rows"][:n], before["rows"])
    assert [r for r, _ in after["turns"]] == ["user", "assistant", "assistant"]
    assert owner.resume_ticket.split(".")[1] == created  # the first creation, carried over
    # The squatter's turn ends with a clear error; its conversation is closed.
    with pytest.raises(ForbiddenError, match="created earlier"):
        await asyncio.wait_for(squat.wait(), 10)
    await eventually(lambda: b_engine.session_ids == ["CA42"], what="the squat to close")
    assert b.hub.conversations["CA42"].secret == owner.resume_secret
    with pytest.raises(ForbiddenError, match="created earlier"):
        await attacker.snapshot()  # and it cannot take it back
    assert b.hub.metrics.takeovers.value() == 1
    assert b.hub.metrics.resume_refused.value(reason="ticket_newer") == 1
    assert torch.equal((await owner.snapshot())["rows"], after["rows"])
    await owner.close()
    await attacker.close()


def test_the_resume_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(RESUME_KEY_ENV, raising=False)
    assert ServerOptions().server_config().resume_key is None  # one drawn per process
    assert ServerOptions().server_config(default_resume_key=KEY).resume_key == KEY
    drawn = {app_resume_key() for _ in range(2)}  # build_app's, one per app
    assert len(drawn) == 2 and all(len(k) >= 32 for k in drawn)
    monkeypatch.setenv(RESUME_KEY_ENV, KEY)
    assert app_resume_key() == KEY
    assert ServerOptions().server_config(default_resume_key="d" * 40).resume_key == KEY
    path = tmp_path / "resume.key"
    path.write_text("f" * 40 + "\n")
    _, server = serve_options(build_parser().parse_args(["serve", "--resume-key-file", str(path)]))
    assert server.server_config().resume_key == "f" * 40  # the file wins
    assert KEY not in repr(ServerConfig(resume_key=KEY))
    path.write_text(" \n")
    with pytest.raises(ValueError, match="empty"):
        server.server_config()
    with pytest.raises(InvalidInputError, match="at least 32"):
        ServerConfig(resume_key="short")
    with pytest.raises(SystemExit):  # never on argv
        build_parser().parse_args(["serve", "--resume-key", KEY])
