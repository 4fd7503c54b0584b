"""Triton kernels of the fused ops (``moss_pipecat.model.kernels``), one kernel per call.

``register()`` puts them under the ops as their CUDA implementation and records them in
``SINGLE_KERNEL`` (the kernel count then counts each call once). Each kernel rounds where
the op's formula rounds (to the activation dtype after the norm, after each product, after
each sum), so it differs from the formula only where the two compute a reduction in another
order or a transcendental (``exp``, ``rsqrt``) to another last bit. They are checked against
the formulas on a CPU with Triton's interpreter (``TRITON_INTERPRET=1``,
``tests/model/test_fused_triton.py``) and on CUDA by ``tests/gpu/test_fused_cuda.py``; they are
not yet measured on a GPU.

Importing this module needs ``triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moss_pipecat.model import kernels


@triton.jit
def _rnd(v, dtype: tl.constexpr):
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


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < inter
    gate = tl.load(x_ptr + row * 2 * inter + cols, mask=keep).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * inter + inter + cols, mask=keep)
    silu = _rnd(gate / (1.0 + tl.exp(-gate)), up.dtype)  # rounded as F.silu rounds
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * inter + cols, _rnd(out, up.dtype), mask=keep)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``kernels.silu_mul_formula`` in one kernel."""
    x = gate_up.contiguous()
    inter = x.shape[-1] // 2
    out = x.new_empty((*x.shape[:-1], inter))
    rows = out.numel() // inter
    block = min(1024, triton.next_power_of_2(inter))
    _silu_mul_kernel[(rows, triton.cdiv(inter, block))](x, out, inter, BLOCK=block)
    return out


@triton.jit
def _normed(x, w, dim, eps, WEIGHT_INSIDE: tl.constexpr):
    """One row x (float32, zero past ``dim``) normed and scaled by w, rounded as
    ``kernels.scaled_rms_norm`` rounds (in w's dtype)."""
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / dim + eps)
    if WEIGHT_INSIDE:  # float32 with one weight row: F.rms_norm's own weight
        return x * rstd * w.to(tl.float32)
    normed = _rnd(x * rstd, w.dtype)
    return normed * w.to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr, y_ptr, w_ptr, sum_ptr, out_ptr, dim, w_rows, eps,
    ADD: tl.constexpr, WEIGHT_INSIDE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    keep = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=keep, other=0.0)
    dt = x.dtype
    if ADD:  # the residual sum, rounded to the activation dtype before it is normed
        y = tl.load(y_ptr + row * dim + cols, mask=keep, other=0.0)
        x = _rnd(x.to(tl.float32) + y.to(tl.float32), dt)
        tl.store(sum_ptr + row * dim + cols, x, mask=keep)
    w = tl.load(w_ptr + (row % w_rows) * dim + cols, mask=keep, other=0.0)
    out = _normed(x.to(tl.float32), w, dim, eps, WEIGHT_INSIDE)
    tl.store(out_ptr + row * dim + cols, _rnd(out, dt), mask=keep)


def _norm(x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float):
    x = x.contiguous()
    dim = x.shape[-1]
    out = torch.empty_like(x)
    total = torch.empty_like(x) if y is not None else out
    w_rows = 1 if weight.dim() == 1 else weight.shape[0]
    inside = weight.dim() == 1 and x.dtype == torch.float32
    _rms_norm_kernel[(x.numel() // dim,)](
        x, x if y is None else y.contiguous(), weight.contiguous(), total, out,
        dim, w_rows, eps,
        ADD=y is not None, WEIGHT_INSIDE=inside, BLOCK=triton.next_power_of_2(dim),
    )  # fmt: skip
    return total, out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``kernels.scaled_rms_norm`` in one kernel (per-row weights: rows of the
    second-to-last axis, which must then be the weight's row count)."""
    return _norm(x, None, weight, eps)[1]


def add_rms_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.add_rms_norm_formula`` in one kernel."""
    return _norm(x, y, weight, eps)


@triton.jit
def _norm_rope_kernel(
    qk_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, T, heads, eps,
    s_cb, s_ct, HD: tl.constexpr,
):  # fmt: skip
    # one program per (batch, position, head); qk [B, T, heads, HD] -> out [B, heads, T, HD]
    pid = tl.program_id(0)
    h = pid % heads
    t = (pid // heads) % T
    b = pid // (heads * T)
    cols = tl.arange(0, HD)
    half = HD // 2
    swap = (cols + half) % HD  # [x2, x1]
    base = ((b * T + t) * heads + h) * HD
    x = tl.load(qk_ptr + base + cols)
    xs = tl.load(qk_ptr + base + swap)
    w = tl.load(w_ptr + h * HD + cols)
    ws = tl.load(w_ptr + h * HD + swap)
    x32, xs32 = x.to(tl.float32), xs.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / HD + eps)
    dt = x.dtype
    n = _rnd(_rnd(x32 * rstd, dt).to(tl.float32) * w.to(tl.float32), dt)
    ns = _rnd(_rnd(xs32 * rstd, dt).to(tl.float32) * ws.to(tl.float32), dt)
    table = b * s_cb + t * s_ct + cols  # cos/sin [B or 1, 1, T, HD], broadcast over heads
    c = tl.load(cos_ptr + table).to(tl.float32)
    s = tl.load(sin_ptr + table).to(tl.float32)
    a = _rnd(n.to(tl.float32) * c, dt).to(tl.float32)
    r = _rnd(ns.to(tl.float32) * s, dt).to(tl.float32)
    tl.store(out_ptr + ((b * heads + h) * T + t) * HD + cols, _rnd(a + r, dt))


def norm_rope(
    qk: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """``kernels.norm_rope_formula`` in one kernel."""
    qk = qk.contiguous()
    B, T, heads, hd = qk.shape
    out = qk.new_empty((B, heads, T, hd))
    cos = cos.expand(cos.shape[0], 1, T, hd).contiguous()
    sin = sin.expand(sin.shape[0], 1, T, hd).contiguous()
    s_cb = 0 if cos.shape[0] == 1 else T * hd
    _norm_rope_kernel[(B * T * heads,)](
        qk, weight.contiguous(), cos, sin, out, T, heads, eps, s_cb, hd, HD=hd
    )
    return out


KERNELS = {
    "moss::rms_norm": (kernels.rms_norm, rms_norm),
    "moss::add_rms_norm": (kernels.add_rms_norm, add_rms_norm),
    "moss::norm_rope": (kernels.norm_rope, norm_rope),
    "moss::silu_mul": (kernels.silu_mul, silu_mul),
}


_registered: list[str] = []


def register() -> None:
    """These kernels become the CUDA implementations of their ops (once) and are recorded in
    ``SINGLE_KERNEL``."""
    for name, (op, kernel) in KERNELS.items():
        if name not in _registered:
            op.register_kernel("cuda")(kernel)
            _registered.append(name)
        kernels.SINGLE_KERNEL.setdefault(name, set()).add("cuda")
