"""A bot that only talks to a MOSS server: one reply through ``MossRemoteTTSService`` in a pipecat
pipeline; prints one JSON line (audio frames and bytes, errors, heavy packages imported).

Run by the light-install test (with ``--block-heavy``: importing torch, FastAPI, … fails, as if
they were not installed) and by ``scripts/check_light_install.sh`` in a venv that holds only
``pip install moss-pipecat`` (where they are not installed at all).

    python light_bot.py ws://127.0.0.1:8765 [--block-heavy]
"""

from __future__ import annotations

import asyncio
import json
import sys

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "ray", "safetensors")


class _Blocker:
    """A meta-path finder under which the heavy packages are "not installed"."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"blocked in the light-install check: {name}")
        return None


async def _reply(url: str) -> dict:
    from pipecat.frames.frames import (
        ErrorFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.tests.utils import SleepFrame, run_test

    from moss_pipecat.service import MossTTSSettings
    from moss_pipecat.service.remote import MossRemoteTTSService

    tts = MossRemoteTTSService(url=url, settings=MossTTSSettings(greedy=True))
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame("Hello from "),
        LLMTextFrame("a light bot."),
        LLMFullResponseEndFrame(),
        SleepFrame(1.0),  # playback time for the reply's audio to come back
    ]
    down, up = await run_test(Pipeline([tts]), frames_to_send=frames)
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    return {
        "audio_frames": len(audio),
        "audio_bytes": sum(len(f.audio) for f in audio),
        "errors": [str(f.error) for f in up if isinstance(f, ErrorFrame)],
        "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)),
    }


def main(argv: list[str]) -> int:
    if "--block-heavy" in argv:
        sys.meta_path.insert(0, _Blocker())
    url = next(a for a in argv if not a.startswith("--"))
    result = asyncio.run(_reply(url))
    print(json.dumps(result))
    ok = result["audio_frames"] > 0 and not result["errors"] and not result["heavy"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
