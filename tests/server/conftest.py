"""Server-test fixtures: tiny engines with codec and tokenizer, in-process servers on loopback."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.engine.factory import FoldIds
from moss_pipecat.model import SamplingParams
from moss_pipecat.server import EngineServer, ServerConfig, ServerLimits

from ..service.tracing_helpers import span_exporter, traced_pipelines  # noqa: F401 (fixtures)

GREEDY = SamplingParams.greedy_decoding()
TOKEN = "test-token"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from moss_pipecat.engine.offline_tokenizer import offline_tokenizer

    return offline_tokenizer()


@pytest.fixture
def make_tiny_engine(make_engine, realtime_meta, tiny_codec, tiny_tokenizer):
    """``make_engine`` with the tiny codec and the (folded) offline tokenizer."""
    fold = FoldIds(int(realtime_meta["text_ids_drawn_from"][1]))

    def make(codec: bool = True, **config) -> MossEngine:
        return make_engine(
            codec=tiny_codec if codec else None,
            tokenizer=tiny_tokenizer,
            text_id_map=fold,
            **config,
        )

    return make


@pytest.fixture
async def make_server():
    """In-process servers on 127.0.0.1 (free port); stopped after the test."""
    servers: list[EngineServer] = []

    async def make(engine: MossEngine, token: str | None = None, **limits) -> EngineServer:
        reap = limits.pop("reap_interval_s", 5.0)
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            token=token,
            limits=ServerLimits(**limits),
            reap_interval_s=reap,
        )
        server = await EngineServer(engine, config).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with Serve's proxy, one per test process (it takes tens of seconds
    to start): the Ray modules each deploy their app on it and delete it after. Yields the
    proxy's ws:// URL."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"ws://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def eventually(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Polls ``predicate`` until true or fails the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
