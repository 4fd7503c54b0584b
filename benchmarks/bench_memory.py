"""Memory per session: KV bytes per position, per slot and per KV-pool layout.

Builds the real (or tiny) model and its KV caches on the ``meta`` device, so the figures come
from the actual tensor shapes without allocating them, and answers: how many sessions of which
context lengths fit a GPU after the weights?

    python benchmarks/bench_memory.py --real-size --gpu-gib 80 --pools 128x2048 24x8192 2x32768
"""

from __future__ import annotations

import argparse

import torch
from _common import emit, fixtures_root
from _setup import DTYPES

from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict
from moss_pipecat.model import KVCache, MossTTSRealtime, MossTTSRealtimeConfig

GIB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--real-size", action="store_true", help="real architecture (else tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--gpu-gib", type=float, default=80.0, help="device memory to plan for")
    ap.add_argument("--reserve-gib", type=float, default=6.0, help="activations, graphs, CUDA")
    ap.add_argument(
        "--pools", nargs="+", default=["128x2048", "24x8192", "2x32768"], help="SLOTSxCAPACITY"
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    if args.real_size:
        cfg = MossTTSRealtimeConfig.real()
        codec_cfg = CodecConfig.from_dict(real_config_dict())
    else:
        cfg = MossTTSRealtime.from_pretrained(fixtures_root() / "realtime").cfg
        codec_cfg = MossAudioCodec.from_pretrained(fixtures_root() / "codec").config
    with torch.device("meta"):
        model = MossTTSRealtime(cfg).to(dtype)
        codec = MossAudioCodec(codec_cfg).to(dtype)  # (its small quantizer stays fp32 in use)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    codec_bytes = sum(p.numel() * p.element_size() for p in codec.parameters())
    lang = cfg.language
    pools = []
    for spec in args.pools:
        n, cap = (int(x) for x in spec.lower().split("x"))
        cache = KVCache(
            lang.num_hidden_layers, n, cap, lang.num_key_value_heads, lang.head_dim, dtype, "meta"
        )
        nbytes = cache.k.numel() * cache.k.element_size() * 2
        pools.append(
            {
                "slots": n,
                "capacity_positions": cap,
                "capacity_minutes": cap * 0.08 / 60,
                "bytes": nbytes,
                "gib": nbytes / GIB,
                "mib_per_slot": nbytes / n / 1024**2,
            }
        )
    per_position = 2 * lang.num_hidden_layers * lang.num_key_value_heads * lang.head_dim
    per_position *= torch.empty((), dtype=dtype).element_size()
    kv_total = sum(p["bytes"] for p in pools)
    free = args.gpu_gib * GIB - weights - codec_bytes - args.reserve_gib * GIB
    out = {
        "benchmark": "memory",
        "model": "real-size" if args.real_size else "tiny fixture",
        "dtype": args.dtype,
        "tts_weights_gib": weights / GIB,
        "codec_weights_gib": codec_bytes / GIB,
        "kv_bytes_per_position": per_position,
        "kv_mib_per_minute_of_conversation": per_position * 750 / 1024**2,
        "kv_gib_uniform_32k_slot": per_position * 32768 / GIB,
        "pools": pools,
        "pools_total_gib": kv_total / GIB,
        "sessions": sum(p["slots"] for p in pools),
        "fits_gpu": kv_total <= free,
        "gpu_gib": args.gpu_gib,
        "free_for_kv_gib": free / GIB,
        "uniform_32k_sessions_that_fit": int(max(free, 0) // (per_position * 32768)),
    }
    emit(
        out,
        args.out,
        f"memory: {per_position / 1024:.0f} KiB/position; {out['sessions']} sessions in "
        f"{out['pools_total_gib']:.1f} GiB of pools (fits {args.gpu_gib:g} GiB: {out['fits_gpu']}) "
        f"vs {out['uniform_32k_sessions_that_fit']} uniform 32K slots",
    )


if __name__ == "__main__":
    main()
