"""Protocol messages, wire summaries, errors, metrics text and the CLI parser."""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import pytest
import torch

from moss_pipecat import protocol as P
from moss_pipecat.cli import build_parser
from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    OverloadedError,
    TurnStateError,
    UnknownSessionError,
)
from moss_pipecat.model import SamplingParams
from moss_pipecat.protocol.errors import (
    ForbiddenError,
    ProtocolError,
    RemoteError,
    ServerUnavailableError,
)
from moss_pipecat.server.app import bearer_token
from moss_pipecat.server.metrics import ServerMetrics


def test_every_client_message_parses_and_rejects_extra_fields():
    samples = {
        "hello": {"conversation_id": "a:b-c.d_1", "token": "t", "seed": 3},
        "turn.start": {"req": 1, "max_frames": 5},
        "turn.text": {"turn_id": 0, "text": "hi"},
        "turn.ids": {"turn_id": 0, "ids": [1, 2]},
        "turn.end": {"turn_id": 0},
        "interrupt": {"req": 1, "heard_frames": 0},
        "user_turn": {"req": 1, "text": "x", "format": "pcm16", "sample_rate": 16000, "bytes": 2},
        "voice": {"req": 1, "format": "none"},
        "settings": {"req": 1, "sampling": {"greedy": True}},
        "reset": {"req": 1},
        "snapshot": {"req": 1},
        "close": {"req": 1},
        "restore": {"req": 1, "turns": 2, "voice_frames": 3, "seed": 4, "noise": 5, "bytes": 9},
    }
    assert set(samples) == set(P.CLIENT_MESSAGES)
    for kind, fields in samples.items():
        msg = P.parse_client_message(P.dumps({"type": kind, **fields}))
        assert msg.type == kind
        with pytest.raises(P.MessageError) as info:
            P.parse_client_message(P.dumps({"type": kind, **fields, "surprise": 1}))
        assert info.value.code == "bad_message"


@pytest.mark.parametrize(
    "raw, code",
    [
        ("", "bad_message"),
        ("nul", "bad_message"),
        ('"string"', "bad_message"),
        ('{"type": 5}', "unknown_type"),
        ('{"type": "hello", "conversation_id": ""}', "bad_message"),
        ('{"type": "hello", "conversation_id": "' + "x" * 129 + '"}', "bad_message"),
        ('{"type": "turn.ids", "turn_id": 0, "ids": [-1]}', "bad_message"),
        ('{"type": "user_turn", "req": 1, "format": "mp3", "bytes": 1}', "bad_message"),
        ('{"type": "interrupt", "req": true, "heard_frames": 1}', "bad_message"),
    ],
)
def test_malformed_messages_raise_message_errors(raw, code):
    with pytest.raises(P.MessageError) as info:
        P.parse_client_message(raw)
    assert info.value.code == code


def test_nesting_at_any_depth_is_a_bad_message():
    # The parse and the Unicode check (for a \\u escape) both recurse, the check a few frames
    # deeper: a depth the parse just managed overflowed the check ("internal" error; a hello
    # nested so was dropped without a word). Whatever depth the stack leaves: bad_message.
    for depth in range(1, sys.getrecursionlimit() + 10):
        raw = '{"type": "reset", "req": 7, "x": ' + "[" * depth + '"\\u0041"' + "]" * depth + "}"
        with pytest.raises(P.MessageError) as info:
            P.parse_client_message(raw)
        assert info.value.code == "bad_message", depth
        assert info.value.req in (7, None)  # None: too deep for the parse itself


@pytest.mark.parametrize("req", [2**53, 10**30])
def test_an_error_quotes_only_a_req_the_protocol_allows(req):
    with pytest.raises(P.MessageError) as info:
        P.parse_client_message(P.dumps({"type": "reset", "req": req}))
    assert info.value.code == "bad_message" and info.value.req is None
    with pytest.raises(P.MessageError) as info:
        P.parse_client_message(f'{{"type": "reset", "req": {req}, "x": "\\ud800"}}')
    assert info.value.code == "bad_message" and info.value.req is None


