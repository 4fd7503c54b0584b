"""Every Triton kernel compiled for a GPU, on a machine without one.

Triton's compiler and ptxas run on a CPU (``moss_pipecat.testing.kernel_compile``). This
runs the fused model and codec at the real sizes (one layer a stack: every layer launches the
same kernels) in the GPU's dtypes where the engine runs them (``testing.kernel_drive``: a
prefill into slots out of order, decode steps with a padding row over a short and a long cache,
so the attention kernel's one-pass and split paths, the local transformer's frame scratch,
codec streams of different ages) with every op's kernel compiled for each architecture asked
for (the kernels not yet on by default included) and its formula giving the values. The
interpreter (``scripts/interpret_kernels.py``) checks what the kernels compute; this checks
that the GPU compiler takes each of them with the arguments the engine gives them, and what
each costs in registers, spills and shared memory, before a GPU session spends its minutes.

    python scripts/compile_kernels.py [--arch 90 80] [--dtype bfloat16 float32] [--out F]

The compiler is this machine's Triton (its version is in the JSON; a GPU machine's may be
older). Prints JSON; exits 1 if a kernel does not compile, a launch would be refused (shared
memory, registers), or an op with a kernel was never reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# A cache of its own unless given: every kernel really compiled here (and its seconds those of a
# cold start), the user's cache left as it was.
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="compile_kernels_"))

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict  # noqa: E402
from moss_pipecat.model import MossTTSRealtime, MossTTSRealtimeConfig  # noqa: E402
from moss_pipecat.model.kernels import use_fused  # noqa: E402
from moss_pipecat.testing.kernel_compile import (  # noqa: E402
    SHARED_LIMIT,
    compile_only,
    register_compiling_on_cpu,
)
from moss_pipecat.testing.kernel_drive import codec_run, model_run, random_rows  # noqa: E402

# Multiprocessors of the usual GPU of each architecture (A100, A10, L4, H100/H200 SXM, B200,
# RTX 5090): how many programs the attention kernel splits a long cache into depends on it.
SM_COUNT = {80: 108, 86: 72, 89: 58, 90: 132, 100: 148, 120: 170}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def one_layer_model(dtype: torch.dtype) -> MossTTSRealtime:
    cfg = MossTTSRealtimeConfig.real()
    cfg = dataclasses.replace(
        cfg,
        language=dataclasses.replace(cfg.language, num_hidden_layers=1),
        local=dataclasses.replace(cfg.local, num_hidden_layers=1),
    )
    model = MossTTSRealtime(cfg).to(dtype)
    return model.init_random_().eval().requires_grad_(False)


def one_layer_codec(dtype: torch.dtype) -> MossAudioCodec:
    config = real_config_dict()
    for stage in (*config["encoder_kwargs"], *config["decoder_kwargs"]):
        if "num_layers" in stage:
            stage["num_layers"] = 1
    return MossAudioCodec.random(CodecConfig.from_dict(config), dtype, torch.device("cpu"))


def drive(model: MossTTSRealtime, codec: MossAudioCodec) -> None:
    rows = random_rows(model, 14)
    q = codec.config.quantizer
    codes = torch.randint(
        0, q.codebook_size, (q.num_quantizers, 3, 3), generator=torch.Generator().manual_seed(3)
    )
    with torch.inference_mode():
        for max_len in (64, 1024):  # one key block (one pass) / many (split across programs)
            model_run(model, rows, steps=1, max_len=max_len)
        codec_run(codec, codes)


def summary(compiler, arch: int) -> dict:
    """Per kernel: its largest registers / spills / shared memory over its specializations,
    and each specialization (its constexpr arguments, including the JIT's ints equal to 1,
    and its pointers' element types)."""
    by_name: dict[str, dict] = {}
    for k in sorted(compiler.kernels.values(), key=lambda k: k.name):
        s = by_name.setdefault(k.name, {"max_registers": 0, "max_spilled_bytes": 0,
                                        "max_shared_bytes": 0, "specializations": []})  # fmt: skip
        s["max_registers"] = max(s["max_registers"], k.registers or 0)
        s["max_spilled_bytes"] = max(s["max_spilled_bytes"], k.spilled_bytes or 0)
        s["max_shared_bytes"] = max(s["max_shared_bytes"], k.shared_bytes)
        s["specializations"].append(
            {
                "constants": dict(k.constants),
                "pointer_dtypes": list(k.pointer_dtypes),
                "num_warps": k.num_warps,
                "registers": k.registers,
                "spilled_bytes": k.spilled_bytes,
                "shared_bytes": k.shared_bytes,
                "seconds": round(k.seconds, 2),
            }
        )
    return {
        "sm_count_assumed": SM_COUNT[arch],
        "kernels": by_name,
        "compile_seconds": round(sum(k.seconds for k in compiler.kernels.values()), 1),
        "failures": [dataclasses.asdict(f) for f in compiler.failures.values()],
        "problems": compiler.problems(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_LIMIT))
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"], choices=sorted(DTYPES))
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    import triton

    from moss_pipecat.model import triton_attention

    torch.manual_seed(0)
    t0 = time.perf_counter()
    calls = register_compiling_on_cpu()
    built = [(one_layer_model(DTYPES[d]), one_layer_codec(DTYPES[d])) for d in args.dtype]
    for model, codec in built:
        use_fused(model, True)
        use_fused(codec, True)
        model.language_model.cpu_shortcuts = False  # its attention as on a GPU (additive mask)
    report: dict = {"triton": triton.__version__, "dtypes": args.dtype, "archs": {}}
    for arch in args.arch:
        # The split the attention kernel makes on that GPU (off CUDA it would make none).
        triton_attention.programs_wanted = lambda device, arch=arch: 2 * SM_COUNT[arch]
        with compile_only(arch) as compiler:
            for model, codec in built:
                drive(model, codec)
        report["archs"][f"sm_{arch}"] = summary(compiler, arch)
    report["op_calls"] = dict(sorted(calls.items()))
    report["ops_not_reached"] = sorted(name for name, n in calls.items() if n == 0)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    bad = report["ops_not_reached"] or any(a["problems"] for a in report["archs"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
