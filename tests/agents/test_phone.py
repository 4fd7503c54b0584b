"""The phone variant: a Twilio media stream (8 kHz mu-law over the runner's /ws websocket).

A client speaking Twilio's media-stream protocol (connected / start / media events, 20 ms of
mu-law per message, in real time) calls the offline agent (``-t twilio``) on loopback; the agent
must transcribe the caller at 8 kHz and answer with media messages of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import soundfile as sf
import soxr
import websockets

from .botproc import REPO, running_bot

RATE = 8000
MIN_ANSWER = 2 * 640  # samples: two 80 ms frames at 8 kHz
STREAM, CALL = "MZ00000000000000000000000000000000", "CA00000000000000000000000000000000"


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 mu-law of 16-bit samples."""
    x = pcm.astype(np.int32)
    sign = (x < 0).astype(np.int32) << 7
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    mag = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where(u & 0x80, 0x84 - mag, mag - 0x84).astype(np.int16)


def caller_audio() -> bytes:
    wav, sr = sf.read(str(REPO / "agents" / "eval" / "user1.wav"), dtype="float32")
    pcm = (soxr.resample(wav, sr, RATE) * 32767).astype(np.int16)
    silence = np.zeros(RATE // 2, np.int16)
    return ulaw_encode(np.concatenate([silence, pcm]))


def test_ulaw_round_trip():
    x = (np.sin(np.arange(800) / 10) * 20000).astype(np.int16)
    y = ulaw_decode(ulaw_encode(x))
    assert np.max(np.abs(y.astype(int) - x)) < 700  # mu-law's step at this level


async def test_twilio_call_gets_an_answer(tmp_path, fixtures_dir):
    log = tmp_path / "bot.log"
    args = ["-t", "twilio", "-x", "phone.invalid"]  # -x only goes into TwiML, never contacted
    with running_bot(args, log, fixtures_dir) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        received = await asyncio.wait_for(_call(ws_url, caller_audio()), 60)
    text = log.read_text()
    assert "Transcription: [" in text and "capital" in text.lower(), text[-2000:]
    answer = ulaw_decode(b"".join(received))
    assert answer.size >= MIN_ANSWER, "less than two 80 ms frames of answer audio"
    assert np.abs(answer.astype(np.float32)).mean() > 100, "the answer is silent"


async def _call(url: str, audio: bytes, attempts: int = 3) -> list[bytes]:
    """Plays ``audio`` as a Twilio stream, then silence, until the bot's answer has ended.

    The tiny MOSS model has random weights and now and then samples EOS in its first frame or
    two: if the answer was shorter than that, the caller asks again (same call, at most
    ``attempts`` times in all).
    """
    received: list[bytes] = []
    last = [0.0]
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "accountSid": "AC0",
            "streamSid": STREAM,
            "callSid": CALL,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            "customParameters": {},
        }
        await ws.send(json.dumps({"event": "start", "start": start, "streamSid": STREAM}))

        async def listen() -> None:
            async for message in ws:
                msg = json.loads(message)
                if msg.get("event") == "media":
                    received.append(base64.b64decode(msg["media"]["payload"]))
                    last[0] = asyncio.get_running_loop().time()

        listener = asyncio.create_task(listen())
        step, chunk = 160, 0  # 20 ms of 8 kHz mu-law
        clock = asyncio.get_running_loop().time
        t0 = clock()
        silence = bytes([0xFF]) * step
        for _ in range(attempts):
            before, played = len(received), 0
            # Until 1.5 s after the answer's last media.
            while len(received) == before or clock() - last[0] < 1.5:
                off = played * step
                payload = audio[off : off + step] if off < len(audio) else silence
                media = {"track": "inbound", "chunk": str(chunk), "payload": ""}
                media["payload"] = base64.b64encode(payload.ljust(step, b"\xff")).decode()
                await ws.send(json.dumps({"event": "media", "streamSid": STREAM, "media": media}))
                chunk, played = chunk + 1, played + 1
                await asyncio.sleep(max(0.0, t0 + chunk * 0.02 - clock()))
            if sum(map(len, received)) >= MIN_ANSWER:
                break
        await ws.send(json.dumps({"event": "stop", "streamSid": STREAM}))
        listener.cancel()
    return received
