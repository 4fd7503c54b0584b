"""Launch budget: ATen ops the engine issues per tick outside its graphed steps, by phase.

On a GPU every ATen op outside a CUDA graph is at least one kernel launch or a piece of host
work the engine thread waits on, while a graph replay is one launch whatever it holds. This
drives an engine tick by tick (no engine thread, no timing) under a ``TorchDispatchMode`` that
counts every op by phase: turn_start, prefill (one chunk call), first_frame, decode, deliver,
codec, other (see ``moss_pipecat/testing/launches.py``). The graphed steps run their padded
static-buffer path without CUDA graphs, on any device: the code a replay runs. A graphed step's
call counts as one op outside the graphs and its own ops as "inside_graph"; with
``--graphed off`` the plain eager path runs and everything counts as outside.

Kernels inside the graphs (``kernels`` in the JSON; ``--kernels`` reports only these): one
decode step of the real model at batch 1 (sampled) and one codec frame of the real codec, in
bf16 on the ``meta`` device, counted as the GPU runs them: views and allocations are not
kernels, a fused op (``rms_norm``, attention) or a custom op counts once (see
``moss_pipecat/testing/kernels.py``). Seconds on a CPU, no weights.

Scenario per session count N: N sessions each start a sampled turn with all its text at once;
tick 1 prefills them all, makes their first frames and steps them once (the first tick), the
next ``--ticks`` ticks are decode ticks of all N sessions together. Counts do not depend on
weights, and only the ops inside the graphs and the prefill depend on depth: on a CPU
``--real-size`` keeps every depth, head count and vocabulary of the real model and codec but
narrows their widths (``--widths``), so the counts are the real model's in seconds.

    python benchmarks/bench_launches.py                                # tiny fixture model + codec
    python benchmarks/bench_launches.py --real-size --sessions 1 8 64 160
    python benchmarks/bench_launches.py --real-size --random-weights --device cuda --dtype bfloat16
    python benchmarks/bench_launches.py --kernels                      # kernels per step only
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from _common import emit, environment, fixtures_root
from _setup import DTYPES, build_model, layout_for

from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.model import MossTTSRealtime, MossTTSRealtimeConfig, SamplingParams
from moss_pipecat.model.kernels import SINGLE_KERNEL
from moss_pipecat.testing.kernels import codec_frame_kernels, decode_step_kernels
from moss_pipecat.testing.launches import count_ticks, instrument, outside, start_turns

META = torch.device("meta")
NARROW = 16  # --widths narrow divides every width by this (depths, heads, vocabularies kept)
DECODE_PHASES = ("decode", "deliver", "codec", "other")


def narrow_model_config() -> MossTTSRealtimeConfig:
    """The real TTS architecture (28 + 4 layers, 16/8 heads, rvq 16, both vocabularies) with
    every width divided by ``NARROW``: the same ATen ops per call, a fraction of the FLOPs."""
    real = MossTTSRealtimeConfig.real()

    def narrow(t):
        return dataclasses.replace(
            t,
            hidden_size=t.hidden_size // NARROW,
            head_dim=t.head_dim // NARROW,
            intermediate_size=t.intermediate_size // NARROW,
        )

    return dataclasses.replace(real, language=narrow(real.language), local=narrow(real.local))


def narrow_codec_dict() -> dict:
    """The real codec's layers, heads and patches with its widths divided by ``NARROW`` (the
    240-sample patch dimension, i.e. the frame rate, is kept)."""
    from moss_pipecat.codec import real_config_dict

    d = real_config_dict()
    q = d["quantizer_kwargs"]
    for key in ("input_dim", "rvq_dim", "output_dim"):
        q[key] //= NARROW
    for stage in d["encoder_kwargs"] + d["decoder_kwargs"]:
        if stage["module_type"] != "Transformer":
            continue
        for key in ("d_model", "dim_feedforward"):
            stage[key] //= NARROW
        for key in ("input_dimension", "output_dimension"):
            if stage[key] != 240:
                stage[key] //= NARROW
    return d


def build(args, device: torch.device, dtype: torch.dtype):
    """(model, codec or None, description of the sizes)."""
    from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict

    narrow = args.real_size and (
        args.widths == "narrow" or (args.widths == "auto" and device.type == "cpu")
    )
    if narrow:
        with torch.device(device):
            model = MossTTSRealtime(narrow_model_config()).to(dtype)
        model = model.init_random_().eval().requires_grad_(False)
        sizes = f"real depths, widths / {NARROW}"
    else:
        model = build_model(args, device, dtype)
        sizes = "real" if args.real_size else (args.checkpoint or "tiny fixture")
    codec = None
    if not args.no_codec:
        if args.real_size:
            d = narrow_codec_dict() if narrow else real_config_dict()
            codec = MossAudioCodec.random(CodecConfig.from_dict(d), dtype=dtype, device=device)
        else:
            codec = MossAudioCodec.from_pretrained(fixtures_root() / "codec", device=device)
    return model, codec, sizes


def run_sessions(model, codec, n: int, args) -> dict:
    """One engine with ``n`` sessions: the counts of its first tick and its decode ticks."""
    config = EngineConfig(
        max_sessions=n,
        max_context=256,
        context_budget=200,
        turn_reserve=60,
        lookahead_s=None,
        graphed_decode=args.graphed == "on",
        graphed_prefill=args.graphed_prefill == "on",
    )
    engine = MossEngine(model, layout_for(model), codec=codec, config=config)
    counter = instrument(engine)
    sampling = SamplingParams.greedy_decoding() if args.greedy else SamplingParams()
    vocab = min(engine.layout.im_start, model.cfg.text_pad)
    gen = torch.Generator().manual_seed(n)
    texts = [torch.randint(0, vocab, (16,), generator=gen).tolist() for _ in range(n)]
    # Tick 1 makes 2 frames; no turn ends (and closes) inside the measured ticks.
    start_turns(engine, [sampling] * n, texts, frames=args.ticks + 3)
    ticks = count_ticks(engine, counter, 1 + args.ticks)
    first, decode_ticks = ticks[0], ticks[1:]
    if any("first_frame" in t or "prefill" in t for t in decode_ticks) or any(
        t.get("decode", {}).get("calls") != 1 for t in decode_ticks
    ):
        raise RuntimeError(f"the ticks did not run as planned: {ticks}")
    ended = [s for s in engine.core.sessions.values() if s.turn is None]
    if ended:
        raise RuntimeError(f"{len(ended)} turns ended early")

    def median(values) -> int:
        return int(statistics.median(values))

    def phase(name: str, key: str) -> int:
        return median(t.get(name, {}).get(key, 0) for t in decode_ticks)

    return {
        "sessions": n,
        "decode_tick": {
            "outside": median(outside(t) for t in decode_ticks),
            "inside_graph": median(
                sum(p["inside_graph"] for p in t.values()) for t in decode_ticks
            ),
            "device_ops": median(sum(p["device_ops"] for p in t.values()) for t in decode_ticks),
            "by_phase": {
                p: {"outside": phase(p, "outside"), "inside_graph": phase(p, "inside_graph")}
                for p in DECODE_PHASES
            },
            "per_tick_outside": [outside(t) for t in decode_ticks],
        },
        "prefill_chunk": {  # the first tick's prefill of all n turns (the TTFA path)
            k: first.get("prefill", {}).get(k, 0)
            for k in ("outside", "inside_graph", "graph_calls")
        },
        "first_tick": first,
    }


def step_kernels(dtype_name: str) -> dict:
    """Kernels of one real-size decode step and one codec frame (batch 1, each plain and
    through the fused ops), on ``meta``."""
    dtype = DTYPES[dtype_name]
    out = {"dtype": dtype_name, "device": "meta", "sizes": "real"}
    for name, fn in (
        ("decode_step", decode_step_kernels),
        ("decode_step_fused", lambda d: decode_step_kernels(d, fused=True)),
        ("codec_frame", codec_frame_kernels),
        ("codec_frame_fused", lambda d: codec_frame_kernels(d, fused=True)),
    ):
        k = fn(dtype)
        out[name] = {"kernels": k.total, "by_op": k.by_op}
    # the fused ops counted once: those with a CUDA kernel (Triton, where it is installed)
    out["fused_single_kernel_ops"] = sorted(
        op for op, devices in SINGLE_KERNEL.items() if "cuda" in devices
    )
    return out


def kernels_summary(k: dict) -> str:
    return (
        f"kernels per graphed step ({k['dtype']}, real size, counted on {k['device']}): "
        f"decode step b=1 {k['decode_step']['kernels']} "
        f"(fused ops: {k['decode_step_fused']['kernels']}), "
        f"codec frame b=1 {k['codec_frame']['kernels']} "
        f"(fused ops: {k['codec_frame_fused']['kernels']})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="TTS checkpoint dir or hub id (default: tiny fixture)")
    ap.add_argument("--real-size", action="store_true", help="the real architecture")
    ap.add_argument("--random-weights", action="store_true", help="no checkpoint, random init")
    ap.add_argument(
        "--widths",
        choices=["auto", "real", "narrow"],
        default="auto",
        help=f"with --real-size: narrow = widths / {NARROW}, same op counts (auto: narrow on CPU)",
    )
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 64, 160])
    ap.add_argument("--ticks", type=int, default=3, help="decode ticks measured per count")
    ap.add_argument("--greedy", action="store_true", help="greedy sessions instead of sampled")
    ap.add_argument("--graphed", choices=["on", "off"], default="on", help="graphed steps")
    ap.add_argument(
        "--graphed-prefill",
        choices=["on", "off"],
        default="on",
        help="with --graphed on: prefill chunks through their graph buckets (off: eager)",
    )
    ap.add_argument("--no-codec", action="store_true", help="codes only, no PCM decode")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument(
        "--kernels",
        action="store_true",
        help="only the kernels of one real-size decode step and codec frame (meta device)",
    )
    ap.add_argument(
        "--kernels-dtype",
        default="bfloat16",
        choices=sorted(DTYPES),
        help="dtype of the kernel count (default: the GPU's, bf16)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()

    kernels = step_kernels(args.kernels_dtype)
    if args.kernels:
        out = {"benchmark": "launches", "kernels": kernels, "env": environment(META)}
        emit(out, args.out, kernels_summary(kernels))
        return
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model, codec, sizes = build(args, device, dtype)
    results = [run_sessions(model, codec, n, args) for n in args.sessions]
    outside = [r["decode_tick"]["outside"] for r in results]
    out = {
        "benchmark": "launches",
        "model": sizes,
        "codec": None if codec is None else sizes,
        "dtype": args.dtype,
        "graphed_decode": args.graphed == "on",
        "graphed_prefill": args.graphed == "on" and args.graphed_prefill == "on",
        "sampling": "greedy" if args.greedy else "sampled",
        "decode_tick_outside_grows": len(set(outside)) > 1,
        "env": environment(device),
        "kernels": kernels,
        "results": results,
    }
    counts = "/".join(str(n) for n in args.sessions)
    parts = {
        p: "/".join(str(r["decode_tick"]["by_phase"][p]["outside"]) for r in results)
        for p in ("decode", "deliver", "codec")
    }
    emit(
        out,
        args.out,
        f"launches: decode tick ops outside graphs at {counts} sessions: "
        f"{'/'.join(map(str, outside))} (decode {parts['decode']}, deliver {parts['deliver']}, "
        f"codec {parts['codec']}); first tick's prefill chunk "
        f"{'/'.join(str(r['prefill_chunk']['outside']) for r in results)} "
        f"({sizes}, {args.device}); {kernels_summary(kernels)}",
    )


if __name__ == "__main__":
    main()
