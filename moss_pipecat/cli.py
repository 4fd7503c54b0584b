"""``moss-pipecat`` command line.

``moss-pipecat serve`` runs the websocket engine server (see ``moss_pipecat.server``)::

    moss-pipecat serve --tiny ../shared/fixtures/moss_tiny --port 8765
    MOSS_PIPECAT_TOKEN=secret moss-pipecat serve --model OpenMOSS-Team/MOSS-TTS-Realtime
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from loguru import logger


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the websocket engine server")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="hub id or directory of MOSS-TTS-Realtime")
    src.add_argument("--tiny", metavar="FIXTURES_DIR", help="serve the tiny test fixtures")
    p.add_argument("--codec", default=None, help="hub id or directory of the audio codec")
    p.add_argument("--no-codec", action="store_true", help="serve codes only (no PCM)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    p.add_argument("--token", default=None, help="bearer token (default: $MOSS_PIPECAT_TOKEN)")
    p.add_argument("--max-sessions", type=int, default=None, help="conversations held at once")
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024)
    p.add_argument("--max-audio-seconds", type=float, default=60.0)
    p.add_argument("--max-text-chars", type=int, default=20000)
    p.add_argument(
        "--idle-expiry",
        type=float,
        default=300.0,
        help="seconds a conversation without a connection is kept",
    )
    p.add_argument(
        "--write-timeout",
        type=float,
        default=10.0,
        help="seconds a send to a client may wait before the client is dropped",
    )
    p.add_argument(
        "--lookahead",
        type=float,
        default=1.0,
        help="seconds generation may run ahead of real time (0: unlimited)",
    )
    p.add_argument("--max-context", type=int, default=None, help="KV positions per session")
    p.add_argument(
        "--kv-pools",
        nargs="+",
        metavar="SLOTSxCAPACITY",
        type=_pool,
        help="KV pools, e.g. 128x2048 24x8192 2x32768: memory follows context length "
        "(sessions move up as they grow); sets --max-sessions and --max-context",
    )
    p.add_argument(
        "--graphs",
        choices=["auto", "on", "off"],
        default="auto",
        help="CUDA-graphed decode steps (auto: on for CUDA)",
    )
    p.add_argument(
        "--compile",
        metavar="BACKEND",
        default=None,
        help="torch.compile the graphed decode step (e.g. inductor; minutes at start)",
    )
    p.add_argument(
        "--eos-min-frames",
        type=int,
        default=0,
        metavar="N",
        help="a turn's first N frames never end it (EOS masked; default 0: off)",
    )
    p.add_argument(
        "--eos-after-text",
        action="store_true",
        help="mask EOS until a turn's whole text has been fed",
    )


def _pool(text: str) -> tuple[int, int]:
    try:
        slots, capacity = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SLOTSxCAPACITY, got {text!r}") from None
    return slots, capacity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss-pipecat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    return parser


def _engine_config(args: argparse.Namespace):
    from moss_pipecat.engine.config import EngineConfig

    kw: dict = {"lookahead_s": args.lookahead or None, "max_text_chars": args.max_text_chars}
    if args.max_sessions is not None:
        kw["max_sessions"] = args.max_sessions
    if args.kv_pools:
        kw["kv_pools"] = tuple(args.kv_pools)
        kw["max_sessions"] = sum(n for n, _ in args.kv_pools)
        kw["max_context"] = max(c for _, c in args.kv_pools)
    elif args.max_context is not None:
        kw["max_context"] = args.max_context
    if "max_context" in kw:
        kw["context_budget"] = min(30000, int(kw["max_context"] * 0.9))
        kw["turn_reserve"] = min(2000, kw["context_budget"] // 4)
    kw["graphed_decode"] = {"auto": None, "on": True, "off": False}[args.graphs]
    kw["compile_decode"] = args.compile
    kw["eos_min_frames"] = args.eos_min_frames
    kw["eos_after_text"] = args.eos_after_text
    return EngineConfig(**kw)


def load_engine_from_args(args: argparse.Namespace):
    """The engine ``serve`` runs (tiny fixtures or a real checkpoint)."""
    import torch

    from moss_pipecat.engine import factory

    config = _engine_config(args)
    if args.tiny:
        return factory.load_tiny_engine(
            args.tiny, config=config, with_codec=not args.no_codec, device=args.device or "cpu"
        )
    codec = None if args.no_codec else (args.codec or factory.DEFAULT_CODEC)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    return factory.load_engine(
        args.model or factory.DEFAULT_MODEL, codec, device=args.device, dtype=dtype, config=config
    )


def serve(args: argparse.Namespace) -> int:
    from moss_pipecat.server.app import run_server
    from moss_pipecat.server.config import TOKEN_ENV, ServerConfig, ServerLimits

    limits = ServerLimits(
        max_connections=args.max_connections,
        max_message_bytes=args.max_message_bytes,
        max_audio_seconds=args.max_audio_seconds,
        max_text_chars=args.max_text_chars,
        idle_expiry_s=args.idle_expiry,
        write_timeout_s=args.write_timeout,
    )
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        logger.warning(
            f"serving on {args.host} without a token: anyone who can reach it may use it"
        )
    config = ServerConfig(host=args.host, port=args.port, token=token, limits=limits)
    engine = load_engine_from_args(args)

    async def run() -> None:
        import signal

        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # drain: close conversations, then exit
        with contextlib.suppress(asyncio.CancelledError):
            await run_server(engine, config)

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``moss-pipecat`` script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
