"""The turn in flight when a server is lost (issue #24): the client's journal keeps its rows
from what the server sends with its frames (their codes, and the text ids of ``turn.words``),
and cut at what was heard they are the rows an interruption at that point leaves in the engine,
id for id, and the sampling noise's counter with them; restored on another engine they give
the same history. A restore whose last turn
is a bad in-flight cut is refused and changes nothing."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.client.journal import InflightTurn, Journal
from moss_pipecat.engine.records import HistoryCursor, TurnRecord
from moss_pipecat.engine.session import SyncSession
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import SamplingParams
from moss_pipecat.speech.frames import FRAME_SECONDS
from moss_pipecat.speech.units import join_units

from ..engine.helpers import random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()


def _journal_of(s: SyncSession, rvq: int) -> Journal:
    """A client's journal holding ``s``'s finished history (a full delta, over the wire); the
    client learns ``rvq`` from the server's ``ready``."""
    from moss_pipecat.server.history_feed import history_message

    journal = Journal(rvq)
    msg = history_message(s.history_delta(HistoryCursor(), full=True), 1)
    journal.apply(P.parse_server_message(msg.to_json()))
    return journal


def _hear(journal: Journal, chunk) -> None:
    """One frame as the link takes it: its ``turn.words`` (when the server sends one), then its
    audio frame, both through the wire's encoding."""
    if P.TurnWords.wanted(chunk):
        journal.turn_text(P.parse_server_message(P.TurnWords.of(chunk).to_json()))
    data = P.pack_audio(chunk.turn_id, chunk.index, chunk.codes.tolist(), chunk.pcm)
    turn_id, index, codes, _ = P.unpack_audio(data)
    journal.turn_frame(turn_id, index, codes)


def _records(journal: Journal) -> list[TurnRecord]:
    fields, data = journal.restore_request()
    voice, records = P.unpack_restore(P.Restore(req=0, **fields), data, journal.rvq)
    assert voice is None
    return [
        TurnRecord(role, tuple(ids.tolist()), torch.from_numpy(frames), lead)
        for role, lead, ids, frames in records
    ]


