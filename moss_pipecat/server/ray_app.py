"""Ray Serve deployment: one engine replica per GPU, each conversation pinned to one replica.

Each replica is a FastAPI ingress serving the same websocket protocol as the standalone server
(``/v1/ws``, plus ``/healthz``, ``/readyz``, ``/metrics``) from its own ``MossEngine``. A
conversation's KV cache lives on one replica, so every connection of a conversation must land
there: clients send the conversation id in the ``x-session-id`` header (``RemoteEngine`` always
does) and the deployment routes with Ray Serve's ``ConsistentHashRouter`` (Ray >= 2.60) with no
fallback replica, so the same id maps to the same replica while the replica set is unchanged.

Run locally on CPU with the tiny model::

    serve run moss_pipecat.server.ray_app:build_app tiny=../shared/fixtures/moss_tiny num_gpus=0

or on GPUs (one replica per GPU)::

    serve run moss_pipecat.server.ray_app:build_app model=OpenMOSS-Team/MOSS-TTS-Realtime \
        num_replicas=4 num_gpus=1 max_sessions=32

Autoscaling (``min_replicas``/``max_replicas`` instead of ``num_replicas``): every open
websocket counts as one ongoing request, so ``target_ongoing_requests`` is conversations per
replica (default: 3/4 of ``max_sessions``) and ``max_ongoing_requests`` caps connections per
replica (default: ``max_sessions``). Scaling changes the hash ring: a conversation whose replica
went away, or whose id now maps to a new replica, reconnects to a replica without its history
(the client sees ``resumed == False`` and continues with a fresh context). Scale-down waits up to
``graceful_shutdown_timeout_s`` for open connections; keep ``downscale_delay_s`` long (minutes)
so short gaps between calls do not shed conversations.
"""

import os
from collections.abc import Sequence
from typing import Any

from loguru import logger

from moss_pipecat.server import protocol as P
from moss_pipecat.server.config import TOKEN_ENV, ServerConfig, ServerLimits

AFFINITY_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


