"""``moss-pipecat`` command line.

``moss-pipecat serve`` runs the websocket engine server (see ``moss_pipecat.server``)::

    moss-pipecat serve --tiny ../shared/fixtures/moss_tiny --port 8765
    moss-pipecat serve --model OpenMOSS-Team/MOSS-TTS-Realtime --host 0.0.0.0 \
        --token-file /etc/moss/token --ssl-certfile cert.pem --ssl-keyfile key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from loguru import logger

from moss_pipecat.server.config import RESUME_KEY_ENV, TOKEN_ENV, option_limits


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    # Every flag's dest is a field of ``EngineOptions`` / ``ServerOptions`` (server/options.py),
    # the model the Ray app shares; defaults live there (None here means "the model's").
    # No abbreviations: ``--token SECRET`` must not be taken for ``--token-file``.
    p = sub.add_parser("serve", help="run the websocket engine server", allow_abbrev=False)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="hub id or directory of MOSS-TTS-Realtime")
    src.add_argument("--tiny", metavar="FIXTURES_DIR", help="serve the tiny test fixtures")
    p.add_argument("--codec", default=None, help="hub id or directory of the audio codec")
    p.add_argument("--no-codec", action="store_true", help="serve codes only (no PCM)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--host", default=None, help="bind address (default: 127.0.0.1, loopback)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8765; 0: any)")
    p.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help=f"file holding the bearer token (default: ${TOKEN_ENV}; never on the command line)",
    )
    p.add_argument(
        "--resume-key-file",
        default=None,
        metavar="PATH",
        help=f"file holding the resume key every server of a deployment shares, so resume "
        f"tickets hold across restarts (default: ${RESUME_KEY_ENV}, else one per process)",
    )
    p.add_argument("--ssl-certfile", default=None, metavar="PEM", help="serve wss:// (TLS)")
    p.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's key")
    p.add_argument("--max-sessions", type=int, default=None, help="conversations held at once")
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=None,
        help="characters of one reply's text (the engine's default). Deprecated: without "
        "--max-transcript-chars it limits the user transcript too",
    )
    for f in option_limits():  # the server's limits table: flag, default and meaning
        p.add_argument(
            "--" + f.name.removesuffix("_s").replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=None,
            help=f"{f.metadata['what']} ({f.default})",
        )
    p.add_argument(
        "--lookahead",
        dest="lookahead_s",
        type=float,
        default=None,
        help="seconds generation may run ahead of real time (1; 0: unlimited)",
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
        default=None,
        help="CUDA-graphed decode steps (auto: on for CUDA)",
    )
    p.add_argument(
        "--compile",
        metavar="BACKEND",
        default=None,
        help="torch.compile the graphed decode step (e.g. inductor; minutes at start)",
    )
    p.add_argument(
        "--fused",
        choices=["auto", "on", "off"],
        default=None,
        help="run the model and the codec through their fused ops (same frames; default auto: "
        "on CUDA where triton is installed)",
    )
    p.add_argument(
        "--kernel-cache-dir",
        metavar="DIR",
        default=None,
        help="keep compiled kernels (Triton, inductor) here, so a restart does not recompile",
    )
    p.add_argument(
        "--eos-min-frames",
        type=int,
        default=None,
        metavar="N",
        help="a turn's first N frames never end it (EOS masked; default 0: off, with --tiny "
        "the stand-in's, TINY_ENGINE_CONFIG)",
    )
    p.add_argument(
        "--eos-after-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mask EOS until a turn's whole text has been fed (default off, on with --tiny)",
    )
    p.add_argument(
        "--prefix-cache-mib",
        type=float,
        default=None,
        metavar="MIB",
        help="device memory for the prompt prefix cache (KV of each distinct system sentence + "
        "voice, shared by new conversations; default 256, 0: off)",
    )
    p.add_argument(
        "--frame-deadline-ms",
        type=float,
        default=None,
        metavar="MS",
        help="pace each tick's prefill to this frame deadline and refuse a new conversation "
        "(wire code capacity, subcode overloaded) when every conversation speaking at once "
        "would miss it (e.g. 80)",
    )
    p.add_argument(
        "--cost-table",
        default=None,
        metavar="PATH",
        help="a scripts/gpu_bench.sh output folder (same GPU and settings) the engine's cost "
        "model starts from, so pacing and refusals hold from the first call",
    )


def _pool(text: str) -> tuple[int, int]:
    try:
        slots, capacity = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SLOTSxCAPACITY, got {text!r}") from None
    return slots, capacity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moss-pipecat", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    return parser


def serve_options(args: argparse.Namespace):
    """``serve`` flags as (``EngineOptions``, ``ServerOptions``)."""
    from moss_pipecat.server.options import EngineOptions, ServerOptions, split_options

    values = {k: v for k, v in vars(args).items() if k != "command"}
    values["no_codec"] = values["no_codec"] or None  # store_true: unset means the model's default
    engine, server = split_options(values, EngineOptions, ServerOptions)
    return EngineOptions.model_validate(engine), ServerOptions.model_validate(server)


def _engine_config(args: argparse.Namespace):
    return serve_options(args)[0].engine_config()


def load_engine_from_args(args: argparse.Namespace):
    """The engine ``serve`` runs (tiny fixtures or a real checkpoint)."""
    return serve_options(args)[0].load_engine()


def _fail(code: int, error: Exception) -> int:
    from moss_pipecat.server.options import describe_option_error

    print(f"moss-pipecat serve: error: {describe_option_error(error)}", file=sys.stderr)
    return code


def serve(args: argparse.Namespace) -> int:
    """Runs the server; bad options exit 2 and a checkpoint that will not load exits 1, each
    with a one-line error (no traceback) before anything is loaded or bound."""
    from moss_pipecat.errors import MossError
    from moss_pipecat.server.app import run_server

    try:
        engine_options, server_options = serve_options(args)
        config = server_options.server_config()
        engine_options.engine_config()  # every engine setting checked before the weights load
    except (ValueError, OSError) as e:  # pydantic's ValidationError is a ValueError
        return _fail(2, e)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        if not config.token:
            logger.warning(
                f"serving on {config.host} without a token: anyone who can reach it may use it"
            )
        if not config.tls:
            logger.warning(
                f"serving on {config.host} without TLS: the token and audio cross the network "
                "in the clear (--ssl-certfile/--ssl-keyfile)"
            )
    try:
        engine = engine_options.load_engine()
    except MossError as e:  # CheckpointError: missing, unreadable or mismatched files
        return _fail(1, e)

    def exit_cleanly(sig: int, frame: object) -> None:
        # uvicorn handles SIGTERM/SIGINT while serving (the server drains: clients are told
        # to move, turns in flight end), then raises the signal again for this handler.
        raise SystemExit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_cleanly)
    with contextlib.suppress(SystemExit):
        asyncio.run(run_server(engine, config))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``moss-pipecat`` script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
