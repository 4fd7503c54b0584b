"""Shared bits of the examples: engine flags, a real-time "speaker", LLM-style reply frames.

Every example runs offline on the tiny random-weight fixture model by default (its audio is
NOISE-LIKE by design) and on the real checkpoints with flags:

    --model OpenMOSS-Team/MOSS-TTS-Realtime --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from moss_pipecat.engine import TINY_ENGINE_CONFIG, MossEngine, tiny_fixtures_dir
from moss_pipecat.testing.speaker import BotState, RealtimeOutputTransport

REPO = Path(__file__).resolve().parent.parent  # the sample recordings live in agents/eval/

OUT_RATE = 24000


def parser(description: str, out: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", help="MOSS-TTS-Realtime checkpoint (hub id or dir); default: tiny")
    ap.add_argument("--codec", help="MOSS-Audio-Tokenizer checkpoint (hub id or dir)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--fixtures", type=Path, default=None, help="tiny fixture set directory")
    ap.add_argument("--out", type=Path, default=Path(out), help="where the WAVs go")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same audio)")
    ap.add_argument(
        "--eos-min-frames",
        type=int,
        default=None,
        metavar="N",
        help="no reply ends before N frames (EngineConfig.eos_min_frames; default 0, and for "
        "the tiny random-weight model, which may otherwise stop anywhere, its stand-in's)",
    )
    return ap


def load_engine_from_args(args: argparse.Namespace) -> MossEngine:
    """The real checkpoints with --model, else the tiny fixture model (noise-like audio)."""
    if args.model:
        from moss_pipecat.engine import DEFAULT_CODEC, EngineConfig, load_engine

        config = EngineConfig(eos_min_frames=args.eos_min_frames or 0)
        codec = args.codec or DEFAULT_CODEC
        return load_engine(args.model, codec, device=args.device, config=config)
    from moss_pipecat.engine import load_tiny_engine

    fixtures = args.fixtures or tiny_fixtures_dir()
    print(f"tiny random-weight MOSS model from {fixtures}: the audio is NOISE-LIKE by design")
    config = TINY_ENGINE_CONFIG
    if args.eos_min_frames is not None:
        config = replace(config, eos_min_frames=args.eos_min_frames)
    return load_tiny_engine(fixtures, config=config, device=args.device or "cpu")


def reply(text: str) -> list[Frame]:
    """An LLM reply as an LLM service streams it: start, one text frame per word, end."""
    words = text.split(" ")
    pieces = [w + " " for w in words[:-1]] + [words[-1]]
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in pieces),
        LLMFullResponseEndFrame(),
    ]


def speaker() -> tuple[RealtimeOutputTransport, BotState]:
    """An output that plays audio at real-time pace (like a sound card) and keeps what played."""
    bot = BotState()
    params = TransportParams(audio_out_enabled=True, audio_out_sample_rate=OUT_RATE)
    return RealtimeOutputTransport(params, bot, name="speaker"), bot


async def wait_reply_done(bot: BotState, since: float, timeout: float = 120.0) -> None:
    """Until a reply that started after ``since`` has finished playing."""
    deadline = time.monotonic() + timeout
    while not (not bot.speaking and any(s.start > since for s in bot.segments)):
        if time.monotonic() > deadline:
            raise TimeoutError("no reply finished playing in time")
        await bot.wait_change(0.2)


async def wait_speaking(bot: BotState, since: float, timeout: float = 60.0) -> float:
    """Until a reply that started after ``since`` is playing; returns when it started."""
    deadline = time.monotonic() + timeout
    while not any(s.start > since for s in bot.segments):
        if time.monotonic() > deadline:
            raise TimeoutError("the bot did not start speaking in time")
        await bot.wait_change(0.2)
    return next(s.start for s in bot.segments if s.start > since)


class Session:
    """A running pipeline (processors + a real-time speaker) to push frames into."""

    def __init__(self, *processors) -> None:
        self.out, self.bot = speaker()
        self.worker = PipelineWorker(
            Pipeline([*processors, self.out]),
            params=PipelineParams(audio_out_sample_rate=OUT_RATE, enable_metrics=True),
            idle_timeout_secs=None,
        )
        self._runner = WorkerRunner(handle_sigint=False)
        self._run: asyncio.Task | None = None

    async def __aenter__(self) -> Session:
        await self._runner.add_workers(self.worker)
        self._run = asyncio.create_task(self._runner.run())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._run, 60)

    async def say(self, text: str, wait: bool = True) -> None:
        """Streams an LLM-style reply; with ``wait``, returns once it has played."""
        since = time.monotonic()
        await self.worker.queue_frames(reply(text))
        if wait:
            await wait_reply_done(self.bot, since)

    def write_wavs(self, out: Path, prefix: str = "reply") -> list[Path]:
        """One WAV per played reply (what a listener heard)."""
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, seg in enumerate(self.bot.segments, start=1):
            path = out / f"{prefix}{i}.wav"
            sf.write(path, np.frombuffer(bytes(seg.pcm), np.int16), OUT_RATE, subtype="PCM_16")
            paths.append(path)
        return paths
