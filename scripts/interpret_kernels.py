"""Every Triton kernel of the fused ops, run by Triton's interpreter as the ops' CPU
implementations: the fused model and codec against the plain ones, on the tiny fixtures.

The unit checks (tests/model/test_fused_triton.py, test_triton_attention.py,
tests/codec/test_codec_fused.py) hold each kernel against its formula on made-up tensors. This
runs them where the engine runs them: a prefill of three conversations into slots out of order,
decode steps with a padding row (its keys to its slot's spare position), the local
transformer's frame scratch, the codec's rings, the attention kernel on every call it takes
(including those not yet registered on CUDA by default: ``MOSS_ATTENTION_KERNEL``,
``MOSS_KV_WRITE_KERNEL``), the backbone's attention on the route a GPU takes (the whole slot,
an additive mask) with a cache as long as ``--max-len``, split across programs as an H200
would. The kernels round where the formulas round but may differ in a reduction's last bit,
so hidden states are compared within float rounding and frames exactly (greedy and seeded
rows: a flip would need a near-tie). Minutes, not seconds (the interpreter
runs each program in numpy): a check before a GPU session, not part of the suite.

    python scripts/interpret_kernels.py [--fixtures DIR] [--steps 2] [--frames 5] [--max-len 256]

Prints JSON; exits 1 if a frame differs, or PCM by more than one int16 step.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton's kernels are defined

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moss_pipecat.codec import MossAudioCodec, pcm16  # noqa: E402
from moss_pipecat.model import MossTTSRealtime  # noqa: E402
from moss_pipecat.model.kernels import use_fused  # noqa: E402
from moss_pipecat.testing.kernel_compile import every_kernel  # noqa: E402
from moss_pipecat.testing.kernel_drive import codec_run, model_run  # noqa: E402

H200_SMS = 132


def register_on_cpu() -> list[str]:
    """Every Triton kernel becomes its op's CPU implementation (this process only: a
    registration cannot be undone); returns the op names."""
    table = every_kernel()
    for op, kernel in table.values():
        op.register_kernel("cpu")(kernel)
    return sorted(table)


class AttentionCalls:
    """Counts the calls the attention kernel takes (and leaves to the formula)."""

    def __init__(self) -> None:
        from moss_pipecat.model import triton_attention

        self.taken = self.left = 0
        self._takes = triton_attention.takes
        triton_attention.takes = self._count

    def _count(self, q, k, mask) -> bool:
        taken = self._takes(q, k, mask)
        self.taken += taken
        self.left += not taken
        return taken


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    shared = REPO.parent / "shared" / "fixtures" / "moss_tiny"
    ap.add_argument("--fixtures", default=os.environ.get("MOSS_FIXTURES", str(shared)))
    ap.add_argument("--steps", type=int, default=2, help="decode steps after the prefill")
    ap.add_argument("--frames", type=int, default=5, help="codec frames")
    ap.add_argument(
        "--max-len", type=int, default=256,
        help="cache positions a slot (the backbone attends all of them, as on a GPU)",
    )  # fmt: skip
    args = ap.parse_args()
    from safetensors.torch import load_file

    fixtures = Path(args.fixtures)
    model = MossTTSRealtime.from_pretrained(fixtures / "realtime")
    codec = MossAudioCodec.from_pretrained(fixtures / "codec")
    rows = load_file(fixtures / "realtime" / "golden.safetensors")["session.rows"]
    rows = rows.repeat(-(-14 // rows.shape[0]), 1)
    q = codec.config.quantizer
    codes = torch.randint(
        0, q.codebook_size, (q.num_quantizers, 3, args.frames),
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    with torch.inference_mode():
        plain = model_run(model, rows, args.steps, args.max_len), codec_run(codec, codes)
        ops = register_on_cpu()
        model.language_model.cpu_shortcuts = False  # its attention as on a GPU (additive mask)
        from moss_pipecat.model import triton_attention

        # The split of a long cache an H200 makes (off CUDA the kernel would make none).
        triton_attention.programs_wanted = lambda device: 2 * H200_SMS
        calls = AttentionCalls()
        use_fused(model, True)
        use_fused(codec, True)
        fused = model_run(model, rows, args.steps, args.max_len), codec_run(codec, codes)
    (frames_a, hidden_a, cache_a), pcm_a = plain
    (frames_b, hidden_b, cache_b), pcm_b = fused
    mismatched = sum(int((a != b).sum()) for a, b in zip(frames_a, frames_b, strict=True))
    hidden_diff = max(max_diff(a, b) for a, b in zip(hidden_a, hidden_b, strict=True))
    kv_diff = max(max_diff(cache_a.k, cache_b.k), max_diff(cache_a.v, cache_b.v))
    pcm_steps = int((pcm16(pcm_a).int() - pcm16(pcm_b).int()).abs().max())
    report = {
        "kernels_interpreted": ops,
        "attention_kernel_calls": {"taken": calls.taken, "left_to_the_formula": calls.left},
        "model": {
            "codes_compared": sum(f.numel() for f in frames_a),
            "codes_mismatched": mismatched,
            "hidden_max_abs_diff": hidden_diff,
            "hidden_max_abs": max(float(h.abs().max()) for h in hidden_a),
            "kv_max_abs_diff": kv_diff,
            "lengths_equal": bool(torch.equal(cache_a.lengths, cache_b.lengths)),
        },
        "codec": {
            "samples": pcm_a.numel(),
            "pcm_max_abs_diff": max_diff(pcm_a, pcm_b),
            "pcm16_max_step_diff": pcm_steps,
        },
    }
    print(json.dumps(report, indent=2))
    ok = mismatched == 0 and report["model"]["lengths_equal"] and pcm_steps <= 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
