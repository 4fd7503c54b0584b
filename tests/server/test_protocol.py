"""Protocol messages, wire summaries, errors, metrics text and the CLI parser."""

from __future__ import annotations

import json

import pytest
import torch

from moss_pipecat.cli import build_parser
from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.errors import CapacityError, InvalidInputError, TurnStateError
from moss_pipecat.model import SamplingParams
from moss_pipecat.server import protocol as P
from moss_pipecat.server.app import bearer_token
from moss_pipecat.server.errors import ProtocolError, ServerUnavailableError
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


def test_sampling_and_summaries_round_trip():
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, repetition_window=10)
    assert P.Sampling.of(params).to_params() == params
    with pytest.raises(InvalidInputError):
        P.Sampling(temperature=0).to_params()
    s = TurnSummary(3, "error", 4, 2, [1, 2], "ab", "a", 0.05, TurnStateError("busy"))
    s.words = [("a", 0.0), ("b", 0.25)]
    back = P.summary_from_wire(P.summary_to_wire(s))
    assert isinstance(back.error, TurnStateError) and str(back.error) == "busy"
    back.error = s.error
    assert back == s
    assert P.summary_from_wire(P.summary_to_wire(None)) is None


def test_word_times_travel_with_their_frame():
    chunk = AudioChunk(2, 7, torch.zeros(16, dtype=torch.int64), None, (("hi", 0.0), ("yo", 0.3)))
    msg = json.loads(P.dumps(P.words_to_wire(chunk)))
    assert msg["type"] == "turn.words" and (msg["turn_id"], msg["index"]) == (2, 7)
    assert P.words_from_wire(msg["words"]) == list(chunk.words)


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
    with pytest.raises(ProtocolError):
        P.unpack_audio(b"nope")


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
