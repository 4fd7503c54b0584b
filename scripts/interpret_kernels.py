"""Every Triton kernel of the fused ops, run by Triton's interpreter as the ops' CPU
implementations: the fused model and codec against the plain ones, on the tiny fixtures.

The unit checks (tests/model/test_fused_triton.py, test_triton_attention.py,
tests/codec/test_codec_fused.py) hold each kernel against its formula on made-up tensors. This
runs them where the engine runs them: a prefill of three conversations into slots out of order,
decode steps with a padding row (its keys to its slot's spare position), the local
transformer's frame scratch, the codec's rings, the attention kernel on every call it takes
(including those not yet registered on CUDA by default: ``MOSS_ATTENTION_KERNEL``,
``MOSS_KV_WRITE_KERNEL``). The kernels round where the formulas round but may differ in a
reduction's last bit, so hidden states are compared within float rounding and frames exactly
(greedy and seeded rows: a flip would need a near-tie). Minutes, not seconds (the interpreter
runs each program in numpy): a check before a GPU session, not part of the suite.

    python scripts/interpret_kernels.py [--fixtures DIR] [--steps 2] [--frames 5]

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
from moss_pipecat.codec.graphs import GraphedCodecDecode  # noqa: E402
from moss_pipecat.model import MossTTSRealtime  # noqa: E402
from moss_pipecat.model.kernels import use_fused  # noqa: E402
from moss_pipecat.model.sampling import (  # noqa: E402
    NO_HISTORY,
    BatchSampling,
    NoiseKeys,
    SamplingParams,
)


def register_on_cpu() -> list[str]:
    """Every Triton kernel becomes its op's CPU implementation (this process only: a
    registration cannot be undone); returns the op names."""
    from moss_pipecat.codec import kernels as codec_kernels
    from moss_pipecat.codec import triton_kernels as codec_triton
    from moss_pipecat.model import kernels, triton_attention, triton_kernels

    table = {
        **triton_kernels.KERNELS,
        **triton_kernels.KV_WRITE_KERNELS,
        "moss::attention": (kernels.attention, triton_attention.attention_op),
        **codec_triton.KERNELS,
        "moss::codec_attention": (codec_kernels.attention, triton_attention.codec_attention_op),
    }
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


def model_run(model: MossTTSRealtime, rows: torch.Tensor, steps: int):
    """Prefill slots 2, 0, 3 (9, 14, 5 rows), then ``steps`` decode steps of them and a
    padding row (slot 1, appends nothing), greedy and seeded rows; frames, hidden states,
    cache."""
    cfg = model.cfg
    cache = model.new_cache(5, 64)
    lengths = [9, 14, 5]
    T = max(lengths)
    batch = torch.stack([torch.cat((rows[:n], rows[:1].expand(T - n, -1))) for n in lengths])
    hidden = [model.prefill(batch, cache, torch.tensor([2, 0, 3]), torch.tensor(lengths))]
    params = [SamplingParams.greedy_decoding(), SamplingParams(), SamplingParams(top_k=5)]
    sampling = BatchSampling.from_params([*params, SamplingParams()])
    frames = torch.full((4, cfg.rvq), cfg.audio_pad_token)
    history = torch.full((4, 8, cfg.rvq), NO_HISTORY)
    slots, n_new = torch.tensor([2, 0, 3, 1]), torch.tensor([1, 1, 1, 0])
    out = []
    for step in range(steps):
        step_rows = torch.cat((torch.full((4, 1), cfg.text_pad), frames), dim=1)[:, None]
        noise = NoiseKeys.from_ints([10, 11, 12, 13], [step] * 4)
        frames, h = model.decode_step(
            step_rows, cache, slots, 64, sampling, history, noise, n_new, spare_writes=True
        )
        history = torch.cat((history[:, 1:], frames[:, None]), dim=1)
        out.append(frames)
        hidden.append(h)
    return out, hidden, cache


def codec_run(codec: MossAudioCodec, codes: torch.Tensor) -> torch.Tensor:
    """Streams of different ages through the padded codec frame: two, a third from frame 2."""
    state = codec.new_stream_state(4)
    graphed = GraphedCodecDecode(codec, state, batch_buckets=(1, 2, 4))  # prepared when hit
    state.add_streams(2)
    out = []
    for f in range(codes.shape[2]):
        if f == 2:
            state.add_stream()
        slots = [0, 1, 2] if f >= 2 else [0, 1]
        out.append(graphed.step(codes[:, slots, f], slots).flatten())
    return torch.cat(out)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    shared = REPO.parent / "shared" / "fixtures" / "moss_tiny"
    ap.add_argument("--fixtures", default=os.environ.get("MOSS_FIXTURES", str(shared)))
    ap.add_argument("--steps", type=int, default=2, help="decode steps after the prefill")
    ap.add_argument("--frames", type=int, default=5, help="codec frames")
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
        plain = model_run(model, rows, args.steps), codec_run(codec, codes)
        ops = register_on_cpu()
        calls = AttentionCalls()
        use_fused(model, True)
        use_fused(codec, True)
        fused = model_run(model, rows, args.steps), codec_run(codec, codes)
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
