"""The server's limits are one table (``ServerLimits``): its option rows are the CLI's flags and
the options model the CLI and Ray's ``build_app`` share, with the table's defaults and bounds.
The user transcript's limit (``max_transcript_chars``) is apart from the reply text's (the
engine's ``max_text_chars``); the old shared name still works, deprecated."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from pydantic import ValidationError

from moss_pipecat.cli import build_parser, serve_options
from moss_pipecat.client import RemoteEngine
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.server import ServerLimits
from moss_pipecat.server.config import option_limits
from moss_pipecat.server.options import EngineOptions, ServerOptions, split_options

from .conftest import GREEDY


def _flag(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


def test_every_option_row_is_a_flag_and_an_option_with_the_tables_default():
    rows = option_limits()
    assert {f.name for f in rows} <= set(ServerOptions.model_fields)
    assert ServerOptions().limits() == ServerLimits()  # the table's defaults, not restated
    # Each flag, set to a value off its default, reaches the limits (CLI and Ray alike).
    changed = {f.name: f.default * 2 + 1 for f in rows}
    argv = ["serve", "--tiny", "/x"]
    for name, value in changed.items():
        argv += [_flag(name), str(value)]
    _, cli = serve_options(build_parser().parse_args(argv))
    _, ray = split_options({k: str(v) for k, v in changed.items()}, EngineOptions, ServerOptions)
    assert cli.limits() == ServerOptions.model_validate(ray).limits()
    assert cli.limits() == dataclasses.replace(ServerLimits(), **changed)
    # The table's bounds hold in both forms.
    for f in rows:
        bound = f.metadata["ge"] if f.metadata["ge"] is not None else f.metadata["gt"]
        bad = bound - 1
        with pytest.raises(InvalidInputError, match=f.name):
            ServerLimits(**{f.name: bad})
        with pytest.raises(ValidationError):
            ServerOptions(**{f.name: bad})


def test_the_transcript_and_the_reply_text_have_their_own_limits():
    args = ["serve", "--tiny", "/x", "--max-text-chars", "500", "--max-transcript-chars", "70"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both given: nothing deprecated in use
        engine, server = serve_options(build_parser().parse_args(args))
        assert server.limits().max_transcript_chars == 70
    assert engine.engine_config().max_text_chars == 500
    _, server = serve_options(build_parser().parse_args(["serve", "--max-transcript-chars", "9"]))
    assert server.limits().max_transcript_chars == 9


def test_the_old_max_text_chars_still_limits_the_transcript_deprecated():
    # CLI flag and Ray option: it limited both; it still does, with a deprecation warning.
    engine, server = serve_options(build_parser().parse_args(["serve", "--max-text-chars", "300"]))
    with pytest.warns(DeprecationWarning, match="max_transcript_chars"):
        assert server.limits().max_transcript_chars == 300
    assert engine.engine_config().max_text_chars == 300
    engine_kw, server_kw = split_options({"max_text_chars": "300"}, EngineOptions, ServerOptions)
    with pytest.warns(DeprecationWarning):
        assert ServerOptions.model_validate(server_kw).limits().max_transcript_chars == 300
    assert EngineOptions.model_validate(engine_kw).engine_config().max_text_chars == 300
    # The Python name, too.
    with pytest.warns(DeprecationWarning):
        assert ServerLimits(max_text_chars=40).max_transcript_chars == 40


async def test_a_server_limits_the_transcript_apart_from_the_reply(make_tiny_engine, make_server):
    engine = make_tiny_engine()
    server = await make_server(engine, max_transcript_chars=8)
    assert engine.config.max_text_chars > 8
    session = await RemoteEngine(server.url).create_session(sampling=GREEDY)
    audio = np.zeros(16000, dtype=np.int16)
    with pytest.raises(InvalidInputError, match="transcript over 8"):
        await session.add_user_audio_turn("nine char", audio, 16000)
    await session.add_user_audio_turn("eight ch", audio, 16000)
    turn = await session.start_turn(max_frames=2)
    turn.push_text("A reply far longer than eight characters.")
    turn.end_text()
    assert (await turn.wait()).error is None
    await session.close()
