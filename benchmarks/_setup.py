"""Building what the benchmarks measure: models, codecs, engines, a round of sessions.

Shared by the benchmark scripts (they import this module, never each other).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time

import torch
from _common import fixtures_root

from moss_pipecat.engine import EngineConfig, MossEngine, RowLayout
from moss_pipecat.model import MossTTSRealtime, MossTTSRealtimeConfig, SamplingParams
from moss_pipecat.testing.simulated_device import stand_in_layout

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(args, device: torch.device, dtype: torch.dtype) -> MossTTSRealtime:
    if args.checkpoint:
        return MossTTSRealtime.from_pretrained(args.checkpoint, dtype=dtype, device=device)
    if args.real_size or args.random_weights:
        cfg = (
            MossTTSRealtimeConfig.real()
            if args.real_size
            else MossTTSRealtime.from_pretrained(fixtures_root() / "realtime").cfg
        )
        with torch.device(device):
            model = MossTTSRealtime(cfg).to(dtype)
        return model.init_random_().eval().requires_grad_(False)
    return MossTTSRealtime.from_pretrained(fixtures_root() / "realtime", dtype=dtype, device=device)


def build_codec(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """None with ``--no-codec``; random real-size weights with ``--real-size``; else the
    fixture codec."""
    if args.no_codec:
        return None
    from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict

    if args.real_size:
        return MossAudioCodec.random(CodecConfig.from_dict(real_config_dict()), dtype, device)
    return MossAudioCodec.from_pretrained(fixtures_root() / "codec", device=device)


def layout_for(model) -> RowLayout:
    """Stand-in specials for a model without a tokenizer (timing does not depend on them)."""
    return stand_in_layout(model.cfg)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def run_round(engine: MossEngine, n: int, n_text: int, frames: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sessions = [engine.create_session(sampling=SamplingParams(), seed=i) for i in range(n)]
    vocab = min(engine.layout.im_start, engine.model.cfg.text_pad)

    async def one(session) -> tuple[float, list[float], int]:
        text = torch.randint(0, vocab, (n_text,), generator=gen).tolist()
        # Exactly ``frames`` frames per turn (EOS masked until then): the load does not depend
        # on where a model happens to stop (a random-weight one may stop at once).
        turn = await session.start_turn(max_frames=frames, min_frames=frames)
        t0 = time.perf_counter()
        turn.push_ids(text)
        turn.end_text()
        stamps = [time.perf_counter() async for _ in turn]
        await session.close()
        ttfa = stamps[0] - t0 if stamps else float("nan")
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return ttfa, gaps, len(stamps)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(s) for s in sessions))
    wall = time.perf_counter() - t0
    ttfas = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    total = sum(r[2] for r in results)
    return {
        "sessions": n,
        "frames_total": total,
        "wall_s": wall,
        "frames_per_s": total / wall,
        "realtime_sessions_supported": total / wall / 12.5,
        "ttfa_ms_p50": 1e3 * statistics.median(ttfas),
        "ttfa_ms_max": 1e3 * max(ttfas),
        "gap_ms_p50": 1e3 * pct(gaps, 0.5),
        "gap_ms_p99": 1e3 * pct(gaps, 0.99),
    }


class _KernelAsked(argparse.Action):
    """``--attention-kernel`` / ``--kv-write-kernel``: a kernel not yet measured on a GPU,
    asked for through the environment variable that ``register_device_kernels`` reads (set
    before any registration); the variable's name is the argument's ``const``."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        os.environ[self.const] = value
        setattr(namespace, self.dest, value)


def add_fused_arg(ap: argparse.ArgumentParser) -> None:
    from moss_pipecat.model.device_kernels import ATTENTION_KERNEL_ENV, KV_WRITE_KERNEL_ENV

    ap.add_argument(
        "--fused",
        choices=["on", "off"],
        default="off",
        help="through the fused ops (model and codec; Triton kernels on CUDA)",
    )
    ap.add_argument(
        "--attention-kernel",
        choices=["library", "triton"],
        default="library",
        action=_KernelAsked,
        const=ATTENTION_KERNEL_ENV,
        help="with --fused on, on CUDA: the fused ops' attention (triton: not yet measured)",
    )
    ap.add_argument(
        "--kv-write-kernel",
        choices=["formula", "triton"],
        default="formula",
        action=_KernelAsked,
        const=KV_WRITE_KERNEL_ENV,
        help="with --fused on, on CUDA: the cache writes folded into the q/k norm + RoPE "
        "kernel (triton: not yet measured)",
    )


