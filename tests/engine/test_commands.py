"""The engine's command API: ``engine.submit(session_id, command) -> Future`` is the one way in.

Stated as equivalences and refusals: a conversation driven through ``Session`` equals the same
commands submitted by hand; bad commands fail at ``submit`` (on the caller's thread) and change
nothing; commands apply in the order they were submitted.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from moss_pipecat.engine import (
    AddUserTurn,
    Close,
    CreateSession,
    EndText,
    Interrupt,
    PushText,
    Reset,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
    TurnSummary,
)
from moss_pipecat.engine.events import Channel
from moss_pipecat.errors import InvalidInputError, TurnStateError, UnknownSessionError
from moss_pipecat.model import SamplingParams

from .helpers import random_frames, random_text

GREEDY = SamplingParams.greedy_decoding()
SAMPLED = SamplingParams(temperature=0.9, top_k=20, top_p=0.8)


def _script(meta: dict) -> dict:
    gen = torch.Generator().manual_seed(5)
    return {
        "text1": random_text(gen, meta, 12),
        "text2": random_text(gen, meta, 9),
        "text3": random_text(gen, meta, 7),
        "user_ids": random_text(gen, meta, 5),
        "user_frames": random_frames(gen, 6, meta),
        "voice": random_frames(gen, 4, meta),
    }


async def _through_session(engine, s: dict) -> list:
    session = await engine.acreate_session(sampling=GREEDY, seed=3, session_id="a")
    out = []

    async def say(ids, **kw):
        turn = await session.start_turn(max_frames=10, **kw)
        turn.push_ids(ids[:4])
        turn.push_ids(ids[4:])
        turn.end_text()
        chunks = [c.codes.tolist() async for c in turn]
        out.append((chunks, turn.summary.stop, turn.summary.audio_frames))

    await say(s["text1"])
    out.append(await session.interrupt(2))
    await session.add_user_turn(s["user_ids"], s["user_frames"])
    await session.set_sampling(SAMPLED, seed=11)
    await session.set_limits(lookahead_s=2.0)
    await say(s["text2"], min_frames=3)
    await session.set_voice(s["voice"])
    await say(s["text3"], eos_after_text=True)
    out.append((await session.snapshot())["rows"].tolist())
    await session.reset()
    out.append((await session.snapshot())["rows"].tolist())
    await session.close()
    return out


async def _through_commands(engine, s: dict) -> list:
    def do(command):
        return asyncio.wrap_future(engine.submit("b", command))

    await do(CreateSession(None, GREEDY, 3))
    out = []

    async def say(ids, **kw):
        channel = Channel()
        tid = await do(StartTurn(channel, max_frames=10, **kw))
        engine.submit("b", PushText(tid, tuple(ids[:4])))
        engine.submit("b", PushText(tid, tuple(ids[4:])))
        engine.submit("b", EndText(tid))
        chunks = []
        while not isinstance(item := await channel.get(), TurnSummary):
            chunks.append(item.codes.tolist())
        out.append((chunks, item.stop, item.audio_frames))

    await say(s["text1"])
    out.append(await do(Interrupt(2)))
    await do(AddUserTurn(tuple(s["user_ids"]), s["user_frames"]))
    await do(SetSampling(SAMPLED, seed=11))
    await do(SetLimits(lookahead_s=2.0))
    await say(s["text2"], min_frames=3)
    await do(SetVoice(s["voice"]))
    await say(s["text3"], eos_after_text=True)
    out.append((await do(Snapshot()))["rows"].tolist())
    await do(Reset())
    out.append((await do(Snapshot()))["rows"].tolist())
    await do(Close())
    return out


def _comparable(out: list) -> list:
    # Summaries carry timings (ttfa_s): compare what they say about the conversation.
    return [
        (o.stop, o.audio_frames, o.heard_frames, o.text_ids) if isinstance(o, TurnSummary) else o
        for o in out
    ]


async def test_a_session_is_its_commands(make_engine, realtime_meta):
    s = _script(realtime_meta)
    via_session = await _through_session(make_engine(max_sessions=1), s)
    via_commands = await _through_commands(make_engine(max_sessions=1), s)
    assert _comparable(via_session) == _comparable(via_commands)


def test_bad_commands_fail_at_submit_and_change_nothing(make_engine, realtime_meta, golden_layout):
    engine = make_engine(max_sessions=1)
    rvq, vocab = golden_layout.rvq, engine.model.cfg.language.vocab_size
    engine.create_session(sampling=GREEDY, session_id="s")
    before = engine.submit("s", Snapshot()).result()
    frames = random_frames(torch.Generator().manual_seed(0), 3, realtime_meta)
    bad = [
        SetVoice(torch.zeros(3, rvq + 1, dtype=torch.int64)),  # wrong width
        SetVoice(frames.float()),  # not codes
        AddUserTurn((vocab + 5,), frames),  # text id out of range
        AddUserTurn((1,), frames[:0]),  # no audio
        SetSampling(SamplingParams(repetition_window=engine.config.repetition_window_max + 1)),
        SetLimits(context_budget=engine.config.max_context + 1),
        CreateSession(frames[:, :-1]),
    ]
    gate = threading.Event()
    held = engine.call(gate.wait)  # nothing reaches the engine thread while we check
    try:
        for command in bad:
            with pytest.raises(InvalidInputError):
                engine.submit("s", command)
        with pytest.raises(InvalidInputError, match="not an engine command"):
            engine.submit("s", "snapshot")
        with pytest.raises(InvalidInputError, match="session id"):
            engine.submit("", Snapshot())
    finally:
        gate.set()
    held.result(5)
    after = engine.submit("s", Snapshot()).result()
    assert torch.equal(after["rows"], before["rows"]) and after["sampling"] == before["sampling"]
    # Fields a command can check alone are refused when it is made.
    for make in (
        lambda: StartTurn(Channel(), max_frames=0),
        lambda: StartTurn(Channel(), min_frames=-1),
        lambda: Interrupt(-1),
        lambda: Interrupt(1.5),
        lambda: Interrupt(True),
        lambda: Interrupt(1, heard_units=-1),
        lambda: Interrupt(1, heard_units=2.0),
        lambda: SetLimits(lookahead_s=0.0),
        lambda: PushText(0, (-1,)),
        lambda: SetSampling(GREEDY, seed=-1),
    ):
        with pytest.raises(InvalidInputError):
            make()


def test_commands_apply_in_the_order_they_were_submitted(make_engine):
    engine = make_engine(max_sessions=1)
    engine.create_session(sampling=GREEDY, session_id="s")
    gate = threading.Event()
    engine.call(gate.wait)
    finished: list[int] = []
    futures = [
        engine.submit("s", StartTurn(Channel(), max_frames=2)),
        engine.submit("s", StartTurn(Channel(), max_frames=2)),  # the first one is open
        engine.submit("s", Reset()),  # ends it ("closed")
        engine.submit("s", StartTurn(Channel(), max_frames=2)),
        engine.submit("s", Close()),
        engine.submit("s", Snapshot()),  # after Close: no such session
    ]
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _, i=i: finished.append(i))
    gate.set()
    assert futures[0].result(5) == 0
    with pytest.raises(TurnStateError):
        futures[1].result(5)
    assert futures[2].result(5) is None and futures[3].result(5) == 1
    assert futures[4].result(5) is None
    with pytest.raises(UnknownSessionError):
        futures[5].result(5)
    assert finished == list(range(len(futures)))
    assert engine.submit("s", Close()).result(5) is None  # closing twice is a no-op
