"""One engine, several pipelines: every conversation is a session of the same loaded model.

    python examples/shared_engine.py --pipelines 3     # tiny model, offline (noise-like audio)
    python examples/shared_engine.py --pipelines 8 --model OpenMOSS-Team/MOSS-TTS-Realtime \\
        --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda

The engine's scheduler batches all sessions' steps into shared model calls; each pipeline's
``MossTTSService(engine=engine)`` gets its own session (KV-cache slot, history, sampler seed).
Load the engine once per process (e.g. at server start) and hand it to every bot.
"""

from __future__ import annotations

import asyncio

from _common import Session, load_engine_from_args, parser

from moss_pipecat.service import MossTTSService, MossTTSSettings


async def conversation(engine, index: int, seed: int, out) -> list:
    tts = MossTTSService(engine=engine, settings=MossTTSSettings(seed=seed))
    async with Session(tts) as s:
        await s.say(f"Hello from pipeline number {index}, sharing one engine.")
        await s.say("All of us are served by the same model at the same time.")
    return s.write_wavs(out, prefix=f"pipeline{index}_reply")


async def main() -> None:
    ap = parser(__doc__.splitlines()[0], "out/examples/shared_engine")
    ap.add_argument("--pipelines", type=int, default=3)
    args = ap.parse_args()
    engine = load_engine_from_args(args)
    if args.pipelines > engine.config.max_sessions:
        ap.error(f"this engine holds at most {engine.config.max_sessions} sessions")
    try:
        results = await asyncio.gather(
            *(
                conversation(engine, i, args.seed + i, args.out)
                for i in range(1, args.pipelines + 1)
            )
        )
        for paths in results:
            for path in paths:
                print(f"wrote {path}")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
