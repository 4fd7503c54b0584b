"""Ray Serve deployment: one engine replica per GPU, each conversation pinned to one replica.

Each replica mounts the very app ``moss-pipecat serve`` runs (``app.create_app``: ``/v1/ws``,
``/healthz``, ``/readyz``, ``/metrics``) with ``serve.ingress``, around its own ``MossEngine``;
engine and server options are the same model as the CLI's (``options``). A
conversation's KV cache lives on one replica, so every connection of a conversation must land
there: clients send the conversation id in the ``x-session-id`` header (``RemoteEngine`` always
does; a hello for another id than the header's is refused, see ``handshake``) and the
deployment routes with Ray Serve's ``ConsistentHashRouter`` (Ray >= 2.60) with no fallback
replica, so the same id maps to the same replica while the replica set is unchanged.

Run locally on CPU with the tiny model::

    serve run moss_pipecat.server.ray_app:build_app tiny=../shared/fixtures/moss_tiny num_gpus=0

or on GPUs (one replica per GPU)::

    serve run moss_pipecat.server.ray_app:build_app model=OpenMOSS-Team/MOSS-TTS-Realtime \
        num_replicas=4 num_gpus=1 max_sessions=32 token_file=/etc/moss/token

The token comes from ``token_file`` (read on each replica) or ``$MOSS_PIPECAT_TOKEN`` in the
replicas' environment, never from the command line.

Every replica of the app signs and checks resume tickets (``tickets``) with one resume key, so
the call of a lost replica takes its conversation back on another replica from a client that
made it anew meanwhile: ``resume_key_file`` (read on each replica) or
``$MOSS_PIPECAT_RESUME_KEY`` in the replicas' environment, else one key drawn by ``build_app``
on the driver (or ``$MOSS_PIPECAT_RESUME_KEY`` there) and given to every replica it starts: a
replica Ray restarts gets the same, and a redeploy draws a new one (tickets of the old
version then prove nothing on the new one: as without tickets). Configure a key to keep
tickets across redeploys.

Autoscaling (``min_replicas``/``max_replicas`` instead of ``num_replicas``): every open
websocket counts as one ongoing request, so ``target_ongoing_requests`` is conversations per
replica (default: 3/4 of ``max_sessions``) and ``max_ongoing_requests`` caps connections per
replica (default: ``max_sessions + 4``). Keep ``downscale_delay_s`` long (minutes) so short
gaps between calls do not shed conversations.

A replica that Ray stops (scale-down, a new version) drains as ``moss-pipecat serve`` does on
SIGTERM (``ray_drain``): it tells its clients to move (``goaway``), lets turns in flight end
(cut at ``drain_timeout_s``), and Ray waits for that (``graceful_shutdown_timeout_s`` is set
above the drain deadline). The controller has taken it off the hash ring by then, so a moved
conversation reconnects to a live replica; so does one whose replica died. Either way the
new replica has no history of it (the client sees ``resumed == False`` and restores it from
its journal).
"""

import os
import secrets
from typing import Any

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.server.config import RESUME_KEY_ENV
from moss_pipecat.server.options import (
    EngineOptions,
    ServerOptions,
    describe_option_error,
    split_options,
)

AFFINITY_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


