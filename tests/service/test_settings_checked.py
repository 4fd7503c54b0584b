"""A service is never built with a setting its session would refuse: the constructor runs the
session commands' own checks (``check_settings``) and raises ``InvalidInputError`` naming the
value, for the in-process and the remote service alike, before anything connects or starts.
(A runtime update's bad values: tests/server/test_contract_surface.py.)"""

from __future__ import annotations

import pytest

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.service import MossTTSService, MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService

BAD = [
    (dict(temperature=-1), "temperature"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(top_p=2), "top_p"),
    (dict(top_k=-3), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(seed="x"), "seed"),
    (dict(context_budget=0), "context_budget"),
    (dict(lookahead_s=-1), "lookahead_s"),
    (dict(voice="/nonexistent/voice.wav"), "is not a file"),
]


@pytest.mark.parametrize("settings, says", BAD, ids=[next(iter(kw)) for kw, _ in BAD])
def test_a_bad_setting_is_refused_at_construction(tiny_engine, settings, says):
    with pytest.raises(InvalidInputError, match=says):
        MossTTSService(engine=tiny_engine, settings=MossTTSSettings(**settings))
    with pytest.raises(InvalidInputError, match=says):
        MossRemoteTTSService(url="ws://127.0.0.1:1", settings=MossTTSSettings(**settings))
    assert tiny_engine.session_ids == []  # nothing was opened


def test_good_settings_construct(tiny_engine):
    ok = MossTTSSettings(temperature=0, greedy=True, seed=5, lookahead_s=0.5, context_budget=900)
    MossTTSService(engine=tiny_engine, settings=ok)
    MossRemoteTTSService(url="ws://127.0.0.1:1", settings=ok)


@pytest.mark.parametrize(
    "options, says",
    [
        (dict(user_audio_max_s=0), "user_audio_max_s"),
        (dict(user_audio_max_s="30"), "user_audio_max_s must be a number"),
        (dict(output_latency_s=-0.1), "output_latency_s"),
        (dict(output_latency_s=float("nan")), "output_latency_s"),
        (dict(voice_dir="/nonexistent/voices"), "is not a directory"),
    ],
)
def test_a_bad_service_option_is_refused_at_construction(tiny_engine, options, says):
    with pytest.raises(InvalidInputError, match=says):
        MossTTSService(engine=tiny_engine, **options)
    with pytest.raises(InvalidInputError, match=says):
        MossRemoteTTSService(url="ws://127.0.0.1:1", **options)
