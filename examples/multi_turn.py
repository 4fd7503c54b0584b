"""A multi-turn conversation: user turns (speech + transcript) between bot replies, as WAVs.

    python examples/multi_turn.py              # tiny model, offline (noise-like audio)
    python examples/multi_turn.py --model OpenMOSS-Team/MOSS-TTS-Realtime \\
        --codec OpenMOSS-Team/MOSS-Audio-Tokenizer --device cuda

Each user turn is what a transport + STT would deliver: the user's audio (``InputAudioRawFrame``
between ``UserStarted/StoppedSpeakingFrame``) and a ``TranscriptionFrame``. MOSS keeps both in
its acoustic history, so the bot's voice and prosody follow the whole conversation.
"""

from __future__ import annotations

import asyncio
import json

from _common import REPO, Session, load_engine_from_args, parser
from pipecat.frames.frames import (
    InputAudioRawFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

from moss_pipecat.pcm import load_pcm16
from moss_pipecat.service import MossTTSService, MossTTSSettings

CONVERSATION = [
    (None, "Hi! I am a streaming voice. Ask me anything."),
    ("user1.wav", "Paris is the capital of France."),
    ("user2.wav", "Cats sleep for about two thirds of their lives."),
]
TRANSCRIPTS = {
    "user1.wav": "What is the capital of France?",
    "user2.wav": "Tell me a fun fact about cats.",
}


def user_turn(wav: str) -> list:
    pcm = load_pcm16(REPO / "agents" / "eval" / wav, 16000)
    step = 640  # 20 ms of 16 kHz 16-bit audio
    audio = [
        InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=16000, num_channels=1)
        for i in range(0, len(pcm), step)
    ]
    text = TRANSCRIPTS[wav]
    return [
        UserStartedSpeakingFrame(),
        *audio,
        UserStoppedSpeakingFrame(),
        TranscriptionFrame(text, "user", ""),
    ]


async def main() -> None:
    args = parser(__doc__.splitlines()[0], "out/examples/multi_turn").parse_args()
    engine = load_engine_from_args(args)
    try:
        tts = MossTTSService(engine=engine, settings=MossTTSSettings(seed=args.seed))
        async with Session(tts) as s:
            for wav, bot_says in CONVERSATION:
                if wav:
                    await s.worker.queue_frames(user_turn(wav))
                await s.say(bot_says)
            snapshot = await tts.session.snapshot()
        turns = [f"{role}({tokens} text tokens)" for role, tokens in snapshot["turns"]]
        print("MOSS history:", " -> ".join(turns))
        for path in s.write_wavs(args.out, prefix="bot_turn"):
            print(f"wrote {path}")
        (args.out / "history.json").write_text(json.dumps(snapshot["turns"]) + "\n")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
