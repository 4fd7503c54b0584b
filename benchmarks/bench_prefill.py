"""Turn-N prefill and time to first audio (TTFA) on top of a long history, one session.

A later turn appends only its own rows (the user's audio rows and transcript, the assistant
header and text lead) to the session's cached history, so its cost is those rows attending
over everything before them. TTFA, as the engine pays it once a turn's text is in, is that
prefill + the turn's first frame (local transformer + sampling) + the codec's first frame.

Each part runs as the engine runs it (``--graphed on``, the default): the prefill chunk
through its graph bucket (``GraphedPrefill``; a chunk no bucket holds runs eagerly, reported
as ``prefill_path``), the first frame through ``GraphedFrameStep`` and the codec frame through
``GraphedCodecDecode``, replayed as CUDA graphs on a GPU (the padded buffers eagerly on a
CPU). ``--graphed off`` times the plain eager calls.

The cached history is a stand-in (the slot's length is set; values do not change the cost).

    python benchmarks/bench_prefill.py                                  # tiny model + codec
    python benchmarks/bench_prefill.py --real-size --random-weights --device cuda \\
        --dtype bfloat16 --history 1000 8000 30000 --turn-rows 20 80
"""

from __future__ import annotations

import argparse

import torch
from _common import emit, environment, time_calls
from _setup import DTYPES, build_codec, build_model

from moss_pipecat.model import BatchSampling, SamplingParams
from moss_pipecat.model.graphs import GraphedFrameStep, GraphedPrefill
from moss_pipecat.model.sampling import NoiseKeys

TARGETS_MS = {"prefill": 30.0, "ttfa": 40.0}  # H100, bf16, real sizes (issue #8)


def measure(model, codec, H: int, T: int, args, device: torch.device, gen) -> dict:
    """Times a T-row turn prefill over H cached positions, its first frame and codec frame."""
    cfg = model.cfg
    sampling = BatchSampling.from_params([SamplingParams()], device)
    keys = NoiseKeys.from_ints([0], [0], device)  # the engine's noise: made in the step
    slot = torch.zeros(1, dtype=torch.int64, device=device)
    state = codec.new_stream_state(1) if codec is not None else None
    stream = state.add_stream() if state is not None else None
    cache = model.new_cache(1, H + T + 1)  # + the spare position graphed steps write padding to
    rows = torch.empty(1, T, cfg.channels, dtype=torch.int64)
    rows[..., 0] = torch.randint(0, cfg.text_pad, (1, T), generator=gen)
    rows[..., 1:] = torch.randint(0, cfg.audio_pad_token, (1, T, cfg.rvq), generator=gen)
    rows = rows.to(device)
    hidden: list[torch.Tensor] = []
    graphed = args.graphed == "on"
    prefill_graph = GraphedPrefill(model, cache) if graphed else None
    frame_graph = GraphedFrameStep(model, window=50, max_batch=1) if graphed else None
    codec_graph = None
    if graphed and codec is not None:
        from moss_pipecat.codec.graphs import GraphedCodecDecode

        codec_graph = GraphedCodecDecode(codec, state)
    paths: set[str] = set()

    def prefill() -> None:
        cache.lengths[0] = H  # back to the same history every call
        out = None
        if prefill_graph is not None:
            out = prefill_graph.step(rows, [0], [T], H + T)
        paths.add("eager" if out is None else "graphed")
        hidden[:] = [model.prefill(rows, cache, slot) if out is None else out]

    def first_frame() -> torch.Tensor:
        if frame_graph is not None:
            return frame_graph.step(hidden[0], sampling, None, keys)
        return model.generate_frame(hidden[0], sampling, None, keys)

    def codec_frame(frame: torch.Tensor) -> None:
        if codec is not None:
            codes = frame.clamp(0, 1023).T[:, :, None]  # [Q, 1, 1]
            if codec_graph is not None:
                codec_graph.step(codes, [stream])
            else:
                codec.decode_step(state, codes, [stream], check=False)

    def ttfa() -> None:
        prefill()
        codec_frame(first_frame())

    t_prefill = time_calls(prefill, device, args.warmup, args.iters)
    t_frame = time_calls(first_frame, device, args.warmup, args.iters)
    frame = first_frame().clone()
    t_codec = time_calls(lambda: codec_frame(frame), device, 1, args.iters)
    t_ttfa = time_calls(ttfa, device, args.warmup, args.iters)
    return {
        "history": H,
        "turn_rows": T,
        "prefill_path": "/".join(sorted(paths)),
        "prefill_ms": t_prefill["median_ms"],
        "first_frame_ms": t_frame["median_ms"],
        "codec_frame_ms": t_codec["median_ms"] if codec is not None else None,
        "ttfa_ms": t_ttfa["median_ms"],
        "ttfa_ms_p90": t_ttfa["p90_ms"],
        "prefill_within_target": t_prefill["median_ms"] <= TARGETS_MS["prefill"],
        "ttfa_within_target": t_ttfa["median_ms"] <= TARGETS_MS["ttfa"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="TTS checkpoint dir or hub id (default: tiny fixture)")
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--no-codec", action="store_true")
    ap.add_argument("--history", type=int, nargs="+", default=[0, 256, 2048])
    ap.add_argument(
        "--turn-rows", type=int, nargs="+", default=[20, 80], help="rows the new turn appends"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument(
        "--graphed",
        choices=["on", "off"],
        default="on",
        help="time the engine's graphed steps (prefill chunk, first frame, codec frame)",
    )
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = build_model(args, device, dtype)
    codec = build_codec(args, device, dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        results = [
            measure(model, codec, H, T, args, device, gen)
            for H in args.history
            for T in args.turn_rows
        ]
    out = {
        "benchmark": "prefill_ttfa",
        "model": args.checkpoint or ("real-size random" if args.real_size else "tiny fixture"),
        "codec": None if codec is None else ("real-size random" if args.real_size else "tiny"),
        "dtype": args.dtype,
        "graphed": args.graphed == "on",
        "cuda_graphs": args.graphed == "on" and device.type == "cuda",
        "targets_ms": TARGETS_MS,
        "env": environment(device),
        "results": results,
    }
    worst = max(results, key=lambda r: r["ttfa_ms"])
    emit(
        out,
        args.out,
        f"prefill/TTFA: worst TTFA {worst['ttfa_ms']:.1f} ms (prefill {worst['prefill_ms']:.1f} "
        f"ms of {worst['turn_rows']} rows over {worst['history']} history, "
        f"{worst['prefill_path']}) ({args.device}, {args.dtype}, graphed {args.graphed})",
    )


if __name__ == "__main__":
    main()
