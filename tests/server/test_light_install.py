"""The light install: a bot that only talks to a MOSS server imports the remote service, the
client and the protocol without torch, transformers, FastAPI, uvicorn, Ray or safetensors
(issue #26.2). A subprocess where importing those fails speaks to a server of this process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from .conftest import TALKATIVE

REPO = Path(__file__).resolve().parents[2]

BOT = Path(__file__).with_name("light_bot.py")


async def test_remote_service_runs_without_torch_or_the_server(
    make_tiny_engine, make_server, tmp_path
):
    server = await make_server(make_tiny_engine(**TALKATIVE))  # every reply has audio
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BOT),
        server.url,
        "--block-heavy",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["errors"] == []
    assert result["audio_frames"] > 0 and result["audio_bytes"] > 0
