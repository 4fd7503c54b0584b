"""The Ray app checks every option before Ray deploys anything: a bad one is one typed line
naming it (as ``moss-pipecat serve`` exits 2 with), not pydantic's report or a replica that
fails to start."""

from __future__ import annotations

import pytest

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.server.ray_app import build_app


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({"max_sessions": "many"}, "max_sessions: Input should be a valid integer"),
        ({"lookahead_s": "-1"}, "lookahead_s: "),
        ({"idle_expiry_s": "-1"}, "idle_expiry_s: "),
        ({"bogus": "1", "also_bogus": "2"}, "unknown options: also_bogus, bogus"),
        ({"port": "8000"}, "port is Ray Serve's"),
        ({"num_replicas": "0"}, "num_replicas: "),
        ({"num_replicas": "2", "max_replicas": "4"}, "not both"),
        ({"min_replicas": "3", "max_replicas": "2"}, "max_replicas (2) is below min_replicas (3)"),
        ({"num_gpus": "-1"}, "num_gpus: "),
        ({"kv_pools": "2x64", "max_sessions": "4"}, "max_sessions 4 disagrees with kv_pools (2)"),
        # the engine config's own checks
        ({"context_budget": "4096", "max_context": "2048"}, "context_budget <= max_context"),
    ],
)
def test_a_bad_option_is_one_typed_line_naming_it(args, says):
    with pytest.raises(InvalidInputError) as info:
        build_app({"tiny": "1", **args})
    message = str(info.value)
    assert message.startswith("moss-pipecat Ray app: ") and says in message
    assert "\n" not in message and "errors.pydantic.dev" not in message
