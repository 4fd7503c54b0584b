"""Interruption: the user barges in; the bot stops at once and MOSS keeps only what was heard.

    python examples/interruption.py            # tiny model, offline (noise-like audio)
    python examples/interruption.py --model OpenMOSS-Team/MOSS-TTS-Realtime \\
        --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda

An ``InterruptionFrame`` (what pipecat's user aggregator sends when the user starts speaking)
arrives --after seconds into a long reply. The TTS estimates the frames the listener heard from
when playback started, rolls the MOSS history back to them (closing the turn so the next one is
well formed), and the next reply continues from there.
"""

from __future__ import annotations

import asyncio
import time

from _common import OUT_RATE, Session, load_engine_from_args, parser, wait_speaking
from pipecat.frames.frames import InterruptionFrame

from moss_pipecat.service import MossTTSService, MossTTSSettings

LONG = (
    "Let me tell you a long story about the sea, the wind, the ships that sailed it for "
    "centuries and the people who waited for them on the shore every single evening."
)


async def main() -> None:
    ap = parser(__doc__.splitlines()[0], "out/examples/interruption")
    ap.add_argument("--after", type=float, default=1.5, help="seconds of playback before the cut")
    args = ap.parse_args()
    engine = load_engine_from_args(args)
    try:
        tts = MossTTSService(engine=engine, settings=MossTTSSettings(seed=args.seed))
        async with Session(tts) as s:
            since = time.monotonic()
            await s.say(LONG, wait=False)
            started = await wait_speaking(s.bot, since)
            await asyncio.sleep(max(0.0, started + args.after - time.monotonic()))
            await s.worker.queue_frame(InterruptionFrame())
            await asyncio.sleep(0.3)
            cut = await tts.session.snapshot()
            await s.say("Sorry, go ahead.")
        played = len(s.bot.segments[0].pcm) / 2 / OUT_RATE  # the transport's rate
        print(f"played {played:.2f} s of the long reply before the interruption")
        print(f"MOSS kept {cut['turn_frames'][0]} frames (80 ms each) of it")
        for path in s.write_wavs(args.out, prefix="reply"):
            print(f"wrote {path}")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
