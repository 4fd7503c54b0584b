"""The codec through its fused ops (``moss_pipecat.codec.kernels``, ``use_fused``) decodes the
plain codec's PCM bit for bit on a CPU (float32 and bf16): the one-frame streaming step,
padded (what CUDA graphs replay) and eager, for streams of different ages, and the whole
sequence decode; and the real codec frame counts <= 900 kernels with the ops' device
kernels (1,520 plain)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from moss_pipecat.codec import MossAudioCodec, pcm16_bytes
from moss_pipecat.codec.graphs import GraphedCodecDecode
from moss_pipecat.codec.kernels import FORMULAS
from moss_pipecat.model.kernels import SINGLE_KERNEL, Fusable, use_fused
from moss_pipecat.testing.kernels import codec_frame_kernels

from ..fixture_facts import tts_rvq

FRAMES = 7


class _OpNames(TorchDispatchMode):
    """The names of the ops run inside (custom ops once, by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def _decode_all(codec: MossAudioCodec, codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """PCM of ``codes [Q, 3, FRAMES]``: stream 2 joins at frame 3 and stream 0 pauses at frame
    5 (rows of other ages side by side), through the padded step and the eager step; and the
    whole sequence decode of stream 0."""
    eager, padded = codec.new_stream_state(4), codec.new_stream_state(4)
    graphed = GraphedCodecDecode(codec, padded, batch_buckets=(1, 2, 4), use_cuda_graphs=False)
    out = {"eager": [], "padded": []}
    for f in range(FRAMES):
        if f == 0:
            eager.add_streams(2), padded.add_streams(2)
        if f == 3:
            eager.add_stream(), padded.add_stream()
        slots = [s for s in (0, 1, 2) if not (s == 2 and f < 3) and not (s == 0 and f == 5)]
        c = codes[:, slots, f]
        out["eager"].append(codec.decode_step(eager, c[:, :, None], slots).flatten())
        out["padded"].append(graphed.step(c, slots).flatten().clone())
    pcm = {k: torch.cat(v) for k, v in out.items()}
    pcm["full"] = codec.decode(codes[:, :1])[0, 0]
    return pcm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_codec_decodes_the_plain_codecs_pcm(
    codec_dir: Path, realtime_dir: Path, dtype
) -> None:
    codec = MossAudioCodec.from_pretrained(codec_dir, dtype=dtype)
    size = codec.config.quantizer.codebook_size
    shape = (tts_rvq(realtime_dir), 3, FRAMES)
    codes = torch.randint(0, size, shape, generator=torch.Generator().manual_seed(5))
    pcm = {}
    for fused in (False, True):
        use_fused(codec, fused)
        assert all(m.fused == fused for m in codec.modules() if isinstance(m, Fusable))
        with _OpNames() as ops:
            pcm[fused] = _decode_all(codec, codes)
        ran = {op.replace("::", ".") + ".default" for op in FORMULAS} <= ops.names
        assert ran == fused  # the fused path runs the ops (each its formula on a CPU)
    for k in ("eager", "padded", "full"):
        assert torch.equal(pcm[True][k], pcm[False][k]), k
        assert pcm16_bytes(pcm[True][k]) == pcm16_bytes(pcm[False][k])


def test_real_codec_frame_kernels_fused() -> None:
    """The real codec frame (bf16, meta) through the fused ops, each counted once (as where
    CUDA has their Triton kernels); the plain frame's count stays."""
    assert codec_frame_kernels(torch.bfloat16).total == 1520
    saved = {k: set(v) for k, v in SINGLE_KERNEL.items()}
    try:
        SINGLE_KERNEL.update({op: {"cuda"} for op in FORMULAS})
        k = codec_frame_kernels(torch.bfloat16, fused=True)
    finally:
        SINGLE_KERNEL.clear()
        SINGLE_KERNEL.update(saved)
    assert k.total == 780 <= 900
    # 68 decoder layers (32 + 3 x 12) in 4 stages: each residual add with the norm after it
    # (the last layer's second add has no norm after it), RoPE + ring writes once per layer
    assert k.by_op["moss.codec_add_layer_norm.default"] == 68 * 2 - 4
    assert k.by_op["moss.codec_rope_write.default"] == 68
    assert k.by_op["aten.native_layer_norm"] == 4  # each stage's first norm
    assert "aten.scatter_" not in k.by_op and "aten.flip" not in k.by_op