# (text ids, whether the text ends (after the ids pushed late), ids pushed one after each of
# the first frames, chunks read, heard): a cut inside the frames fed; all the frames of a turn
# that waits for text (its last frame never fed: the cut adds its row); a text shorter than
# the delay; text arriving between frames (text ids told in several messages).
CASES = {
    "cut among fed frames": (20, True, 0, 7, 4),
    "waiting for text, all heard": (16, False, 0, None, None),
    "shorter than the delay": (5, True, 0, 6, 6),
    "text arriving while it speaks": (13, True, 3, 9, 8),
    "heard nothing": (20, True, 0, 3, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_journal_cuts_the_turn_in_flight_as_the_engine_interrupts_it(
    make_engine, realtime_meta, case
):
    n_text, ends, more, read, heard = CASES[case]
    engine = make_engine()
    layout = engine.layout
    gen = torch.Generator().manual_seed(11)
    s = SyncSession(engine.create_session(sampling=GREEDY))
    s.add_user_turn(random_text(gen, realtime_meta, 4), random_frames(gen, 5, realtime_meta))
    first = s.start_turn(max_frames=6)
    first.push_ids(random_text(gen, realtime_meta, 15))
    first.end_text()
    first.wait_sync()
    journal = _journal_of(s, layout.rvq)

    turn = s.start_turn(max_frames=60, min_frames=60)  # no EOS: it speaks what it is told
    journal.turn_started(turn.turn_id)
    turn.push_ids(random_text(gen, realtime_meta, n_text))
    if ends and not more:
        turn.end_text()
    if read is None:  # it waits for text after its last token's frame: all of it is out
        read = n_text - layout.lead(n_text) + 1
        heard = read
    frames = iter(turn)
    for i in range(read):
        _hear(journal, next(frames))
        if i < more:
            turn.push_ids(random_text(gen, realtime_meta, 1))
            if i == more - 1 and ends:
                turn.end_text()
    cut = s.interrupt(heard)
    expected = s.snapshot()["rows"]
    change = s.history_delta(HistoryCursor(), full=True)
    engine_turns = [*change.turns]
    said = journal.keep_lost(turn.turn_id, heard)
    if cut is not None:  # what the journal says it kept is what the engine's cut says
        assert (said.heard_frames, said.spoken_text) == (cut.heard_frames, cut.spoken_text)
        assert said.text_ids == cut.text_ids[: len(said.text_ids)]

    got = _records(journal)
    # The sampling noise goes on from where the engine's cut left it (frames past the heard
    # were never drawn), however far the engine had run when it was lost.
    assert journal.restore_request()[0]["noise"] == change.noise_counter
    if heard == 0:  # the engine drops a turn nobody heard; so does the journal
        assert cut is None or cut.heard_frames == 0
        assert len(got) == len(engine_turns) == 2
    else:
        assert cut.heard_frames == heard
        assert [(r.role, r.text_ids, r.lead) for r in got] == [
            (r.role, r.text_ids, r.lead) for r in engine_turns
        ]
        assert all(torch.equal(a.frames, b.frames) for a, b in zip(got, engine_turns, strict=True))
    # Restored on another engine: the rows the interrupted one holds.
    other = SyncSession(make_engine().create_session(sampling=GREEDY))
    other.restore(got)
    assert torch.equal(other.snapshot()["rows"], expected)


def test_a_turn_missing_text_or_frames_is_dropped(make_engine, realtime_meta):
    """A server that sends no text ids (an older one), or a frame that never came: the journal
    cannot rebuild the turn and drops it (as before the turn in flight was kept), and says so."""
    engine = make_engine()
    gen = torch.Generator().manual_seed(2)
    s = SyncSession(engine.create_session(sampling=GREEDY))
    turn = s.start_turn(max_frames=10, min_frames=10)  # frame 3 and 6 heard exist on any set
    turn.push_ids(random_text(gen, realtime_meta, 20))
    turn.end_text()
    chunks = list(turn)
    old, gap = Journal(engine.layout.rvq), Journal(engine.layout.rvq)
    for j in (old, gap):
        j.turn_started(turn.turn_id)
    for c in chunks:
        old.turn_frame(c.turn_id, c.index, c.codes.tolist())  # no turn.words text
        if c.index != 3:
            _hear(gap, c)
    for j in (old, gap):
        said = j.keep_lost(turn.turn_id, 6)
        assert j.lost is None and not j.restorable
        assert (said.heard_frames, said.spoken_text) == (0, "")  # the history kept nothing


def test_a_hostile_in_flight_cut_is_refused_and_changes_nothing(make_engine, realtime_meta):
    """A restore whose last assistant turn (the in-flight cut) has codes out of the vocabulary,
    text ids out of range, or more frames than its text rows: refused, the conversation as it
    was, and the good restore still lands."""
    engine = make_engine()
    layout = engine.layout
    vocab = engine.model.cfg.language.vocab_size
    gen = torch.Generator().manual_seed(4)
    s = SyncSession(engine.create_session(sampling=GREEDY))
    turn = s.start_turn(max_frames=30, min_frames=30)
    journal = Journal(layout.rvq)
    journal.turn_started(turn.turn_id)
    turn.push_ids(random_text(gen, realtime_meta, 18))
    frames = iter(turn)
    for _ in range(5):
        _hear(journal, next(frames))
    journal.keep_lost(turn.turn_id, 4)
    (good,) = _records(journal)
    frames_oov = good.frames.clone()
    frames_oov[-1, -1] = layout.audio_eos + 1
    bad = {
        "codes out of the vocabulary": TurnRecord("assistant", good.text_ids, frames_oov, 12),
        "text ids out of range": TurnRecord(
            "assistant", (*good.text_ids[:-1], vocab), good.frames, good.lead
        ),
        "more frames than its rows": TurnRecord(
            "assistant", good.text_ids, torch.cat((good.frames, good.frames[:1])), good.lead
        ),
    }
    target = SyncSession(make_engine().create_session(sampling=GREEDY))
    before = target.snapshot()
    for name, record in bad.items():
        with pytest.raises(InvalidInputError):
            target.restore([record])
            pytest.fail(name)
        after = target.snapshot()
        assert torch.equal(after["rows"], before["rows"]) and after["turns"] == [], name
    target.restore([good])
    assert target.snapshot()["turn_frames"] == [4]
    assert np.array_equal(journal.lost.frames, good.frames.numpy())


async def test_a_session_keeps_the_turn_lost_with_its_server_and_hostile_cuts_are_refused(
    make_tiny_engine, make_server, realtime_meta
):
    """Over the wire, in one process: a turn that has spoken all its text is lost with its
    connection and the server forgets the conversation; the session's interrupt (what was heard)
    cuts it in the journal (and returns what it kept, as the engine's cut would), the reconnect
    restores it: the rows are the old ones cut by the engine's own rule. Then restores whose
    in-flight cut is bad (codes out of the vocabulary, text ids out of range, more frames than
    its rows) are refused, touching nothing."""
    from .conftest import eventually
    from .test_restore_inflight import engine_cut
    from .wire import answer, raw_hello

    engine, server, session, chunks, stall = await _stalled_call(
        make_tiny_engine, make_server, "lost-1"
    )
    layout = engine.layout
    heard = len(chunks) - 2  # the listener heard all but its last two frames
    session._link.ws.transport.abort()  # the server loses the conversation with its client
    await eventually(lambda: "lost-1" not in server.hub.conversations, what="it to end")
    cut = await session.interrupt(heard)  # cut in the journal, restored with its heard part
    assert (cut.stop, cut.heard_frames, cut.audio_frames) == ("interrupted", heard, len(chunks))
    assert cut.spoken_text == join_units(
        [w for c in chunks for w in c.words if w[1] < heard * FRAME_SECONDS]
    )
    assert session.restored == 1 and session.history_lost == 0
    after = await session.snapshot()
    assert torch.equal(after["rows"], engine_cut(layout, stall, chunks, heard))
    assert after["turn_frames"] == [4, heard]
    records = [(t.role, t.lead, t.ids, t.frames) for t in session.journal.turns]
    assert len(records) == 2 and len(records[1][3]) == heard

    ws = await raw_hello(server, conversation_id="h-2")
    assert json.loads(await ws.recv())["type"] == "ready"
    role, lead, ids, frames = records[1]
    oov = frames.astype(np.int64).copy()
    oov[-1, 0] = layout.audio_eos + 1
    vocab = engine.model.cfg.language.vocab_size
    bad = {
        "codes out of the vocabulary": (role, lead, ids, oov),
        "text ids out of range": (role, lead, np.array([*ids[:-1], vocab]), frames),
        "more frames than its rows": (role, lead, ids, np.concatenate((frames, frames[:1]))),
    }
    for req, (name, last) in enumerate(bad.items()):
        fields, data = P.pack_restore(None, [records[0], last])
        await ws.send(json.dumps({"type": "restore", "req": req, **fields}))
        await ws.send(data)
        reply = await answer(ws, req)
        assert (reply["type"], reply.get("code"), reply.get("fatal")) == (
            "error",
            "invalid_input",
            False,
        ), name
        assert "turn" in reply["message"] or "code" in reply["message"], reply
    await ws.send(json.dumps({"type": "snapshot", "req": 10}))
    assert (await answer(ws, 10))["snapshot"]["turns"] == []
    fields, data = P.pack_restore(None, records)
    await ws.send(json.dumps({"type": "restore", "req": 11, **fields}))
    await ws.send(data)
    assert (await answer(ws, 11))["type"] == "result"
    await ws.send(json.dumps({"type": "snapshot", "req": 12}))
    rows = (await answer(ws, 12))["snapshot"]["rows"]
    assert torch.equal(torch.tensor(rows).reshape(-1, layout.channels), after["rows"])
    await ws.close()
    assert torch.equal((await session.snapshot())["rows"], after["rows"])  # untouched
    await session.close()


async def _stalled_call(make_tiny_engine, make_server, cid: str, **remote):
    """A server (whose conversations end with their connection) and a call on it (``remote``:
    ``RemoteEngine`` options) whose reply has stalled (``_speak_until_stalled``): (engine,
    server, session, chunks, stall snapshot)."""
    from moss_pipecat.client import RemoteEngine

    from .conftest import TOKEN

    engine = make_tiny_engine(eos_min_frames=60)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=0)
    client = RemoteEngine(server.url, token=TOKEN, **remote)
    session = await client.create_session(conversation_id=cid, sampling=GREEDY)
    chunks, stall = await _speak_until_stalled(session, engine.layout)
    return engine, server, session, chunks, stall


async def _speak_until_stalled(session, layout) -> tuple[list, dict]:
    """A user turn, then a reply that speaks all its text and waits for more that never comes
    (its engine's ``eos_min_frames`` is above its length): its chunks so far and the snapshot
    taken at the stall (one after each frame)."""
    from .turns import say

    await say(session, "Hello there.", 4)
    turn = await session.start_turn(max_frames=60)
    turn.push_text("This reply speaks all of its text and then waits for more that never comes")
    chunks = []
    async for chunk in turn:
        chunks.append(chunk)
        stall = await session.snapshot()
        text = stall["turns"][-1][1]
        if len(chunks) == stall["turn_frames"][-1] == text - layout.lead(text) + 1:
            return chunks, stall
    pytest.fail("the reply ended before it stalled")


def test_text_ids_told_twice_or_out_of_step():
    """The ids of a turn in flight come with its frames (``turn.words``) and as the server
    took them (``turn.text_ids``), in either order: told twice they are held once; a gap or
    ids that differ from those held leave the turn unable to be rebuilt."""

    def turn(*tellings) -> InflightTurn:
        t = InflightTurn(0)
        for start, ids in tellings:
            t.add_ids(start, ids)
        return t

    whole = [(0, [5, 6, 7]), (0, [5, 6]), (2, [7, 8]), (1, [6, 7, 8, 9]), (5, [])]
    t = turn(*whole)
    assert t.ids == [5, 6, 7, 8, 9] and t.whole
    assert turn((0, [5]), (1, [6]), (0, [5, 6, 7])).ids == [5, 6, 7]
    assert not turn((0, [5, 6]), (3, [8])).whole  # id 2 never came
    assert not turn((0, [5, 6]), (1, [7, 8])).whole  # another id 1
    assert not turn((0, [5, 6]), (0, [5, 9, 7])).whole


async def test_ids_the_server_took_after_the_last_frame_close_the_lost_turn(
    make_tiny_engine, make_server, realtime_meta
):
    """A turn that has spoken all its text gets more, and its server is lost before any frame
    came with those ids (here: the engine is held while the text comes, and the connection
    drops): the server told them as it took them (``turn.text_ids``), so the journal's cut has
    the rows the engine's cut has: the last heard frame's row and the EOS row take the new ids
    (without them, text_pad)."""
    import threading

    from .conftest import eventually
    from .test_restore_inflight import engine_cut

    engine, server, session, chunks, stall = await _stalled_call(
        make_tiny_engine, make_server, "lost-ids"
    )
    layout = engine.layout
    theirs = server.hub.conversations["lost-ids"].turn  # the server's side of the turn
    before = len(theirs.ids_sent)
    held, release = threading.Event(), threading.Event()
    engine.call(lambda: (held.set(), release.wait(30)))  # the engine thread waits between ticks
    await asyncio.to_thread(held.wait, 30)
    try:
        session._turn.push_text(" and then some more words came")
        await eventually(lambda: len(theirs.ids_sent) >= before + 2, what="the text to be taken")
        more = theirs.ids_sent[before:]
        await eventually(lambda: len(session.journal.inflight.ids) == before + len(more))
        session._link.ws.transport.abort()  # lost before any frame brought them
    finally:
        release.set()
    await eventually(lambda: "lost-ids" not in server.hub.conversations, what="it to end")
    heard = len(chunks)  # every frame received was heard: the cut's closing rows need 2 ids
    cut = await session.interrupt(heard)
    assert cut.heard_frames == heard and cut.text_ids[before:] == more
    after = await session.snapshot()
    assert session.restored == 1
    assert torch.equal(after["rows"], engine_cut(layout, stall, chunks, heard, more))
    assert not torch.equal(after["rows"], engine_cut(layout, stall, chunks, heard))
    await session.close()


async def test_a_cut_while_no_server_answers_reports_what_it_kept_and_restores_it_later(
    make_tiny_engine, make_server, realtime_meta
):
    """A turn lost with its server while no server comes back within the client's
    ``reconnect_timeout``: the interrupt does not fail (it was an ``ErrorFrame`` and no
    ``on_reply_interrupted``): the cut is the journal's, and it says what it kept, as when a
    server answers. The next call once a server listens again restores the cut turn."""
    from moss_pipecat.server import EngineServer, ServerConfig
    from moss_pipecat.server.config import ServerLimits

    from .conftest import TOKEN, eventually
    from .test_restore_inflight import engine_cut

    engine, server, session, chunks, stall = await _stalled_call(
        make_tiny_engine, make_server, "gone-1", reconnect_timeout=0.3
    )
    layout, port = engine.layout, server.port
    heard = len(chunks) - 2
    turn = session._turn
    await server.stop()  # the server goes, and nothing listens in its place
    await eventually(lambda: turn.lost, what="the turn to be lost")
    cut = await session.interrupt(heard)
    assert (cut.stop, cut.heard_frames, cut.audio_frames) == ("interrupted", heard, len(chunks))
    assert cut.spoken_text == join_units(
        [w for c in chunks for w in c.words if w[1] < heard * FRAME_SECONDS]
    )
    assert len(session.journal.lost.frames) == heard
    assert await session.interrupt(heard + 1) is None  # a second barge-in: nothing more to cut
    with pytest.raises(P.ServerUnavailableError):
        await session.snapshot()  # the next call still finds no server: it says so

    config = ServerConfig(host="127.0.0.1", port=port, token=TOKEN, limits=ServerLimits())
    back = await EngineServer(engine, config).start()
    try:
        after = await session.snapshot()  # reconnects, restores the cut turn
        assert session.restored == 1 and session.history_lost == 0
        assert torch.equal(after["rows"], engine_cut(layout, stall, chunks, heard))
        assert after["turn_frames"] == [4, heard]
        await session.close()
    finally:
        await session.engine.aclose()
        await back.stop()


@pytest.mark.parametrize("journal", [True, False])
async def test_the_server_tells_each_push_s_ids_only_to_a_journal(
    make_tiny_engine, make_server, journal
):
    """``turn.text_ids``, over the wire: to a client that keeps a journal (``hello``'s
    ``history``), each push's ids as the server took them, in order from 0 (``text_from``),
    together the turn's ids as its end tells them; to one that keeps none, nothing."""
    from .conftest import TOKEN
    from .wire import raw_hello

    # The turn cannot end before its text has ended and all of it was fed.
    server = await make_server(make_tiny_engine(eos_after_text=True), token=TOKEN)
    ws = await raw_hello(server, conversation_id="ids", history=journal)
    send = lambda **m: ws.send(json.dumps(m))  # noqa: E731
    await send(type="turn.start", req=1, max_frames=200)
    told, turn_id, summary = [], None, None
    while summary is None:
        msg = await asyncio.wait_for(ws.recv(), 20)
        if isinstance(msg, bytes):
            continue
        msg = json.loads(msg)
        if msg["type"] == "turn.started":
            turn_id = msg["turn_id"]
            for piece in ("Hello ", "there, ", "how are ", "you?"):
                await send(type="turn.text", turn_id=turn_id, text=piece)
            await send(type="turn.end", turn_id=turn_id)
        elif msg["type"] == "turn.text_ids":
            assert msg["turn_id"] == turn_id and msg["text_from"] == sum(map(len, told))
            told.append(msg["text_ids"])
        elif msg["type"] == "turn.end":
            summary = msg["summary"]
    if journal:
        assert len(told) >= 2 and [i for ids in told for i in ids] == summary["text_ids"]
    else:
        assert told == []
    await ws.close()


@pytest.mark.parametrize("lost_heard", [0, 2], ids=["nothing-heard", "two-heard"])
def test_a_restore_gives_back_where_the_last_reply_s_noise_began(
    make_engine, realtime_golden, lost_heard
):
    """A seeded call whose server is lost while the reply after a first one draws (a
    back-to-back pair: the journal's ``turn_noise`` is the first reply's, from ``history``;
    or the lost reply's heard part, the journal's own). A later cut of that last reply on the
    server that restored the history keeps only the heard frames' draws, as the lost server
    would have: the next reply is the same on both."""
    sampled = SamplingParams()
    text1 = realtime_golden["session.text1"].tolist()
    text2 = realtime_golden["session.text2"].tolist()
    engine = make_engine(max_sessions=2)
    s = SyncSession(engine.create_session(sampling=sampled, seed=11))
    s.say(ids=text1, max_frames=8, min_frames=8)
    journal = _journal_of(s, engine.layout.rvq)
    turn = s.start_turn(max_frames=40, min_frames=40)
    journal.turn_started(turn.turn_id)
    turn.push_ids(text2)
    turn.end_text()
    frames = iter(turn)
    for _ in range(5):
        _hear(journal, next(frames))
    s.interrupt(lost_heard, turn_id=turn.turn_id)  # where the lost server's departure cut it
    journal.keep_lost(turn.turn_id, lost_heard)
    fields = journal.restore_request()[0]
    assert fields["turn_noise"] == (0 if lost_heard == 0 else 8)
    other = SyncSession(make_engine().create_session(sampling=sampled, seed=11))
    other.restore(_records(journal), None, fields["seed"], fields["noise"], fields["turn_noise"])
    replies = []
    for session in (s, other):
        session.interrupt(1)  # a later decision: the last reply was heard for one frame
        chunks, _ = session.say(ids=text1, max_frames=6, min_frames=6)
        replies.append(torch.stack([c.codes for c in chunks]))
        session.close()
    assert torch.equal(*replies)


@pytest.mark.parametrize("case", ["second-lost", "both-finished", "reseeded-between"])
@pytest.mark.parametrize("heard", [2, 0])
async def test_a_back_to_back_barge_in_while_no_server_answers_is_the_journal_s(
    make_tiny_engine, make_server, heard, case
):
    """The server goes while the reply after a first one draws (a back-to-back pair, the
    first playing), or once it made both, and no server answers within ``reconnect_timeout``
    when the barge-in comes. The service cuts the newer reply to nothing, then the playing
    one: both cuts are the journal's, and the second says what it kept as the engine's cut
    would (before, it failed after the timeout, an ``ErrorFrame``, and the restore kept all
    of the first reply; where both were finished, the journal did not know where the first
    one's noise began). Once a server listens again the restore holds what a local engine
    holds after the same cuts, and the next seeded reply is the same (also with a reseed
    between the two replies)."""
    from moss_pipecat.client import RemoteEngine
    from moss_pipecat.server import EngineServer, ServerConfig
    from moss_pipecat.server.config import ServerLimits

    from .conftest import TOKEN, eventually
    from .turns import back_to_back, same_next_reply, say, speak

    sampled, rules = SamplingParams(), {"eos_min_frames": 60}
    engine = make_tiny_engine(**rules)
    server = await make_server(engine, token=TOKEN, idle_expiry_s=0)
    client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=0.3)
    session = await client.create_session(conversation_id="b2b-down", sampling=sampled, seed=5)
    local = make_tiny_engine(**rules).create_session(sampling=sampled, seed=5)
    if case == "second-lost":
        first, second = await back_to_back(session, local)
    else:
        for s in (session, local):
            await say(s, "Hello there.", 3)
        first = await speak(session, "How are you?", 6)
        await first.wait()
        if case == "reseeded-between":
            await session.set_sampling(sampled, seed=9)
        second = await speak(session, "And then.", 4)
        await second.wait()
    port = server.port
    await server.stop()  # the server goes, and nothing listens in its place
    await eventually(lambda: session._link.failure is not None, what="the link to fail")
    assert second.lost == (case == "second-lost")
    assert (await session.interrupt(0, turn_id=second.turn_id)).heard_frames == 0
    cut = await session.interrupt(heard, turn_id=first.turn_id)
    mine = await speak(local, "How are you?", 6)
    await mine.wait()
    if case != "second-lost":
        if case == "reseeded-between":
            await local.set_sampling(sampled, seed=9)
        await (await speak(local, "And then.", 4)).wait()
        assert (await local.interrupt(0)).heard_frames == 0
    my_cut = await local.interrupt(heard)
    assert cut is not None and my_cut is not None
    assert (cut.stop, cut.heard_frames, cut.audio_frames, cut.spoken_text) == (
        my_cut.stop,
        my_cut.heard_frames,
        my_cut.audio_frames,
        my_cut.spoken_text,
    )
    if heard:  # what was heard never grows back
        assert await session.interrupt(heard + 1, turn_id=first.turn_id) is None

    config = ServerConfig(host="127.0.0.1", port=port, token=TOKEN, limits=ServerLimits())
    back = await EngineServer(engine, config).start()
    try:
        after = await session.snapshot()  # reconnects, restores the cut turns
        assert session.restored == 1 and session.history_lost == 0
        assert torch.equal(after["rows"], (await local.snapshot())["rows"])
        assert await same_next_reply(session, local)
        await session.close()
    finally:
        await session.engine.aclose()
        await back.stop()
