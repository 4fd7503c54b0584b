"""What the Triton kernels share: rounding as torch rounds, and ``exp``/``log`` as torch's CUDA
kernels compute them. Importing this module needs ``triton``."""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

# exp/log as torch's CUDA kernels compute them (libdevice's expf/logf, not Triton's faster
# approximations); the interpreter has no libdevice, so there numpy's.
ACCURATE = os.environ.get("TRITON_INTERPRET") != "1"

# Floating-point contraction (an ``a*b + c`` compiled into one ``fma``), a launch option.
# The model's kernels run as measured on the H200, contracted (Triton's default until 3.10,
# which turns it off): pinned, so a Triton upgrade changes none of their numbers. The codec's
# run without it, so its residual sums and RoPE are the formulas' bit for bit.
CONTRACTED = {"enable_fp_fusion": True}
EXACT = {"enable_fp_fusion": False}


@triton.jit
def _exp(x, ACCURATE: tl.constexpr):
    if ACCURATE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _log(x, ACCURATE: tl.constexpr):
    if ACCURATE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def round_to(v, dtype: tl.constexpr):
    """float32 v rounded to ``dtype`` as torch rounds it (to nearest, ties to even), kept in
    float32. bf16 is rounded with integer ops on the bits: the same on a GPU and in Triton's
    interpreter (whose own float32 -> bf16 cast truncates); a store into a bf16 tensor is then
    exact."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return v.to(dtype).to(tl.float32)
