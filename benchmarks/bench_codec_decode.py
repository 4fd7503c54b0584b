"""Streaming codec decode latency per 80 ms frame, by batch size (live streams per call).

One call = one new frame (16 codes) for each of B streams, through the quantizer and every
decoder stage with its sliding-window KV rings; output B x 1920 samples. The cost per call
does not depend on how long the streams have been running (rings have static shapes).

    python benchmarks/bench_codec_decode.py                          # tiny fixture codec
    python benchmarks/bench_codec_decode.py --random-weights --real-size --batch 1 --frames 5
    python benchmarks/bench_codec_decode.py --checkpoint OpenMOSS-Team/MOSS-Audio-Tokenizer \
        --device cuda --dtype bfloat16 --batch 1 4 16 64
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import emit, environment, fixtures_root, time_calls
from _setup import add_fused_arg, gpu_kernels, use_fused_ops

from moss_pipecat.checkpoint import read_config
from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict
from moss_pipecat.codec.graphs import GraphedCodecDecode

TTS_CODEBOOKS = 16  # MOSS-TTS-Realtime's codebooks per frame (the codec has 32)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(args: argparse.Namespace, device: torch.device) -> tuple[MossAudioCodec, str]:
    dtype = DTYPES[args.dtype]
    if args.random_weights:
        if args.real_size:
            cfg, name = real_config_dict(), "random weights, real size"
        else:
            cfg, name = read_config(fixtures_root() / "codec"), "random weights, tiny size"
        return MossAudioCodec.random(CodecConfig.from_dict(cfg), dtype, device), name
    if args.real_size:
        raise SystemExit("--real-size needs --random-weights (or pass --checkpoint)")
    path = args.checkpoint or fixtures_root() / "codec"
    return MossAudioCodec.from_pretrained(path, dtype, device), str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="local dir or hub id (default: tiny fixture codec)")
    ap.add_argument("--real-size", action="store_true", help="published checkpoint's dimensions")
    ap.add_argument("--random-weights", action="store_true", help="no checkpoint, random init")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="streams per call")
    ap.add_argument("--frames", type=int, default=50, help="timed calls (one frame each)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--quantizers",
        type=int,
        help="codebooks per frame (default: the TTS model's 16, or all the codec has if fewer)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["eager", "graphed"],
        choices=["eager", "graphed"],
        help="graphed: static buffers + CUDA graphs (on CPU the same padded path, eagerly)",
    )
    add_fused_arg(ap)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    device = torch.device(args.device)
    t0 = time.perf_counter()
    codec, source = build(args, device)
    use_fused_ops(codec, args.fused == "on")
    load_s = time.perf_counter() - t0
    qc = codec.config.quantizer
    if args.quantizers is None:
        args.quantizers = min(TTS_CODEBOOKS, qc.num_quantizers)
    hop = codec.samples_per_frame
    frame_ms = 1e3 * hop / codec.sampling_rate
    gen = torch.Generator().manual_seed(0)
    results = []
    for mode in args.modes:
        for b in args.batch:
            state = codec.new_stream_state(capacity=b)
            slots = [state.add_stream() for _ in range(b)]
            codes = torch.randint(0, qc.codebook_size, (args.quantizers, b, 1), generator=gen)
            codes = codes.to(device)
            graphed = GraphedCodecDecode(codec, state) if mode == "graphed" else None

            def step(state=state, codes=codes, slots=slots, graphed=graphed) -> None:
                # check=False: the hot path skips the value check's host sync, as an engine
                # would.
                if graphed is None:
                    codec.decode_step(state, codes, slots, check=False)
                else:
                    graphed.step(codes, slots)

            timing = time_calls(step, device, args.warmup, args.frames)
            if graphed is not None:  # the kernels one replay runs (CUDA: profiler)
                key = (graphed.bucket(b), args.quantizers)
                timing["gpu_kernels_per_replay"] = gpu_kernels(
                    lambda g=graphed, k=key: g.graphs.launch(k), device
                )
            per_frame = timing["median_ms"]
            results.append(
                {
                    "mode": mode,
                    "batch": b,
                    **timing,
                    "ms_per_stream_frame": per_frame / b,
                    "rtf": per_frame / frame_ms,  # < 1: the batch keeps up with real time
                    "realtime_streams": b * frame_ms / per_frame,
                    "state_mib_per_stream": state.bytes_per_stream() / 2**20,
                }
            )
            del state, graphed
    result = {
        "benchmark": "codec_streaming_decode",
        "source": source,
        "parameters": codec.num_parameters(),
        "dtype": args.dtype,
        "fused": args.fused == "on",
        "frame_ms": frame_ms,
        "quantizers": args.quantizers,
        "load_s": load_s,
        "env": environment(device),
        "results": results,
    }
    summary = "codec decode step: " + ", ".join(
        f"{r['mode']} B={r['batch']}: {r['median_ms']:.2f} ms/frame (RTF {r['rtf']:.3f})"
        for r in results
    )
    emit(result, args.out, f"{summary} [{source}, {args.dtype}, {device}, fused {args.fused}]")


if __name__ == "__main__":
    main()
