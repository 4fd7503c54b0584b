"""Time to first audio of a new conversation with a 10 s reference voice: with the prompt
prefix cache (its system block's KV copied into the slot) and without (prefilled).

Every conversation starts with the same system sentence and the same voice prompt (10 s =
125 frames by default), then one assistant turn whose text is known at once. TTFA is measured
as a caller sees it: from the turn's text being pushed to its first audio chunk (prefill,
first frame, codec frame, engine-thread hand-offs; ``engine_ttfa_ms``: the engine's own
trigger-to-first-frame time; ``prefill_ms``: its prefill calls alone). Three modes on the
same model, interleaved conversation by conversation:

    off    prefix_cache_bytes=0: every conversation prefills system + voice + its turn
    miss   cache on, a new voice every conversation: the prefill plus keeping the prefix
    hit    cache on, the same voice: the prefix is copied, only the turn is prefilled

    python benchmarks/bench_prefix_cache.py                               # tiny model + codec
    python benchmarks/bench_prefix_cache.py --real-size --random-weights --device cuda \\
        --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch
from _common import emit, environment, sync
from _setup import DTYPES, build_codec, build_model, layout_for

from moss_pipecat.engine.config import FRAME_SECONDS, EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.model import SamplingParams

TARGET_TTFA_MS = 40.0  # H100, bf16, real sizes (issue #16)


async def new_conversation(engine: MossEngine, voice: torch.Tensor, text: list[int]) -> tuple:
    """One new conversation's first turn: (TTFA in s as the caller sees it, the engine's own
    trigger-to-first-frame time in s, prefill rows it cost)."""
    rows_before = engine.stats["prefill_rows"]
    session = await engine.acreate_session(voice=voice, sampling=SamplingParams(), seed=0)
    turn = await session.start_turn(max_frames=2, min_frames=2)
    engine.prefill_s.clear()
    t0 = time.perf_counter()
    turn.push_ids(text)
    turn.end_text()
    stamps = [time.perf_counter() async for _ in turn]
    await session.close()
    rows = engine.stats["prefill_rows"] - rows_before
    return stamps[0] - t0, turn.summary.ttfa_s, rows, sum(engine.prefill_s)


def time_prefills(engine: MossEngine) -> None:
    """Records the seconds of each of the engine's prefill calls in ``engine.prefill_s``
    (synchronized on a GPU, so each is the call's own time)."""
    engine.prefill_s = []
    scheduler = engine.core.scheduler
    real = scheduler.prefill_chunk

    def timed(batch):
        sync(engine.device)
        t0 = time.perf_counter()
        out = real(batch)
        sync(engine.device)
        engine.prefill_s.append(time.perf_counter() - t0)
        return out

    scheduler.prefill_chunk = timed


def summarize(mode: str, samples: list[tuple], hits: int, misses: int) -> dict:
    ttfa = sorted(1e3 * t for t, _, _, _ in samples)
    inner = sorted(1e3 * t for _, t, _, _ in samples)
    rows = sorted({r for _, _, r, _ in samples})
    prefill = sorted(1e3 * t for _, _, _, t in samples)
    return {
        "mode": mode,
        "iters": len(samples),
        "ttfa_ms_p50": statistics.median(ttfa),
        "ttfa_ms_p90": ttfa[min(len(ttfa) - 1, int(0.9 * len(ttfa)))],
        "ttfa_ms_min": ttfa[0],
        "engine_ttfa_ms_p50": statistics.median(inner),  # trigger -> first frame, no codec
        "prefill_ms_p50": statistics.median(prefill),  # the conversation's prefill call(s)
        "prefill_ms_min": prefill[0],
        "prefill_rows_per_conversation": rows[0] if len(rows) == 1 else rows,
        "prefix_hits": hits,
        "prefix_misses": misses,
        "ttfa_within_target": statistics.median(ttfa) <= TARGET_TTFA_MS,
    }


def measure(off: MossEngine, cached: MossEngine, voice, other_voice, text, args) -> list[dict]:
    """The three modes, interleaved conversation by conversation (a busy host slows them
    alike)."""
    modes = {"off": (off, lambda i: voice), "miss": (cached, other_voice), "hit": (cached, None)}
    samples: dict[str, list] = {m: [] for m in modes}
    counts = {m: [0, 0] for m in modes}

    async def run() -> None:
        await new_conversation(cached, voice, text)  # the hit mode's voice: kept from now on
        for i in range(args.warmup + args.iters):
            for mode, (engine, voices) in modes.items():
                hits, misses = engine.stats["prefix_hits"], engine.stats["prefix_misses"]
                sample = await new_conversation(engine, voices(i) if voices else voice, text)
                if i >= args.warmup:
                    samples[mode].append(sample)
                    counts[mode][0] += engine.stats["prefix_hits"] - hits
                    counts[mode][1] += engine.stats["prefix_misses"] - misses

    asyncio.run(run())
    return [summarize(m, samples[m], *counts[m]) for m in modes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="TTS checkpoint dir or hub id (default: tiny fixture)")
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--no-codec", action="store_true", help="codes only, no PCM decode")
    ap.add_argument("--voice-seconds", type=float, default=10.0, help="reference voice length")
    ap.add_argument("--system-tokens", type=int, default=32, help="system sentence length")
    ap.add_argument("--text-tokens", type=int, default=24, help="the first turn's text")
    ap.add_argument(
        "--graphed", choices=["auto", "on", "off"], default="auto", help="graphed decode step"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = build_model(args, device, dtype)
    codec = build_codec(args, device, dtype)
    layout = layout_for(model)
    gen = torch.Generator().manual_seed(0)
    vocab = min(layout.im_start, model.cfg.text_pad, layout.im_end)
    system_ids = torch.randint(0, vocab, (args.system_tokens,), generator=gen).tolist()
    instruction_ids = torch.randint(0, vocab, (8,), generator=gen).tolist()
    text = torch.randint(0, vocab, (args.text_tokens,), generator=gen).tolist()
    n_voice = max(1, round(args.voice_seconds / FRAME_SECONDS))
    codes = model.cfg.audio_pad_token  # audio codes are 0..codes-1
    voice = torch.randint(0, codes, (n_voice, model.cfg.rvq), generator=gen)

    def other_voice(i: int) -> torch.Tensor:  # a new key every conversation
        v = voice.clone()
        flat = v.view(-1)  # [n_voice * rvq]: two codes hold i (one where the voice has one)
        flat[-1] = i // codes
        flat[0] = i % codes
        return v

    prefix_rows = layout.system_block(system_ids, voice, instruction_ids).shape[0]
    turn_rows = layout.prefill_rows(layout.header("assistant", True), text).shape[0]

    def engine_for(cache_bytes: int) -> MossEngine:
        config = EngineConfig(
            max_sessions=2,
            max_context=max(512, 2 * (prefix_rows + turn_rows + 16)),
            context_budget=max(400, prefix_rows + turn_rows + 8),
            turn_reserve=8,
            lookahead_s=None,
            graphed_decode={"auto": None, "on": True, "off": False}[args.graphed],
            prefix_cache_bytes=cache_bytes,
        )
        engine = MossEngine(
            model,
            layout,
            codec=codec,
            config=config,
            system_text_ids=system_ids,
            voice_instruction_ids=instruction_ids,
        )
        time_prefills(engine)
        return engine.start()

    off, cached = engine_for(0), engine_for(EngineConfig().prefix_cache_bytes)
    try:
        results = measure(off, cached, voice, other_voice, text, args)
        entry_bytes = prefix_rows * cached.core.pools[0].cache.nbytes_per_position()
    finally:
        off.shutdown()
        cached.shutdown()
    by_mode = {r["mode"]: r for r in results}
    out = {
        "benchmark": "prefix_cache",
        "model": args.checkpoint or ("real-size random" if args.real_size else "tiny fixture"),
        "codec": None if codec is None else ("real-size random" if args.real_size else "tiny"),
        "dtype": args.dtype,
        "graphed_decode": cached.graphed,
        "voice_seconds": n_voice * FRAME_SECONDS,
        "voice_frames": n_voice,
        "prefix_rows": prefix_rows,
        "turn_rows": turn_rows,
        "prefix_entry_bytes": entry_bytes,
        "target_ttfa_ms": TARGET_TTFA_MS,
        "speedup_p50": by_mode["off"]["ttfa_ms_p50"] / by_mode["hit"]["ttfa_ms_p50"],
        "env": environment(device),
        "results": results,
    }
    emit(
        out,
        args.out,
        f"prefix cache: TTFA of a new conversation with a {n_voice * FRAME_SECONDS:.0f} s voice "
        f"{by_mode['hit']['ttfa_ms_p50']:.1f} ms cached vs {by_mode['off']['ttfa_ms_p50']:.1f} ms "
        f"prefilled ({by_mode['off']['prefill_rows_per_conversation']} -> "
        f"{by_mode['hit']['prefill_rows_per_conversation']} prefill rows, prefill "
        f"{by_mode['off']['prefill_ms_p50']:.1f} -> {by_mode['hit']['prefill_ms_p50']:.1f} ms; "
        f"{args.device}, {args.dtype})",
    )


if __name__ == "__main__":
    main()