def test_sampling_and_summaries_round_trip():
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, repetition_window=10)
    assert P.Sampling.of(params).to_params() == params
    with pytest.raises(InvalidInputError):
        P.Sampling(temperature=0).to_params()
    s = TurnSummary(3, "error", 4, 2, [1, 2], "ab", "a", 0.05, TurnStateError("busy"))
    s.words = [("a", 0.0), ("b", 0.25)]
    msg = P.parse_server_message(P.TurnEnded(turn_id=3, summary=P.WireSummary.of(s)).to_json())
    back = msg.summary.to_summary()
    assert isinstance(back.error, TurnStateError) and str(back.error) == "busy"
    back.error = s.error
    assert back == s
    nothing = json.loads(P.Result(req=4, summary=None).to_json())  # interrupt: nothing to cut
    assert nothing == {"type": "result", "req": 4, "summary": None}
    assert P.parse_server_message(json.dumps(nothing)).summary is None


def test_word_times_travel_with_their_frame():
    chunk = AudioChunk(2, 7, torch.zeros(16, dtype=torch.int64), None, (("hi", 0.0), ("yo", 0.3)))
    text = P.TurnWords.of(chunk).to_json()
    assert json.loads(text) == {
        "type": "turn.words",
        "turn_id": 2,
        "index": 7,
        "words": [["hi", 0.0], ["yo", 0.3]],
    }
    assert P.parse_server_message(text).words == list(chunk.words)


def test_every_server_message_round_trips_through_its_model():
    audio = P.AudioInfo(sample_rate=24000, frame_samples=1920, rvq=16, pcm=True)
    summary = P.WireSummary.of(TurnSummary(1, "eos", 2, 2, [5], "a", "a", None, None))
    snapshot = P.WireSnapshot.of(
        {
            "rows": torch.zeros(2, 17, dtype=torch.int64),
            "turns": [("assistant", 1)],
            "phase": "idle",
            "sampling": SamplingParams.greedy_decoding(),
            "cache_len": 2,
            "engine_added_later": torch.tensor(3),  # unknown keys travel as JSON
        }
    )
    samples = [
        P.Ready(
            v=1,
            conversation_id="c",
            resumed=False,
            resume_secret="s3cr-t_",
            server_id="host:1",
            audio=audio,
            limits=P.ReadyLimits(max_text_chars=10),
        ),
        P.TurnStarted(req=1, turn_id=2),
        P.TurnWords(turn_id=2, index=0, words=[("hi", 0.0)]),
        P.TurnEnded(turn_id=1, summary=summary),
        P.Result(req=3),
        P.Result(req=4, snapshot=snapshot),
        P.History(
            rev=2,
            drop=1,
            keep=3,
            turns=[P.HistoryTurn(role="assistant", ids=[1, 2, 3], lead=1, codes="AAAB")],
            voice_changed=True,
            seed=7,
            noise=11,
        ),
        P.ErrorReply.of("forbidden", "no", fatal=True),
        P.TurnProgress(turn_id=2, rows_done=10, rows_total=40),
        P.TurnTextIds(turn_id=2, text_from=3, text_ids=[7, 8]),
        P.GoAway(deadline_s=19.5),
    ]
    assert {m.type for m in samples} == set(P.SERVER_MESSAGES)
    for msg in samples:
        back = P.parse_server_message(msg.to_json())
        assert type(back) is type(msg) and back == msg
    # Exactly today's shapes: optional fields are sent only when the message was given them.
    assert json.loads(P.Result(req=3).to_json()) == {"type": "result", "req": 3}
    assert json.loads(P.ErrorReply.of("bad_message", "m").to_json()) == {
        "type": "error",
        "code": "bad_message",
        "message": "m",
        "fatal": False,
    }
    assert json.loads(P.ErrorReply.of("x", "m", req=0, turn_id=5).to_json())["req"] == 0
    wire = json.loads(samples[5].to_json())["snapshot"]
    assert wire["rows"] == [[0] * 17] * 2 and wire["engine_added_later"] == 3
    assert "summary" not in json.loads(samples[5].to_json())
    assert json.loads(samples[-1].to_json()) == {"type": "goaway", "deadline_s": 19.5}
    assert P.parse_server_message('{"type": "goaway", "deadline_s": 1}').reason == "shutdown"
    # A newer server's fields and types do not break this client; a broken message does.
    assert P.parse_server_message('{"type": "result", "req": 1, "new": 2}') == P.Result(req=1)
    assert P.parse_server_message('{"type": "telemetry", "x": 1}') is None
    for bad in ('{"type": "turn.started", "req": 1}', "[1]", "nope"):
        with pytest.raises(ProtocolError):
            P.parse_server_message(bad)