def _engine_from(options: dict[str, Any]):
    import torch

    from moss_pipecat.engine import factory
    from moss_pipecat.engine.config import EngineConfig

    lookahead = options.get("lookahead_s", 1.0)
    kw: dict[str, Any] = {"lookahead_s": float(lookahead) if lookahead else None}  # 0: unpaced
    for key in ("max_sessions", "max_context", "context_budget", "turn_reserve"):
        if options.get(key) is not None:
            kw[key] = int(options[key])
    if "max_context" in kw and "context_budget" not in kw:
        kw["context_budget"] = min(30000, int(kw["max_context"] * 0.9))
    if "context_budget" in kw and "turn_reserve" not in kw:
        kw["turn_reserve"] = min(2000, kw["context_budget"] // 4)
    for key in ("kv_pools", "graphed_decode", "compile_decode"):
        if options.get(key) is not None:
            kw[key] = options[key]
    config = EngineConfig(**kw)
    if options.get("tiny"):
        return factory.load_tiny_engine(
            options["tiny"],
            config=config,
            with_codec=not options.get("no_codec", False),
            device=options.get("device") or "cpu",
        )
    dtype = getattr(torch, options["dtype"]) if options.get("dtype") else None
    codec = None if options.get("no_codec") else options.get("codec", factory.DEFAULT_CODEC)
    return factory.load_engine(
        options.get("model", factory.DEFAULT_MODEL),
        codec,
        device=options.get("device"),
        dtype=dtype,
        config=config,
    )


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
    """The ``MossEngineReplica`` deployment class (imports Ray lazily).

    This module has no ``from __future__ import annotations``: FastAPI must see the real
    ``WebSocket`` / ``Request`` classes in the endpoint signatures, which live in this scope.
    """
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import PlainTextResponse, Response
    from ray import serve

    from moss_pipecat.server.app import bearer_token
    from moss_pipecat.server.core import ConversationHub
    from moss_pipecat.server.metrics import CONTENT_TYPE
    from moss_pipecat.server.transport import StarletteTransport

    api = FastAPI(title="moss-pipecat engine", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(name="MossEngine", health_check_period_s=10, health_check_timeout_s=30)
    @serve.ingress(api)
    class MossEngineReplica:
        """One engine (one GPU) serving conversations over websockets."""

        def __init__(self, engine_options: dict[str, Any], server_options: dict[str, Any]):
            self.engine = _engine_from(engine_options)
            limits = ServerLimits(**server_options.get("limits", {}))
            token = server_options.get("token") or os.environ.get(TOKEN_ENV) or None
            self.config = ServerConfig(host="", port=0, token=token, limits=limits)
            self.hub = ConversationHub(self.engine, self.config)
            self._started = False

        def _hub(self) -> ConversationHub:
            if not self._started:  # the reaper needs the replica's running loop
                self.hub.start()
                self._started = True
            return self.hub

        @api.websocket(P.WS_PATH)
        async def websocket(self, ws: WebSocket) -> None:
            hub = self._hub()
            auth = ws.headers.get("authorization")
            authorized = not self.config.token
            if auth is not None:
                if not hub.check_token(bearer_token(auth)):
                    await ws.close(code=P.CLOSE_UNAUTHORIZED)
                    return
                authorized = True
            if len(hub.connections) >= self.config.limits.max_connections or not hub.ready:
                await ws.close(code=1013)  # try again later
                return
            await ws.accept()
            await hub.serve(StarletteTransport(ws, header_authorized=authorized))

        @api.get("/healthz")
        def healthz(self) -> PlainTextResponse:
            return PlainTextResponse("ok\n")

        @api.get("/readyz")
        def readyz(self) -> PlainTextResponse:
            ok = self.hub.ready
            return PlainTextResponse("ready\n" if ok else "not ready\n", 200 if ok else 503)

        @api.get("/metrics")
        def metrics(self, request: Request) -> Response:
            # Served by whichever replica the request lands on; Ray's own metrics cover all.
            if not self.hub.check_token(bearer_token(request.headers.get("authorization"))):
                return PlainTextResponse("unauthorized\n", 401)
            return Response(self.hub.metrics.render(), media_type=CONTENT_TYPE)

        def check_health(self) -> None:
            """Serve's health check: the engine thread must be alive."""
            if not self.hub.ready:
                raise RuntimeError("engine thread is not running")

        def record_routing_stats(self) -> dict[str, Any]:
            return {"conversations": len(self.hub.conversations)}

        def __del__(self) -> None:
            # Serve calls this on replica shutdown; open conversations end with the engine.
            self.engine.shutdown()

    return MossEngineReplica


_NUMERIC = {
    "num_replicas": int,
    "min_replicas": int,
    "max_replicas": int,
    "num_gpus": float,
    "num_cpus": float,
    "max_sessions": int,
    "max_context": int,
    "context_budget": int,
    "turn_reserve": int,
    "max_ongoing_requests": int,
    "target_ongoing_requests": float,
    "lookahead_s": float,
    "downscale_delay_s": float,
    "idle_expiry_s": float,
    "max_connections": int,
    "write_timeout_s": float,
}


def parse_pools(value: str | Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """KV pools from ``"128x2048,24x8192"`` (command line) or ((slots, capacity), ...)."""
    if isinstance(value, str):
        items = [v.lower().split("x") for v in value.replace(",", " ").split()]
    else:
        items = list(value)
    try:
        return tuple((int(n), int(c)) for n, c in items)
    except (TypeError, ValueError):
        raise ValueError(f"kv_pools must be SLOTSxCAPACITY items, got {value!r}") from None


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (``serve run moss_pipecat.server.ray_app:build_app k=v``).

    Args (all optional, strings accepted):
        model, codec, tiny, device, dtype, no_codec: which engine (as ``moss-pipecat serve``).
        num_replicas: fixed replica count; or min_replicas/max_replicas to autoscale.
        num_gpus: GPUs per replica (default 1 if CUDA is visible, else 0); num_cpus.
        max_sessions: conversations per replica; max_ongoing_requests: connections per replica;
        target_ongoing_requests, downscale_delay_s: autoscaling.
        token: bearer token (default ``$MOSS_PIPECAT_TOKEN`` on the replicas);
        idle_expiry_s, max_connections, lookahead_s, max_context, context_budget, turn_reserve.
        write_timeout_s: a send to a client that waits longer drops it (under Ray the close is
        left to uvicorn in the background: ASGI cannot reset the socket).
        kv_pools: "128x2048,24x8192,2x32768" (sets max_sessions and max_context);
        graphs: auto/on/off (CUDA-graphed decode); compile: torch.compile backend.
    """
    args = dict(args or {})
    for key, cast in _NUMERIC.items():
        if args.get(key) is not None:
            args[key] = cast(args[key])
    if isinstance(args.get("no_codec"), str):
        args["no_codec"] = args["no_codec"].lower() in ("1", "true", "yes")
    num_gpus = args.get("num_gpus")
    if num_gpus is None:
        import torch

        num_gpus = 1.0 if torch.cuda.is_available() and not args.get("tiny") else 0.0
    if args.get("kv_pools") is not None:
        args["kv_pools"] = parse_pools(args["kv_pools"])
        args["max_sessions"] = sum(n for n, _ in args["kv_pools"])
        args["max_context"] = max(c for _, c in args["kv_pools"])
    graphs = str(args.get("graphs", "auto")).lower()
    if graphs not in ("auto", "on", "off"):
        raise ValueError(f"graphs must be auto, on or off, got {graphs!r}")
    max_sessions = args.get("max_sessions", 8)
    engine_options = {
        k: args[k]
        for k in (
            "model",
            "codec",
            "tiny",
            "device",
            "dtype",
            "no_codec",
            "lookahead_s",
            "max_context",
            "context_budget",
            "turn_reserve",
            "kv_pools",
        )
        if args.get(k) is not None
    }
    engine_options["graphed_decode"] = {"auto": None, "on": True, "off": False}[graphs]
    if args.get("compile"):
        engine_options["compile_decode"] = args["compile"]
    engine_options["max_sessions"] = max_sessions
    if num_gpus and "device" not in engine_options:
        engine_options["device"] = "cuda"
    limits: dict[str, Any] = {}
    if args.get("idle_expiry_s") is not None:
        limits["idle_expiry_s"] = args["idle_expiry_s"]
    for key in ("max_connections", "write_timeout_s"):
        if args.get(key) is not None:
            limits[key] = args[key]
    server_options = {"token": args.get("token"), "limits": limits}

    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": args.get("num_cpus", 1)},
        # Every open websocket is one ongoing request for its whole life.
        "max_ongoing_requests": args.get("max_ongoing_requests", max(max_sessions, 1) + 4),
    }
    router = _router_config()
    if router is not None:
        options["request_router_config"] = router
    if args.get("min_replicas") is not None or args.get("max_replicas") is not None:
        options["autoscaling_config"] = {
            "min_replicas": args.get("min_replicas", 1),
            "max_replicas": args.get("max_replicas", args.get("min_replicas", 1)),
            "target_ongoing_requests": args.get(
                "target_ongoing_requests", max(1.0, 0.75 * max_sessions)
            ),
            "downscale_delay_s": args.get("downscale_delay_s", 600.0),
        }
    else:
        options["num_replicas"] = args.get("num_replicas", 1)
    deployment = make_deployment().options(**options)
    return deployment.bind(engine_options, server_options)