def use_fused_ops(module: torch.nn.Module, on: bool) -> None:
    """``module`` (model or codec) through its fused ops, with their device kernels."""
    from moss_pipecat.codec.device_kernels import register_device_kernels
    from moss_pipecat.model.kernels import use_fused

    if on:
        register_device_kernels()
    use_fused(module, on)


def gpu_kernels(fn, device: torch.device, top: int = 25) -> dict | None:
    """What the GPU ran in one call of ``fn`` (e.g. one graph replay), from the profiler:
    kernels, and memcpy/memset operations apart; ``busy_us`` (the kernels' summed time),
    ``span_us`` (first start to last end: busy / span near 1 means kernel-bound, far below
    means launch gaps) and the ``top`` kernel names by time. None off CUDA (nothing measured)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception as e:  # a profiler that cannot trace here must not cost the timings
        return {"error": f"{type(e).__name__}: {e}"}
    kernels = [e for e in events if not e.name.lower().startswith(("memcpy", "memset"))]
    out: dict = {"kernels": len(kernels), "copies": len(events) - len(kernels)}
    try:
        by_name: dict[str, list[float]] = {}
        for e in kernels:
            t = by_name.setdefault(e.name[:120], [0, 0.0])
            t[0] += 1
            t[1] += e.time_range.elapsed_us()
        out["busy_us"] = round(sum(t for _, t in by_name.values()), 1)
        if kernels:
            start = min(e.time_range.start for e in kernels)
            out["span_us"] = round(max(e.time_range.end for e in kernels) - start, 1)
        ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
        out["top"] = [{"name": n, "count": c, "us": round(t, 1)} for n, (c, t) in ranked]
    except Exception as e:  # timings of kernels are extra: never lose the count for them
        out["timing_error"] = f"{type(e).__name__}: {e}"
    return out


def add_engine_args(ap: argparse.ArgumentParser) -> None:
    """Model, codec, device and pacing options shared with bench_capacity."""
    ap.add_argument("--checkpoint", help="TTS checkpoint dir or hub id (default: tiny fixture)")
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--no-codec", action="store_true", help="codes only, no PCM decode")
    ap.add_argument("--frames", type=int, default=40, help="frames per turn")
    ap.add_argument("--text-tokens", type=int, default=24)
    ap.add_argument("--lookahead", type=float, default=None, help="seconds; default unlimited")
    ap.add_argument(
        "--graphed", choices=["auto", "on", "off"], default="auto", help="graphed decode step"
    )
    ap.add_argument("--compile", metavar="BACKEND", help="torch.compile the graphed step")
    add_fused_arg(ap)
    ap.add_argument(
        "--kernel-cache-dir",
        metavar="DIR",
        help="compiled kernels kept here (a second run with the same DIR compiles nothing)",
    )
    ap.add_argument(
        "--graphed-prefill", choices=["on", "off"], default="on", help="bucketed prefill graphs"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--out")


def build_engine(args: argparse.Namespace, max_sessions: int) -> tuple[MossEngine, dict]:
    """A started engine for ``max_sessions`` sessions (random or checkpoint weights), and what
    capturing its graphs cost (``capture_graphs``)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = build_model(args, device, dtype)
    codec = build_codec(args, device, dtype)
    config = EngineConfig(
        max_sessions=max_sessions,
        max_context=512 + args.frames + args.text_tokens,
        context_budget=500,
        turn_reserve=100,
        lookahead_s=args.lookahead,
        graphed_decode={"auto": None, "on": True, "off": False}[args.graphed],
        compile_decode=args.compile,
        graphed_prefill=args.graphed_prefill == "on",
        fused=args.fused == "on",
        kernel_cache_dir=args.kernel_cache_dir,
    )
    engine = MossEngine(model, layout_for(model), codec=codec, config=config)
    capture = capture_graphs(engine)
    engine.start()
    asyncio.run(run_round(engine, 1, args.text_tokens, 3, seed=0))  # warm-up
    return engine, capture


def capture_graphs(engine: MossEngine) -> dict:
    """Captures every graph bucket of a not yet started engine; returns how many, how long it
    took and, on CUDA, the device memory it reserved (graph pools and static buffers)."""
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(engine.device)
        before = torch.cuda.memory_reserved(engine.device)
    t0 = time.perf_counter()
    buckets = engine.capture_graphs() if engine.graphed else 0
    seconds = time.perf_counter() - t0
    out = {"buckets": buckets, "seconds": round(seconds, 2), "cuda_graphs": engine.uses_cuda_graphs}
    if cuda:
        torch.cuda.synchronize(engine.device)
        out["reserved_mib"] = round((torch.cuda.memory_reserved(engine.device) - before) / 2**20, 1)
    return out