def test_client_messages_are_sent_as_built():
    secret = "Abc_-1" * 4  # 24 URL-safe characters
    hello = P.Hello(conversation_id="c-1", resume_secret=secret)
    assert json.loads(hello.to_json()) == {
        "type": "hello",
        "conversation_id": "c-1",
        "resume_secret": secret,
    }
    assert P.parse_client_message(hello.to_json()) == hello
    for bad in ("", "x" * 21, "x" * 257, "has space" * 3, "dot.not" * 4, 5):
        with pytest.raises(P.MessageError) as info:
            P.parse_client_message(json.dumps({"type": "hello", "resume_secret": bad}))
        assert info.value.code == "bad_message"


def test_error_codes_map_to_the_engine_exception_types():
    for exc in (
        CapacityError("x"),
        InvalidInputError("x"),
        TurnStateError("x"),
        ProtocolError("x"),
    ):
        assert type(P.error_from_wire(P.error_code(exc), "x")) is type(exc)
    assert P.error_code(RuntimeError("boom")) == "internal"
    assert isinstance(P.error_from_wire("superseded", "m"), ServerUnavailableError)
    assert isinstance(P.error_from_wire("no-such-code", "m"), RemoteError)
    # Every code of the one table comes back as its type, and every type goes out as the
    # first code listed for it.
    for code, cls in P.ERROR_CODES:
        err = P.error_from_wire(code, "m")
        assert type(err) is cls and str(err) == "m"
        assert P.error_code(err) == next(c for c, k in P.ERROR_CODES if k is cls)
    assert P.error_code(ForbiddenError("x")) == "forbidden"
    assert P.error_code(UnknownSessionError("x")) == "unknown_session"  # not session_closed
    with pytest.raises(ProtocolError):
        P.unpack_audio(b"nope")


def test_an_overload_is_capacity_to_older_clients_and_overloaded_to_newer_ones():
    fields = P.error_fields(OverloadedError("busy"))
    assert fields == {"code": "capacity", "message": "busy", "subcode": "overloaded"}
    wire = json.loads(P.ErrorReply.of(**fields, fatal=True).to_json())
    assert wire == {
        "type": "error",
        "code": "capacity",
        "message": "busy",
        "fatal": True,
        "subcode": "overloaded",
    }
    assert type(P.parse_server_message(json.dumps(wire)).to_exception()) is OverloadedError
    # A client older than the subcode ignores the field: it reads the code alone.
    assert type(P.error_from_wire(wire["code"], wire["message"])) is CapacityError
    # A subcode newer than this client: the code's type.
    assert type(P.error_from_wire("capacity", "m", "newer-subcode")) is CapacityError
    # A full engine (no free slot) sends no subcode.
    assert P.error_fields(CapacityError("full")) == {"code": "capacity", "message": "full"}
    assert "subcode" not in P.ErrorReply.of("capacity", "full").to_json()
    # Every subcode's type goes out as its own subcode beside the code of a parent type that
    # the one table lists (what an older client raises), and comes back as itself.
    for subcode, cls in P.ERROR_SUBCODES:
        err = cls("m")
        assert P.error_subcode(err) == subcode and P.error_code(err) != "internal"
        older = P.error_from_wire(P.error_code(err), "m")
        assert type(older) is not cls and isinstance(err, type(older))
        assert type(P.error_from_wire(P.error_code(err), "m", subcode)) is cls
    assert P.error_subcode(ForbiddenError("x")) is None
    assert P.error_subcode(RuntimeError("x")) is None


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_metrics_text_format():
    m = ServerMetrics(lambda: 2, lambda: 1, lambda: 3)
    m.frames.inc(5)
    m.turns.inc(stop="eos")
    m.ttfa.observe(0.04)
    m.ttfa.observe(3.0)
    body, content_type = m.render()
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "moss_server_sessions 2.0\n" in text and "moss_server_connections 3.0\n" in text
    assert "moss_server_frames_total 5.0\n" in text
    assert 'moss_server_turns_total{stop="eos"} 1.0\n' in text
    assert 'moss_server_ttfa_seconds_bucket{le="0.05"} 1.0\n' in text
    assert 'moss_server_ttfa_seconds_bucket{le="+Inf"} 2.0\n' in text
    assert "# TYPE moss_server_ttfa_seconds histogram" in text
    assert (m.frames.value(), m.turns.value(stop="eos"), m.errors.value(code="x")) == (5, 1, 0)
    # Prometheus asking for OpenMetrics gets it.
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


def test_servers_in_one_process_have_their_own_metrics():
    a = ServerMetrics(lambda: 1, lambda: 0, lambda: 0)
    b = ServerMetrics(lambda: 7, lambda: 0, lambda: 0)  # same names: no collision
    a.frames.inc(2)
    assert (a.frames.value(), b.frames.value()) == (2, 0)
    assert "moss_server_sessions 7.0\n" in b.render()[0].decode()


