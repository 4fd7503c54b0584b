"""Server URLs are checked where they are given (``RemoteEngine``, ``MossRemoteTTSService``):
a URL no connection could use is an ``InvalidInputError`` naming it, not a reply that fails
later as an unreachable server."""

from __future__ import annotations

import pytest

from moss_pipecat.client import RemoteEngine
from moss_pipecat.client.remote_engine import server_urls
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.service.remote import MossRemoteTTSService


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:8765", "ws://host:port or wss://host:port"),
        ("127.0.0.1:8765", "ws://host:port or wss://host:port"),
        ("", "ws://host:port or wss://host:port"),
        ("ws://", "no host"),
        ("ws://:8765", "no host"),
        ("ws://host:99999", "bad port"),
        ("ws://host:port", "bad port"),
        (["ws://a:1", 3], "a string, got int"),
        ([], "a server URL is needed"),
    ],
)
def test_an_unusable_url_is_refused_where_it_is_given(url, says):
    with pytest.raises(InvalidInputError, match=says):
        RemoteEngine(url)
    with pytest.raises(InvalidInputError, match=says):
        MossRemoteTTSService(url=url)


def test_a_bare_server_url_gets_the_endpoint_path_and_a_full_one_is_kept():
    assert server_urls("ws://h:1") == ["ws://h:1/v1/ws"]
    assert server_urls("ws://h:1/") == ["ws://h:1/v1/ws"]
    assert server_urls("WSS://[::1]:8765") == ["WSS://[::1]:8765/v1/ws"]
    assert server_urls(("ws://a:1/v1/ws", "ws://lb.example/moss/v1/ws")) == [
        "ws://a:1/v1/ws",
        "ws://lb.example/moss/v1/ws",
    ]
    assert RemoteEngine(["ws://a:1", "ws://b:2"]).urls == ["ws://a:1/v1/ws", "ws://b:2/v1/ws"]
