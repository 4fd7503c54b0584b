"""Voice cloning: speak in the voice of a reference recording, and switch voices at runtime.

    python examples/voice_clone.py --voice my_voice.wav          # tiny model (noise-like audio)
    python examples/voice_clone.py --voice my_voice.wav --model OpenMOSS-Team/MOSS-TTS-Realtime \\
        --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda

The reference WAV (any rate, a few seconds of clean speech) is encoded by the codec once and put
in the conversation's system prompt. ``MossTTSSettings(voice=...)`` sets it at start;
``TTSUpdateSettingsFrame`` changes it between replies (a reply never changes voice midway).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from _common import REPO, Session, load_engine_from_args, parser
from pipecat.frames.frames import TTSUpdateSettingsFrame

from moss_pipecat.service import MossTTSService, MossTTSSettings


async def main() -> None:
    ap = parser(__doc__.splitlines()[0], "out/examples/voice_clone")
    ap.add_argument("--voice", type=Path, default=REPO / "agents" / "eval" / "user1.wav")
    ap.add_argument("--second-voice", type=Path, default=REPO / "agents" / "eval" / "user2.wav")
    args = ap.parse_args()
    engine = load_engine_from_args(args)
    try:
        tts = MossTTSService(
            engine=engine,
            settings=MossTTSSettings(voice=str(args.voice), seed=args.seed),
            # Runtime updates may name voice files only in this directory (settings can come
            # from a client).
            voice_dir=args.second_voice.parent,
        )
        async with Session(tts) as s:
            await s.say("This is the voice of the reference recording.")
            await s.worker.queue_frame(
                TTSUpdateSettingsFrame(delta=MossTTSSettings(voice=args.second_voice.name))
            )
            await s.say("And now I speak with the second reference voice.")
        for path in s.write_wavs(args.out, prefix="voice"):
            print(f"wrote {path}")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
