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

from ..conftest import RAY_UNIT, end_with_unit
from ..engine_rules import SPEAKS
from ..service.tracing_helpers import span_exporter, traced_pipelines  # noqa: F401 (fixtures)

GREEDY = SamplingParams.greedy_decoding()
TOKEN = "test-token"
# A tiny engine whose replies speak (``SPEAKS``), with short per-turn caps (the
# pipecat-contract tests).
TALKATIVE = dict(
    **SPEAKS,
    frames_per_text_token=1.5,
    min_turn_frames=8,
    max_text_chars=2000,
)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from moss_pipecat.engine.offline_tokenizer import shared_offline_tokenizer

    return shared_offline_tokenizer()  # the one the tiny engines of this process share


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
    proxy's ws:// URL. Skips the tests that use it where ``ray[serve]`` is not installed (here,
    not at collection: every test process collects the Ray modules, one runs them)."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install '.[serve]')")
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    # Ray waits a fixed 30 s for its raylet to register; on a loaded box (this worker runs
    # niced, and Ray's daemons inherit that) the first start can miss it. Start again, twice.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                raise

    def stop() -> None:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()

    end_with_unit(RAY_UNIT, stop)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"ws://127.0.0.1:{port}"
    finally:
        stop()


# The tiny app both Ray modules run on (``ray_moss_app``): paced turns that run to their
# max_frames (turns in flight for seconds, for the drain tests), behind a token.
RAY_APP_ARGS = {
    "num_gpus": "0",
    "num_cpus": "0.5",
    "max_sessions": "4",
    "lookahead_s": "0.3",  # paced: a turn is in flight for seconds
    "eos_min_frames": "80",  # turns run to their max_frames
    "max_context": "1024",
    "context_budget": "900",
    "turn_reserve": "100",
    "drain_timeout_s": "30",
}


class RayMossApp:
    """The ``moss`` app on the local cluster: its proxy URL, and (re)deploys with a replica
    count. Every ``deploy`` is a new version of the app (Ray replaces the replicas)."""

    def __init__(self, url: str, args: dict[str, str]) -> None:
        self.url = url
        self.args = args
        self.replicas = 0  # what the last deploy asked for

    def deploy(self, replicas: int) -> None:
        from ray import serve

        from moss_pipecat.server.ray_app import build_app

        app = build_app({**self.args, "num_replicas": str(replicas)})
        serve.run(app, name="moss", route_prefix="/")
        self.replicas = replicas

    def running(self) -> int:
        from ray import serve

        deployments = serve.status().applications["moss"].deployments
        return deployments["MossEngine"].replica_states.get("RUNNING", 0)

    async def ensure(self, replicas: int) -> None:
        """``replicas`` running replicas of the app. Only a deploy that asked for another
        count is redone: a replica Ray lost (killed) is replaced by Ray itself, which is one
        replica start where a new version would restart them all, one after the other."""
        if self.replicas != replicas:
            await asyncio.to_thread(self.deploy, replicas)
        await eventually(lambda: self.running() == replicas, 180, f"{replicas} running replicas")


@pytest.fixture(scope="session")
def ray_moss_app(ray_cluster, fixtures_dir, tmp_path_factory):
    """The tiny app, deployed once (two replicas) for both Ray modules (a replica start is
    the slowest thing they do); deleted at the end of the session."""
    from ray import serve

    token_file = tmp_path_factory.mktemp("ray_token") / "token"
    token_file.write_text(TOKEN + "\n")  # read by each replica: the token is never an argument
    app = RayMossApp(ray_cluster, {"tiny": str(fixtures_dir), "token_file": str(token_file)})
    app.args |= RAY_APP_ARGS

    def delete() -> None:
        if app.replicas:  # deployed and not deleted yet
            serve.delete("moss")
            app.replicas = 0

    end_with_unit(RAY_UNIT, delete)  # before the cluster's stop, registered earlier
    app.deploy(2)
    try:
        yield app
    finally:
        delete()


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
