"""The light install: a bot that only talks to a MOSS server imports the remote service, the
client and the protocol without torch, transformers, FastAPI, uvicorn, Ray or safetensors
(issue #26.2). A subprocess where importing those fails speaks to a server of this process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "ray", "safetensors")

BOT = """
import asyncio, json, sys

HEAVY = {heavy!r}


class Blocker:
    # A meta-path finder: the heavy packages are "not installed" in this process.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"blocked in the light-install test: {{name}}")
        return None


sys.meta_path.insert(0, Blocker())

from pipecat.frames.frames import (
    ErrorFrame, LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.tests.utils import SleepFrame, run_test

from moss_pipecat.service import MossTTSSettings
from moss_pipecat.service.remote import MossRemoteTTSService


async def main():
    tts = MossRemoteTTSService(url={url!r}, settings=MossTTSSettings(greedy=True))
    frames = [
        LLMFullResponseStartFrame(), LLMTextFrame("Hello from "), LLMTextFrame("a light bot."),
        LLMFullResponseEndFrame(), SleepFrame(1.0),
    ]
    down, up = await run_test(Pipeline([tts]), frames_to_send=frames)
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    print(json.dumps({{
        "audio_frames": len(audio),
        "audio_bytes": sum(len(f.audio) for f in audio),
        "errors": [str(f.error) for f in up if isinstance(f, ErrorFrame)],
        "heavy": sorted({{m.split(".")[0] for m in sys.modules}} & set(HEAVY)),
    }}))


asyncio.run(main())
"""


async def test_remote_service_runs_without_torch_or_the_server(
    make_tiny_engine, make_server, tmp_path
):
    server = await make_server(make_tiny_engine())
    script = tmp_path / "light_bot.py"
    script.write_text(BOT.format(heavy=HEAVY, url=server.url))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
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
