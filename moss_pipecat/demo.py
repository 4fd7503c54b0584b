"""Offline demo: a short multi-turn conversation with barge-in, written as WAV files.

With no arguments it runs on the tiny random-weight fixture model (its audio is noise-like by
construction) and needs no network and no GPU:

    python -m moss_pipecat.demo                       # -> out/demo/*.wav + out/demo/summary.json

With real checkpoints (downloaded from the Hugging Face hub on first use):

    python -m moss_pipecat.demo --model OpenMOSS-Team/MOSS-TTS-Realtime \\
        --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from moss_pipecat.engine import MossEngine, Session, TurnSummary, tiny_fixtures_dir

TURNS = [
    "Hello! I'm a streaming text to speech model, and I speak while the text is still arriving.",
    "Sure. Every turn you hear stays in my context, so my voice stays the same all along, "
    "even when you interrupt me in the middle of a long sentence like this one.",
    "No problem, I stopped where you cut me off and I remember what you actually heard.",
]
USER_SAYS = ["Can you tell me more?", "Wait, stop there."]


def synthetic_speech(seconds: float, f0: float, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """A vowel-like harmonic tone with jitter: stands in for a recorded voice or user speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 8))
    wav *= 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * 0.3
    return (wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


async def speak(session: Session, text: str, stop_after: int | None = None):
    """Streams ``text`` word by word (like an LLM); returns (pcm bytes, summary)."""
    turn = await session.start_turn()
    for word in text.split(" "):
        turn.push_text(word + " ")
    turn.end_text()
    pcm, n = [], 0
    async for chunk in turn:
        pcm.append(chunk.pcm)
        n += 1
        if stop_after is not None and n == stop_after:
            summary = await session.interrupt(heard_frames=n)  # the user barged in here
            await turn.wait()
            return b"".join(pcm), summary
    return b"".join(pcm), turn.summary


def write_wav(path: Path, pcm: bytes, sr: int) -> None:
    sf.write(path, np.frombuffer(pcm, dtype=np.int16), sr, subtype="PCM_16")


async def conversation(engine: MossEngine, out: Path, seed: int) -> list[dict]:
    codec = engine.codec
    sr = codec.sampling_rate
    rvq = engine.layout.rvq  # the codebooks the TTS model reads
    voice = codec.encode_frames(torch.from_numpy(synthetic_speech(2.0, 140.0, sr)), sr, rvq)
    session = engine.create_session(voice=voice, seed=seed)
    report = []

    def record(name: str, pcm: bytes, s: TurnSummary) -> None:
        path = out / f"{name}.wav"
        write_wav(path, pcm, sr)
        report.append(
            {
                "file": str(path),
                "seconds": len(pcm) / 2 / sr,
                "stop": s.stop,
                "audio_frames": s.audio_frames,
                "heard_frames": s.heard_frames,
                "ttfa_ms": None if s.ttfa_s is None else round(1e3 * s.ttfa_s, 1),
                "text": s.text.strip(),
                "spoken_text": s.spoken_text.strip(),
            }
        )

    pcm, s = await speak(session, TURNS[0])
    record("turn1_bot", pcm, s)
    for i, (user, bot) in enumerate(zip(USER_SAYS, TURNS[1:], strict=True), start=2):
        wav = synthetic_speech(1.2, 220.0, sr, seed=i)
        await session.add_user_turn(
            session.user_text_ids(user), codec.encode_frames(torch.from_numpy(wav), sr, rvq)
        )
        pcm, s = await speak(session, bot, stop_after=15 if i == 2 else None)
        record(f"turn{i}_bot" + ("_interrupted" if s.stop == "interrupted" else ""), pcm, s)
    await session.close()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=None, help="tiny fixture set directory")
    ap.add_argument("--model", help="real TTS checkpoint (hub id or directory)")
    ap.add_argument("--codec", help="real codec checkpoint (hub id or directory)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.model:
        from moss_pipecat.engine import DEFAULT_CODEC, load_engine

        engine = load_engine(args.model, args.codec or DEFAULT_CODEC, device=args.device)
        what = args.model
    else:
        from moss_pipecat.engine import TINY_ENGINE_CONFIG, load_tiny_engine

        fixtures = args.fixtures or tiny_fixtures_dir()
        # The random model's stand-in rules (a turn speaks its text first, as the agents'
        # tiny engine), unpaced: the demo writes files, nobody is listening in real time.
        config = dataclasses.replace(TINY_ENGINE_CONFIG, lookahead_s=None)
        engine = load_tiny_engine(fixtures, config=config, device=args.device)
        what = f"tiny random-weight fixture model at {fixtures} (noise-like audio by design)"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(conversation(engine, args.out, args.seed))
    finally:
        engine.shutdown()
    summary = {"model": what, "turns": report}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"\nWrote {len(report)} WAV files and summary.json to {args.out.resolve()}")


if __name__ == "__main__":
    main()