def test_cli_serve_arguments():
    from moss_pipecat.cli import serve_options

    argv = ["serve", "--tiny", "/x", "--port", "0", "--token-file", "/t"]
    args = build_parser().parse_args(argv)
    assert (args.command, args.tiny, args.port, args.token_file) == ("serve", "/x", 0, "/t")
    engine, server = serve_options(args)
    assert (server.host, server.port, server.token_file, engine.tiny) == (
        "127.0.0.1",
        0,
        "/t",
        "/x",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tiny", "/x", "--model", "m"])


def test_cli_kv_pools_and_graph_flags_make_the_engine_config():
    from moss_pipecat.cli import _engine_config

    args = build_parser().parse_args(
        ["serve", "--tiny", "/x", "--kv-pools", "16x2048", "2X32768", "--graphs", "on"]
    )
    cfg = _engine_config(args)
    assert cfg.pools() == [(16, 2048), (2, 32768)]
    assert (cfg.max_sessions, cfg.max_context, cfg.graphed_decode) == (18, 32768, True)
    assert cfg.compile_decode is None and cfg.context_budget == 29491
    assert (
        _engine_config(build_parser().parse_args(["serve", "--tiny", "/x"])).graphed_decode is None
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tiny", "/x", "--kv-pools", "16by2048"])
    with pytest.raises(InvalidInputError):  # compiling needs the graphed step
        _engine_config(
            build_parser().parse_args(
                ["serve", "--tiny", "/x", "--graphs", "off", "--compile", "inductor"]
            )
        )


def test_cjk_units_travel_with_their_spacing_and_old_messages_still_parse():
    from moss_pipecat.speech.units import TimedWord, join_units

    words = (TimedWord("你", 0.0, True), TimedWord("好，", 0.2, True), TimedWord("Bob", 0.5))
    text = P.TurnWords.of(AudioChunk(2, 7, torch.zeros(16, dtype=torch.int64), None, words))
    wire = json.loads(text.to_json())
    assert wire["words"] == [["你", 0.0], ["好，", 0.2], ["Bob", 0.5]] and wire["spaced"] == [0, 1]
    back = P.parse_server_message(json.dumps(wire)).timed_words()
    assert [(w.text, w.seconds, w.spaced) for w in back] == [(*w, w.spaced) for w in words]
    assert join_units(back) == "你好， Bob"
    del wire["spaced"]  # a server from before the field: plain words, joined with spaces
    assert join_units(P.parse_server_message(json.dumps(wire)).timed_words()) == "你 好， Bob"
    s = TurnSummary(3, "interrupted", 4, 2, [1, 2], "你好， Bob", "你好，", words=list(words[:2]))
    summary = P.WireSummary.of(s)
    assert summary.spaced == [0, 1]
    got = P.parse_server_message(P.TurnEnded(turn_id=3, summary=summary).to_json())
    assert join_units(got.summary.to_summary().words) == "你好，"


def _described(section: str, end: str) -> dict[str, str]:
    """The protocol description's message table between ``section`` and ``end``: type -> its
    entry's text."""
    doc = P.__doc__
    body = doc[doc.index(section) + len(section) : doc.index(end, doc.index(section))]
    entries: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        head = re.match(r"^    ``([a-z_.]+)``(.*)$", line)
        if head:
            current = head.group(1)
            entries[current] = head.group(2)
        elif current is not None and line.startswith("     "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_the_protocol_description_names_every_field_of_every_message():
    tables = [
        (_described("Client -> server (JSON)", "\n\n"), P.CLIENT_MESSAGES),
        (_described("Server -> client", "Both directions"), P.SERVER_MESSAGES),
    ]
    for entries, models in tables:
        assert set(entries) == set(models)
        for kind, model in models.items():
            names = [n for n in model.model_fields if n != "type"]
            if kind == "settings":  # its limits are a command's fields: listed with it
                names += list(P.Limits.model_fields)
            missing = [n for n in names if not re.search(rf"\b{n}\b", entries[kind])]
            assert not missing, (kind, missing)
    # A message that carries a command takes the command's fields by their names.
    for model in [*P.CLIENT_MESSAGES.values(), P.Limits]:
        for name in getattr(model, "COMMAND_FIELDS", ()):
            assert name in model.model_fields
            assert name in {f.name for f in dataclasses.fields(model.COMMAND)}
