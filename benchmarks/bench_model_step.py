"""Decode-step latency of the TTS model by batch size: one backbone row + a 16-code frame.

One "step" is what every live session needs every 80 ms: one backbone position over its
cached history, then the local transformer's 16 sequential codebooks with sampling.

    python benchmarks/bench_model_step.py                       # tiny fixture model
    python benchmarks/bench_model_step.py --real-size --random-weights --batch 1 --context 512
    python benchmarks/bench_model_step.py --checkpoint OpenMOSS-Team/MOSS-TTS-Realtime --device cuda
"""

from __future__ import annotations

import argparse

import torch
from _common import emit, environment, time_calls
from _setup import DTYPES, add_fused_arg, build_model, gpu_kernels, use_fused_ops

from moss_pipecat.model import (
    BatchSampling,
    FrameHistory,
    MossTTSRealtime,
    SamplingParams,
)
from moss_pipecat.model.graphs import GraphedDecodeStep
from moss_pipecat.model.sampling import NoiseKeys


def bench_batch(
    model: MossTTSRealtime, B: int, params: SamplingParams, args, device, mode: str
) -> dict:
    """Times one decode step (backbone row + 16 codebooks + sampling) for B sessions.

    mode "eager" calls ``decode_step`` directly; "graphed" goes through ``GraphedDecodeStep``
    (CUDA graphs on a GPU; the same padded path run eagerly elsewhere).
    """
    cfg = model.cfg
    max_len = args.context + args.warmup + args.iters + 2
    cache = model.new_cache(B, max_len)  # max_len keeps the graphed step's spare position
    cache.lengths[:B] = args.context  # stand-in history: the cost depends on its length
    slots = torch.arange(B, device=device)
    slot_list = list(range(B))  # the graphed step takes host slots (no device read)
    sampling = BatchSampling.from_params([params] * B, device)
    history = FrameHistory(B, params.repetition_window, cfg.rvq, device)
    row = torch.full((B, 1, cfg.channels), cfg.audio_pad_token, device=device)
    row[..., 0] = cfg.text_pad
    graphed = None
    if mode == "graphed":
        graphed = GraphedDecodeStep(
            model,
            cache,
            window=params.repetition_window,
            compile_backend=args.compile,
        )
    length = [args.context]

    def step() -> None:
        noise = None
        if not params.greedy:  # the engine's noise keys; the noise is made inside the step
            noise = NoiseKeys.from_ints(range(B), [length[0]] * B, device)
        kv_len = length[0] + 1
        if graphed is None:
            frame, _ = model.decode_step(row, cache, slots, kv_len, sampling, history.buf, noise)
        else:
            frame, _ = graphed.step(row, slot_list, kv_len, sampling, history.buf, noise)
        history.push(frame)
        row[:, 0, 1:] = frame
        length[0] += 1

    t = time_calls(step, device, args.warmup, args.iters)
    if graphed is not None:  # the kernels one replay of this bucket runs (CUDA: profiler)
        key = graphed.bucket(B, length[0])  # the last step's bucket (already captured)
        t["gpu_kernels_per_replay"] = gpu_kernels(lambda: graphed.graphs.launch(key), device)
    t.update(
        batch=B,
        mode=mode,
        frames_per_s=B * 1e3 / t["median_ms"],
        rtf_per_session=t["median_ms"] / 80.0,
    )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="local dir or hub id (default: tiny fixture model)")
    ap.add_argument("--real-size", action="store_true", help="real architecture sizes")
    ap.add_argument("--random-weights", action="store_true", help="no checkpoint, random init")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--context", type=int, default=256, help="history length per session")
    ap.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument(
        "--modes", nargs="+", default=["eager", "graphed"], choices=["eager", "graphed"]
    )
    ap.add_argument(
        "--compile", metavar="BACKEND", help="torch.compile the graphed step (e.g. inductor)"
    )
    add_fused_arg(ap)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = build_model(args, device, dtype)
    use_fused_ops(model, args.fused == "on")
    params = SamplingParams.greedy_decoding() if args.greedy else SamplingParams()
    with torch.inference_mode():
        results = [
            bench_batch(model, B, params, args, device, mode)
            for mode in args.modes
            for B in args.batch
        ]
    out = {
        "benchmark": "model_step",
        "model": args.checkpoint or ("real-size random" if args.real_size else "tiny fixture"),
        "dtype": args.dtype,
        "context": args.context,
        "compile": args.compile,
        "fused": args.fused == "on",
        "sampling": "greedy" if args.greedy else "sampled",
        "parameters": model.num_parameters(),
        "env": environment(device),
        "results": results,
    }
    best = max(results, key=lambda r: r["frames_per_s"])
    emit(
        out,
        args.out,
        f"model_step: b1 {results[0]['median_ms']:.2f} ms/frame ({results[0]['mode']}); best "
        f"{best['frames_per_s']:.0f} frames/s at batch {best['batch']} ({best['mode']}, "
        f"{args.device}, {args.dtype}, fused {args.fused})",
    )


if __name__ == "__main__":
    main()
