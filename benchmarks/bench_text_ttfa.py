"""Time to first audio of a reply streamed token by token, Chinese vs English (issue #21.4).

An LLM streams its reply one token at a time (``--token-ms`` apart); the turn's text goes in
through the incremental tokenizer (``Session.push_text``) exactly as the service feeds it.
TTFA is measured from the first piece of text to the first audio frame, so it includes the
wait for enough committed text ids (the prefill needs the text lead, 12 ids, or the text's
end). The tokenizer commits ids only where a pre-token ends: English at every word, Chinese
only at a break (a punctuation mark), since a run of CJK characters is one pre-token.

    python benchmarks/bench_text_ttfa.py                    # tiny fixture model, CPU
    python benchmarks/bench_text_ttfa.py --token-ms 30 --repeats 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _common import emit, fixtures_root

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.factory import load_tiny_engine
from moss_pipecat.model import SamplingParams

REPLIES = {
    # The same number of LLM pieces (an LLM token is about a word in English, one or two
    # characters in Chinese).
    "en": "Hello there, the weather is lovely today, so let us walk in the park "
    "and then have lunch together before we head back home to rest.",
    "zh": "你好，今天天气很好，我们一起去公园散步吧，然后一起吃午饭，下午再回家休息。",
    "zh_long_clause": "今天天气特别好我们一起去公园散步然后一起吃午饭下午再回家休息好不好。",
}


def pieces(lang: str, text: str) -> list[str]:
    if lang == "en":
        words = text.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]]
    out, i = [], 0
    while i < len(text):  # one, then two characters a piece
        n = 1 + len(out) % 2
        out.append(text[i : i + n])
        i += n
    return out


async def one_reply(engine, lang: str, token_s: float, seed: int) -> dict:
    session = engine.create_session(sampling=SamplingParams(), seed=seed)
    text = REPLIES[lang]
    turn = await session.start_turn(min_frames=8, max_frames=8)
    first_audio: list[float] = []

    async def read() -> None:
        async for _ in turn:
            if not first_audio:
                first_audio.append(time.perf_counter())

    reader = asyncio.create_task(read())
    ps = pieces(lang, text)
    t0 = time.perf_counter()
    for k, piece in enumerate(ps):
        turn.push_text(piece)
        if first_audio:
            break
        await asyncio.sleep(max(0.0, t0 + (k + 1) * token_s - time.perf_counter()))
    turn.end_text()
    await reader
    await session.close()
    ttfa = first_audio[0] - t0
    return {"ttfa_ms": 1e3 * ttfa, "pieces_before_audio": min(len(ps), int(ttfa / token_s) + 1)}


async def run(engine, token_s: float, repeats: int) -> dict:
    out = {}
    for lang in REPLIES:
        runs = [await one_reply(engine, lang, token_s, seed) for seed in range(repeats)]
        ttfa = [r["ttfa_ms"] for r in runs]
        out[lang] = {
            "pieces": len(pieces(lang, REPLIES[lang])),
            "ttfa_ms_p50": statistics.median(ttfa),
            "ttfa_ms_max": max(ttfa),
            "pieces_before_audio_p50": statistics.median(r["pieces_before_audio"] for r in runs),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--token-ms", type=float, default=20.0, help="LLM pace (ms per token)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    engine = load_tiny_engine(fixtures_root(), config=EngineConfig(lookahead_s=None))
    try:
        results = asyncio.run(run(engine, args.token_ms / 1e3, args.repeats))
    finally:
        engine.shutdown()
    out = {"benchmark": "text_ttfa", "model": "tiny fixture", "token_ms": args.token_ms}
    out["results"] = results
    summary = "; ".join(
        f"{lang} {r['ttfa_ms_p50']:.0f} ms ({r['pieces_before_audio_p50']:.0f} pieces)"
        for lang, r in results.items()
    )
    emit(out, args.out, f"text TTFA p50 at {args.token_ms:.0f} ms/token: {summary}")


if __name__ == "__main__":
    main()
