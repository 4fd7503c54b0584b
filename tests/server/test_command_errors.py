"""One command, one definition: every command's bad values get the same error class locally
(``Session``), over ``SyncSession`` and over the remote session (a real server), and change
nothing; the server refuses the same values from a client that skips the checks.

The tables name the command each row exercises; every command with fields must have rows, and
the three session classes must offer every command's method with the same parameters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import math
from typing import get_args

import pytest
import torch
from websockets.asyncio.client import connect

from moss_pipecat.client import RemoteEngine, RemoteSession
from moss_pipecat.engine import (
    AddUserTurn,
    Close,
    Command,
    CreateSession,
    EndText,
    HistoryDelta,
    Interrupt,
    PushText,
    Reset,
    RestoreHistory,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
)
from moss_pipecat.engine.session import Session, SyncSession
from moss_pipecat.errors import InvalidInputError, MossError, TurnStateError
from moss_pipecat.model import SamplingParams

from .conftest import GREEDY

# The session method that issues each command (None: not a session method).
METHOD_OF = {
    CreateSession: None,  # MossEngine.create_session / RemoteEngine.create_session
    StartTurn: "start_turn",
    PushText: None,  # TurnStream.push_text / push_ids (rows in TURN_ROWS)
    EndText: None,  # TurnStream.end_text
    Interrupt: "interrupt",
    AddUserTurn: "add_user_turn",
    SetVoice: "set_voice",
    SetSampling: "set_sampling",
    SetLimits: "set_limits",
    Reset: "reset",
    Snapshot: "snapshot",
    Close: "close",
    RestoreHistory: None,  # SERVER_BUILT
    HistoryDelta: None,
}
# Built by the server only: from a client's binary restore frame (its bad values are the rows of
# tests/server/test_restore_wire.py and tests/engine/test_restore.py), and for the history
# deltas it sends; no client API takes their fields.
SERVER_BUILT = {RestoreHistory, HistoryDelta}


def _rows(engine) -> list[tuple[type, str, tuple, dict, dict | None]]:
    """(command, session method, args, kwargs, the raw wire message or None): each row is a bad
    value, refused with ``InvalidInputError`` everywhere."""
    rvq, eos = engine.layout.rvq, engine.layout.audio_eos
    cfg, vocab = engine.config, engine.facts.text_vocab
    frames = torch.randint(0, eos, (3, rvq), generator=torch.Generator().manual_seed(0))
    window = cfg.repetition_window_max + 1
    rows: list[tuple[type, str, tuple, dict, dict | None]] = []
    for kw in (
        dict(max_frames=0),
        dict(max_frames=-3),
        dict(max_frames=1.5),
        dict(max_frames=True),
        dict(max_frames="4"),
        dict(max_frames=2**31),
        dict(min_frames=-1),
        dict(min_frames=2.0),
        dict(min_frames=2**31),
        dict(eos_after_text="yes"),
        dict(eos_after_text=1),
    ):
        rows.append((StartTurn, "start_turn", (), kw, {"type": "turn.start", **kw}))
    for heard in (-1, 2.5, True, "3", 2**31, None):
        rows.append(
            (Interrupt, "interrupt", (heard,), {}, {"type": "interrupt", "heard_frames": heard})
        )
    for units in (-1, 2.5, True, "3", 2**31):
        wire = {"type": "interrupt", "heard_frames": 1, "heard_units": units}
        rows.append((Interrupt, "interrupt", (1,), dict(heard_units=units), wire))
    for ids, f in (
        ([-1], frames),
        ([1.5], frames),
        (["a"], frames),
        ([2**31], frames),
        ([vocab], frames),  # the engine's vocabulary: checked against its facts
        ([1], frames[:0]),
        ([1], frames[:, :-1]),
        ([1], frames.float()),
        ([1], torch.full((2, rvq), eos + 1)),
    ):
        rows.append((AddUserTurn, "add_user_turn", (ids, f), {}, None))
    for f in (frames[:0], frames[:, :-1], frames.float(), torch.full((2, rvq), eos + 1)):
        rows.append((SetVoice, "set_voice", (f,), {}, None))
    for args, kw in (
        (("greedy",), {}),
        ((SamplingParams(repetition_window=window),), {}),  # the engine's window cap
        ((GREEDY,), dict(seed=-1)),
        ((GREEDY,), dict(seed=1.5)),
        ((GREEDY,), dict(seed=True)),
        ((GREEDY,), dict(seed=2**63)),
    ):
        rows.append((SetSampling, "set_sampling", args, kw, None))
    for kw in (
        dict(context_budget=cfg.max_context + 1),  # the engine's: checked against its facts
        dict(context_budget=cfg.turn_reserve),
        dict(context_budget=0),
        dict(context_budget=100.5),
        dict(context_budget="100"),
        dict(lookahead_s=0.0),
        dict(lookahead_s=-1.0),
        dict(lookahead_s=math.nan),
        dict(lookahead_s=math.inf),
        dict(lookahead_s="1"),
        dict(lookahead_s=True),
        dict(unlimited_lookahead="yes"),
        dict(unlimited_lookahead=1),
        dict(unlimited_lookahead=None),
    ):
        rows.append((SetLimits, "set_limits", (), kw, {"type": "settings", "limits": kw}))
    return rows


def test_every_command_has_a_session_method_and_the_sessions_agree():
    assert set(METHOD_OF) == set(get_args(Command))  # a new command needs a row here
    for method in filter(None, METHOD_OF.values()):
        local = inspect.signature(getattr(Session, method)).parameters
        for twin in (SyncSession, RemoteSession):
            other = inspect.signature(getattr(twin, method)).parameters
            assert [(p.name, p.kind, p.default) for p in other.values()] == [
                (p.name, p.kind, p.default) for p in local.values()
            ], (twin.__name__, method)


async def _call(where: str, fn, *args, **kw) -> MossError | None:
    """Calls ``fn`` as its session's users do (on a plain thread for the sync session); returns
    the error it raised (None: none)."""
    try:
        if where == "sync":
            await asyncio.to_thread(fn, *args, **kw)
        else:
            result = fn(*args, **kw)
            if inspect.isawaitable(result):
                await result
    except MossError as e:
        return e
    return None


@pytest.fixture
async def three(make_tiny_engine, make_server):
    """(engine, server, local Session, SyncSession, RemoteSession) on one engine."""
    engine = make_tiny_engine(max_sessions=5)
    server = await make_server(engine)
    local = await engine.acreate_session(sampling=GREEDY)
    sync = SyncSession(await engine.acreate_session(sampling=GREEDY))
    client = RemoteEngine(server.url)
    remote = await client.create_session(sampling=GREEDY)
    yield engine, server, local, sync, remote
    await client.aclose()


async def test_bad_values_get_the_same_error_everywhere_and_change_nothing(three):
    engine, _, local, sync, remote = three
    rows = _rows(engine)
    with_fields = {c for c in get_args(Command) if [f for f in dataclasses.fields(c)]}
    turn_commands = {PushText, EndText}  # TURN_ROWS
    assert with_fields - turn_commands - SERVER_BUILT - {CreateSession} <= {row[0] for row in rows}
    before = {
        "local": await local.snapshot(),
        "sync": await asyncio.to_thread(sync.snapshot),
        "remote": await remote.snapshot(),
    }
    sessions = {"local": local, "sync": sync, "remote": remote}
    for command, method, args, kw, _ in rows:
        errors = {w: await _call(w, getattr(s, method), *args, **kw) for w, s in sessions.items()}
        kinds = {type(e) for e in errors.values()}
        assert kinds == {InvalidInputError}, (command.__name__, args, kw, errors)
    after = {
        "local": await local.snapshot(),
        "sync": await asyncio.to_thread(sync.snapshot),
        "remote": await remote.snapshot(),
    }
    for where in before:
        assert torch.equal(after[where]["rows"], before[where]["rows"]), where
        assert after[where]["sampling"] == before[where]["sampling"], where
        assert after[where]["context_budget"] == before[where]["context_budget"], where


async def test_the_server_refuses_the_same_values_from_a_raw_client(three):
    engine, server, *_ = three
    async with connect(server.url, compression=None) as ws:
        await ws.send(json.dumps({"type": "hello", "sampling": {"greedy": True}}))
        assert json.loads(await ws.recv())["type"] == "ready"
        req = 0
        for *_, wire in _rows(engine):
            if wire is None or not _json_safe(wire):
                continue
            req += 1
            await ws.send(json.dumps({**wire, "req": req}, allow_nan=True))
            reply = json.loads(await ws.recv())
            # A value the message's command refuses is a bad_message; one the engine's facts
            # refuse is invalid_input (InvalidInputError at the client).
            assert reply["type"] == "error", (wire, reply)
            assert reply["code"] in ("bad_message", "invalid_input"), (wire, reply)
            assert reply["req"] == req and not reply["fatal"]
        await ws.send(json.dumps({"type": "snapshot", "req": 0}))
        snap = json.loads(await ws.recv())["snapshot"]
        assert snap["turns"] == [] and snap["phase"] == "idle"


def _json_safe(wire: dict) -> bool:
    try:
        json.dumps(wire)
    except (TypeError, ValueError):
        return False
    return True


async def test_create_session_refuses_the_same_values(three):
    engine, server, *_ = three
    frames = torch.zeros(3, engine.layout.rvq + 1, dtype=torch.int64)
    client = RemoteEngine(server.url)
    n = len(engine.session_ids)
    for kw in (
        dict(seed=-1),
        dict(seed=1.5),
        dict(seed=2**63),
        dict(sampling="greedy"),
        dict(voice=frames),
        dict(voice=frames[:0, :-1]),
    ):
        errors = {
            "local": await _call("local", engine.acreate_session, **kw),
            "sync": await _call("sync", engine.create_session, **kw),
            "remote": await _call("remote", client.create_session, **kw),
        }
        assert {type(e) for e in errors.values()} == {InvalidInputError}, (kw, errors)
    assert len(engine.session_ids) == n  # nothing was left open
    await client.aclose()


async def test_turn_input_gets_the_same_errors_everywhere(three):
    engine, _, local, sync, remote = three
    vocab, max_chars = engine.facts.text_vocab, engine.config.max_text_chars
    frames = torch.zeros(2, engine.layout.rvq, dtype=torch.int64)
    sessions = {"local": local, "sync": sync, "remote": remote}
    turns = {}
    for where, s in sessions.items():
        if where == "sync":
            turns[where] = await asyncio.to_thread(s.start_turn, 2)
        else:
            turns[where] = await s.start_turn(2)

    async def same(kind: type, name: str, *args, on=turns) -> None:
        got = {w: await _call(w, getattr(t, name), *args) for w, t in on.items()}
        assert {type(e) for e in got.values()} == {kind}, (name, args, got)

    for ids in ([-1], [1.5], ["a"], [2**31]):
        await same(InvalidInputError, "push_ids", ids)
    await same(InvalidInputError, "push_text", "x" * (max_chars + 1))
    # What a session refuses while its turn is open.
    await same(TurnStateError, "start_turn", on=sessions)
    await same(TurnStateError, "add_user_turn", [1], frames, on=sessions)
    await same(TurnStateError, "set_voice", frames, on=sessions)
    # Ids past the model's vocabulary end the turn with the error in its summary.
    for where, turn in turns.items():
        assert await _call(where, turn.push_ids, [vocab]) is None
        assert await _call(where, turn.end_text) is None
    summaries = {
        "local": await turns["local"].wait(),
        "sync": await asyncio.to_thread(turns["sync"].wait_sync),
        "remote": await turns["remote"].wait(),
    }
    for where, summary in summaries.items():
        assert summary.stop == "error" and type(summary.error) is InvalidInputError, where
    await same(TurnStateError, "push_text", "late")  # text after the text ended