class RayOptions(BaseModel):
    """How Ray Serve runs the replicas (the engine and server options are shared with the CLI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int | None = Field(None, ge=1)
    min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    num_gpus: float | None = Field(None, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1)
    target_ongoing_requests: float | None = Field(None, gt=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> "RayOptions":
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if autoscaled and self.num_replicas is not None:
            raise ValueError("num_replicas, or min_replicas/max_replicas to autoscale: not both")
        if self.max_replicas is not None and self.max_replicas < (self.min_replicas or 0):
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self


def _router_config(strict: bool = True):
    """Conversation affinity: consistent hashing on ``x-session-id`` (None if unavailable)."""
    from ray.serve.config import RequestRouterConfig

    try:
        from ray.serve.experimental.consistent_hash_router import (  # noqa: F401
            ConsistentHashRouter,
        )
    except ImportError:
        logger.warning(
            "this Ray has no ConsistentHashRouter (needs >= 2.60): conversations are not "
            "pinned to replicas, so run a single replica"
        )
        return None
    return RequestRouterConfig(
        request_router_class=AFFINITY_ROUTER,
        # No fallback: another replica does not have the conversation's KV cache.
        request_router_kwargs={"num_fallback_replicas": 0 if strict else 1},
    )


def make_deployment():
    """The ``MossEngineReplica`` deployment class (imports Ray lazily)."""
    from ray import serve

    from moss_pipecat.server.app import create_app
    from moss_pipecat.server.core import ConversationHub
    from moss_pipecat.server.ray_drain import drain_on_replica_shutdown

    @serve.deployment(name="MossEngine", health_check_period_s=10, health_check_timeout_s=30)
    @serve.ingress()
    class MossEngineReplica:
        """One engine (one GPU) serving conversations over websockets."""

        def __init__(
            self, engine: EngineOptions, server: ServerOptions, resume_key: str | None = None
        ) -> None:
            self.engine = engine.load_engine()
            # The token and a configured resume key are read here, on the replica; else the
            # key ``build_app`` drew, the same for every replica of the app.
            config = server.server_config(default_resume_key=resume_key)
            self.hub = ConversationHub(self.engine, config)
            drain_on_replica_shutdown(self.hub.drain_threadsafe)

        def __serve_build_asgi_app__(self) -> Any:
            # The standalone server's app; its lifespan starts and drains the hub.
            return create_app(self.hub)

        def check_health(self) -> None:
            """Serve's health check: the engine thread must be alive."""
            if not self.hub.ready:
                raise RuntimeError("engine thread is not running")

        def record_routing_stats(self) -> dict[str, Any]:
            return {"conversations": len(self.hub.conversations)}

        def __del__(self) -> None:
            # Serve calls this on replica shutdown (after the app's lifespan drained the hub).
            self.engine.shutdown()

    return MossEngineReplica


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (``serve run moss_pipecat.server.ray_app:build_app k=v``).

    Args (all optional, strings accepted): every ``EngineOptions`` field (model, codec, tiny,
    device, dtype, no_codec, max_sessions, max_context, context_budget, turn_reserve,
    kv_pools="128x2048,24x8192", lookahead_s, max_text_chars (the reply's text), graphs,
    compile, eos_min_frames, eos_after_text), every option row of the server's limits table
    (``ServerLimits``: max_connections, max_transcript_chars, idle_expiry_s, ...; their
    defaults are there), ``token_file``, ``resume_key_file``, and the ``RayOptions``:

        num_replicas: fixed replica count; or min_replicas/max_replicas to autoscale.
        num_gpus: GPUs per replica (default 1 if CUDA is visible, else 0); num_cpus.
        max_ongoing_requests: connections per replica (default max_sessions + 4);
        target_ongoing_requests, downscale_delay_s: autoscaling.

    Under Ray a client that reads nothing for ``write_timeout_s`` stops being served at once,
    but its socket's close is left to Ray's proxy (the replica cannot reset it).
    """
    try:  # every option checked before Ray deploys anything, each bad one named on one line
        engine, server, ray_opts = _validated(dict(args or {}))
        max_sessions = engine.engine_config().max_sessions
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise InvalidInputError(f"moss-pipecat Ray app: {describe_option_error(e)}") from None
    num_gpus = ray_opts.num_gpus
    if num_gpus is None:
        import torch

        num_gpus = 1.0 if torch.cuda.is_available() and not engine.tiny else 0.0
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": ray_opts.num_cpus},
        # Every open websocket is one ongoing request for its whole life.
        "max_ongoing_requests": ray_opts.max_ongoing_requests or max_sessions + 4,
        # A stopping replica drains (ray_drain): Ray waits past the drain's deadline (and the
        # sends of the cut turns' ends) before it kills the replica.
        "graceful_shutdown_timeout_s": server.drain_timeout_s + server.write_timeout_s + 5,
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    router = _router_config()
    if router is not None:
        options["request_router_config"] = router
    if ray_opts.min_replicas is not None or ray_opts.max_replicas is not None:
        lo = ray_opts.min_replicas if ray_opts.min_replicas is not None else 1
        options["autoscaling_config"] = {
            "min_replicas": lo,
            "max_replicas": ray_opts.max_replicas or max(lo, 1),
            "target_ongoing_requests": ray_opts.target_ongoing_requests
            or max(1.0, 0.75 * max_sessions),
            "downscale_delay_s": ray_opts.downscale_delay_s,
        }
    else:
        options["num_replicas"] = ray_opts.num_replicas or 1
    return make_deployment().options(**options).bind(engine, server, app_resume_key())


def _validated(args: dict[str, Any]) -> tuple[EngineOptions, ServerOptions, RayOptions]:
    engine_kw, server_kw, ray_kw = split_options(args, EngineOptions, ServerOptions, RayOptions)
    for key in ("host", "port", "ssl_certfile", "ssl_keyfile"):
        if key in server_kw:
            raise ValueError(f"{key} is Ray Serve's (serve start --http-options), not the app's")
    return (
        EngineOptions.model_validate(engine_kw),
        ServerOptions.model_validate(server_kw),
        RayOptions.model_validate(ray_kw),
    )


def app_resume_key() -> str:
    """The resume key ``build_app`` gives every replica of one app when they have none of
    their own (``resume_key_file``, ``$MOSS_PIPECAT_RESUME_KEY``): the driver's
    ``$MOSS_PIPECAT_RESUME_KEY``, else one drawn now."""
    return os.environ.get(RESUME_KEY_ENV) or secrets.token_urlsafe(32)
