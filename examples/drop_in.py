"""Drop MOSS into an existing pipecat pipeline: swap the TTS, keep everything else.

    python examples/drop_in.py                 # tiny model, offline (noise-like audio)
    python examples/drop_in.py --model OpenMOSS-Team/MOSS-TTS-Realtime \\
        --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda

In your bot it is these lines (the engine is loaded once per process and shared):

    from moss_pipecat.engine import load_engine
    from moss_pipecat.service import MossTTSService, MossTTSSettings

    engine = load_engine("OpenMOSS-Team/MOSS-TTS-Realtime", "OpenMOSS-Team/MOSS-Audio-Tokenizer")
    tts = MossTTSService(engine=engine, context=context)   # was: CartesiaTTSService(...)
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, transport.output(), asst_agg])

``context`` is the pipeline's ``LLMContext``: MOSS reads the user's transcript from it and keeps
the user's speech (the input audio passing through) in its acoustic history. This script runs
that TTS on two LLM-style replies and writes what was played.
"""

from __future__ import annotations

import asyncio

from _common import Session, load_engine_from_args, parser

from moss_pipecat.service import MossTTSService, MossTTSSettings


async def main() -> None:
    args = parser(__doc__.splitlines()[0], "out/examples/drop_in").parse_args()
    engine = load_engine_from_args(args)
    try:
        tts = MossTTSService(engine=engine, settings=MossTTSSettings(seed=args.seed))  # drop-in
        async with Session(tts) as s:
            await s.say("Hello! I am the new voice of this pipeline.")
            await s.say("Nothing else in the pipeline had to change.")
        for path in s.write_wavs(args.out):
            print(f"wrote {path}")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
