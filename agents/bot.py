"""The MOSS voice agent on pipecat's development runner (``bot()`` entry point).

    python -m agents.bot -t webrtc                 # browser: http://localhost:7860/
    python -m agents.bot -t daily                  # Daily room (DAILY_API_KEY)
    python -m agents.bot -t twilio -x NAME.ngrok.io   # phone: Twilio media streams, 8 kHz

Providers come from the profile (``--profile offline|local|cloud`` or ``MOSS_AGENT_PROFILE``)
and the variables/flags in ``agents.config``. The default ``offline`` profile needs no keys,
GPU or network; its tiny MOSS TTS produces NOISE-LIKE audio by design.

For WebRTC the agent serves its own small web client at ``/`` (plain HTML/JS, no external
assets, so it works offline); pipecat's prebuilt client stays at ``/client/`` (it loads a bundle
from a CDN, so it needs internet).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from fastapi.responses import HTMLResponse, JSONResponse
from loguru import logger
from pipecat.runner.run import app
from pipecat.runner.types import (
    DailyRunnerArguments,
    RunnerArguments,
    SmallWebRTCRunnerArguments,
    WebSocketRunnerArguments,
)
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from agents.config import AgentConfig, add_agent_arguments, load_config
from agents.pipeline import build_agent
from agents.services import SharedModels, load_shared_models

WEB_CLIENT = Path(__file__).resolve().parent / "web" / "index.html"
PHONE_SAMPLE_RATE = 8000  # Twilio media streams: 8 kHz mu-law both ways

_models: SharedModels | None = None
_models_lock = asyncio.Lock()
_config: AgentConfig | None = None


async def shared_models(config: AgentConfig) -> SharedModels:
    """The process's models, loaded by the first session (later sessions share them)."""
    global _models
    async with _models_lock:
        if _models is None:
            _models = await asyncio.to_thread(load_shared_models, config)
        return _models


def agent_config(runner_args: RunnerArguments | None = None) -> AgentConfig:
    global _config
    if _config is None:
        _config = load_config(getattr(runner_args, "cli_args", None))
    return _config


# ---------------------------------------------------------------------------- web client
@app.get("/", include_in_schema=False)
async def web_client() -> HTMLResponse:
    """The offline web client (same origin as /api/offer)."""
    return HTMLResponse(WEB_CLIENT.read_text())


@app.get("/moss/info", include_in_schema=False)
async def info() -> JSONResponse:
    config = agent_config()
    note = (
        "The tiny MOSS fixture model's audio is noise-like by design."
        if config.uses_tiny_tts
        else ""
    )
    return JSONResponse({"agent": config.describe(), "note": note})


# ---------------------------------------------------------------------------- transports
async def make_transport(runner_args: RunnerArguments) -> tuple[BaseTransport, int, int]:
    """(transport, input rate, output rate) for the runner's session."""
    params = dict(audio_in_enabled=True, audio_out_enabled=True)
    if isinstance(runner_args, SmallWebRTCRunnerArguments):
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

        return (
            SmallWebRTCTransport(runner_args.webrtc_connection, TransportParams(**params)),
            16000,
            24000,
        )
    if isinstance(runner_args, DailyRunnerArguments):
        from pipecat.transports.daily.transport import DailyParams, DailyTransport

        transport = DailyTransport(
            runner_args.room_url, runner_args.token, "MOSS agent", DailyParams(**params)
        )
        return transport, 16000, 24000
    if isinstance(runner_args, WebSocketRunnerArguments):
        return await phone_transport(runner_args), PHONE_SAMPLE_RATE, PHONE_SAMPLE_RATE
    raise ValueError(f"unsupported runner arguments {type(runner_args).__name__}")


async def phone_transport(runner_args: WebSocketRunnerArguments) -> BaseTransport:
    """Twilio media streams over the runner's /ws websocket (8 kHz mu-law)."""
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )

    kind, call = await parse_telephony_websocket(runner_args.websocket)
    if kind != "twilio":
        raise ValueError(f"the phone agent speaks Twilio media streams, not {kind!r}")
    account, token = os.getenv("TWILIO_ACCOUNT_SID"), os.getenv("TWILIO_AUTH_TOKEN")
    serializer = TwilioFrameSerializer(
        stream_sid=call["stream_id"],
        call_sid=call["call_id"],
        account_sid=account,
        auth_token=token,
        # Hanging up goes through Twilio's REST API: only with credentials.
        params=TwilioFrameSerializer.InputParams(auto_hang_up=bool(account and token)),
    )
    params = FastAPIWebsocketParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        add_wav_header=False,
        serializer=serializer,
    )
    return FastAPIWebsocketTransport(websocket=runner_args.websocket, params=params)


# ---------------------------------------------------------------------------- entry point
async def bot(runner_args: RunnerArguments) -> None:
    """One conversation: called by pipecat's runner for each connection."""
    config = agent_config(runner_args)
    models = await shared_models(config)
    transport, in_rate, out_rate = await make_transport(runner_args)
    agent = build_agent(
        transport, config, models, audio_in_sample_rate=in_rate, audio_out_sample_rate=out_rate
    )

    @transport.event_handler("on_client_connected")
    async def on_connected(_transport, _client) -> None:
        logger.info("client connected")

    @transport.event_handler("on_client_disconnected")
    async def on_disconnected(_transport, _client) -> None:
        logger.info("client disconnected: ending the session")
        await agent.worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(agent.worker)
    await runner.run()


def main() -> None:
    """Loads the models once (before accepting connections), then runs pipecat's runner."""
    global _config, _models
    from pipecat.runner.run import main as runner_main

    ours = add_agent_arguments(argparse.ArgumentParser(add_help=False))
    _config = load_config(ours.parse_known_args()[0])
    if not {"-h", "--help"} & set(sys.argv):
        _models = load_shared_models(_config)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_agent_arguments(parser)
    runner_main(parser)


if __name__ == "__main__":
    main()
