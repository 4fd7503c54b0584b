"""Triton kernels of the fused ops (``moss_pipecat.model.kernels``, ``fused_sampling``), one
kernel per call.

``register()`` puts them under the ops as their CUDA implementation and records them in
``SINGLE_KERNEL`` (the kernel count then counts each call once). Each kernel rounds where
the op's formula rounds (to the activation dtype after the norm, after each product, after
each sum), so it differs from the formula only where the two compute a reduction in another
order or a transcendental (``exp``, ``rsqrt``) to another last bit. They are checked against
the formulas on a CPU with Triton's interpreter (``TRITON_INTERPRET=1``,
``tests/model/test_fused_triton.py``) and on CUDA by ``tests/gpu/test_fused_cuda.py``. The
attention kernel lives in ``triton_attention`` (registered apart: see there).

Importing this module needs ``triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moss_pipecat.model import fused_sampling, kernels
from moss_pipecat.model.triton_common import ACCURATE, CONTRACTED, _exp, _log, round_to


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, inter, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < inter
    gate = tl.load(x_ptr + row * 2 * inter + cols, mask=keep).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * inter + inter + cols, mask=keep)
    silu = round_to(gate / (1.0 + _exp(-gate, ACCURATE)), up.dtype)  # rounded as F.silu rounds
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * inter + cols, round_to(out, up.dtype), mask=keep)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``kernels.silu_mul_formula`` in one kernel."""
    x = gate_up.contiguous()
    inter = x.shape[-1] // 2
    out = x.new_empty((*x.shape[:-1], inter))
    rows = out.numel() // inter
    block = min(1024, triton.next_power_of_2(inter))
    _silu_mul_kernel[(rows, triton.cdiv(inter, block))](
        x, out, inter, BLOCK=block, ACCURATE=ACCURATE, **CONTRACTED
    )
    return out


@triton.jit
def _normed(x, w, dim, eps, WEIGHT_INSIDE: tl.constexpr):
    """One row x (float32, zero past ``dim``) normed and scaled by w, rounded as
    ``kernels.scaled_rms_norm`` rounds (in w's dtype)."""
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / dim + eps)
    if WEIGHT_INSIDE:  # float32 with one weight row: F.rms_norm's own weight
        return x * rstd * w.to(tl.float32)
    normed = round_to(x * rstd, w.dtype)
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
        x = round_to(x.to(tl.float32) + y.to(tl.float32), dt)
        tl.store(sum_ptr + row * dim + cols, x, mask=keep)
    w = tl.load(w_ptr + (row % w_rows) * dim + cols, mask=keep, other=0.0)
    out = _normed(x.to(tl.float32), w, dim, eps, WEIGHT_INSIDE)
    tl.store(out_ptr + row * dim + cols, round_to(out, dt), mask=keep)


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
        ADD=y is not None, WEIGHT_INSIDE=inside, BLOCK=triton.next_power_of_2(dim), **CONTRACTED,
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
def _norm_rope_row(x_ptr, w_ptr, cos_ptr, sin_ptr, hd, eps, BLOCK: tl.constexpr):
    """One head's row of q or k (at ``x_ptr``) normed by its weight row and rotated, rounded
    where ``kernels.norm_rope_formula`` rounds; float32 holding values of the row's dtype."""
    cols = tl.arange(0, BLOCK)
    keep = cols < hd
    swap = (cols + hd // 2) % hd  # [x2, x1]
    x = tl.load(x_ptr + cols, mask=keep, other=0.0)
    xs = tl.load(x_ptr + swap, mask=keep, other=0.0)
    w = tl.load(w_ptr + cols, mask=keep, other=0.0)
    ws = tl.load(w_ptr + swap, mask=keep, other=0.0)
    x32, xs32 = x.to(tl.float32), xs.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / hd + eps)
    dt = x.dtype
    n = round_to(round_to(x32 * rstd, dt).to(tl.float32) * w.to(tl.float32), dt)
    ns = round_to(round_to(xs32 * rstd, dt).to(tl.float32) * ws.to(tl.float32), dt)
    c = tl.load(cos_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    a = round_to(n.to(tl.float32) * c, dt).to(tl.float32)
    r = round_to(ns.to(tl.float32) * s, dt).to(tl.float32)
    return round_to(a + r, dt)


@triton.jit
def _norm_rope_kernel(
    qk_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, T, heads, hd, eps, s_cb, s_ct,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # one program per (batch, position, head); qk [B, T, heads, hd] -> out [B, heads, T, hd]
    pid = tl.program_id(0)
    h = pid % heads
    t = (pid // heads) % T
    b = pid // (heads * T)
    cols = tl.arange(0, BLOCK)
    table = b * s_cb + t * s_ct  # cos/sin [B or 1, 1, T, hd], broadcast over heads
    out = _norm_rope_row(
        qk_ptr + ((b * T + t) * heads + h) * hd, w_ptr + h * hd, cos_ptr + table,
        sin_ptr + table, hd, eps, BLOCK,
    )  # fmt: skip
    tl.store(out_ptr + ((b * heads + h) * T + t) * hd + cols, out, mask=cols < hd)


def _tables(cos: torch.Tensor, sin: torch.Tensor, T: int, hd: int):
    """cos/sin [B or 1, 1, T, hd] made contiguous, and their batch stride (0 if shared)."""
    cos = cos.expand(cos.shape[0], 1, T, hd).contiguous()
    sin = sin.expand(sin.shape[0], 1, T, hd).contiguous()
    return cos, sin, 0 if cos.shape[0] == 1 else T * hd


def norm_rope(
    qk: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """``kernels.norm_rope_formula`` in one kernel."""
    qk = qk.contiguous()
    B, T, heads, hd = qk.shape
    out = qk.new_empty((B, heads, T, hd))
    cos, sin, s_cb = _tables(cos, sin, T, hd)
    _norm_rope_kernel[(B * T * heads,)](
        qk, weight.contiguous(), cos, sin, out, T, heads, hd, eps, s_cb, hd,
        BLOCK=triton.next_power_of_2(hd), **CONTRACTED,
    )  # fmt: skip
    return out


@triton.jit
def _norm_rope_write_kernel(
    qkv_ptr, w_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, rows_ptr, pos_ptr,
    T, nq, n_kv, hd, eps, s_cb, s_ct, c_sn, c_sh, c_sm, p_sb, p_st,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # One program per (batch, position, head) over the q, k and v heads of qkv
    # [B, T, nq + 2 n_kv, hd]: a q head's row normed and rotated into q [B, nq + n_kv, T, hd],
    # a k head's into the key cache, a v head's copied into the value cache, each at row
    # rows[b], position positions[b, t] of the caches [N, n_kv, M, hd].
    pid = tl.program_id(0)
    all_heads = nq + 2 * n_kv
    h = pid % all_heads
    t = (pid // all_heads) % T
    b = pid // (all_heads * T)
    cols = tl.arange(0, BLOCK)
    keep = cols < hd
    src = qkv_ptr + ((b * T + t) * all_heads + h) * hd
    slot = tl.load(rows_ptr + b) * c_sn + tl.load(pos_ptr + b * p_sb + t * p_st) * c_sm
    if h >= nq + n_kv:  # a value head
        tl.store(v_ptr + slot + (h - nq - n_kv) * c_sh + cols, tl.load(src + cols, mask=keep),
                 mask=keep)  # fmt: skip
    else:
        table = b * s_cb + t * s_ct
        out = _norm_rope_row(src, w_ptr + h * hd, cos_ptr + table, sin_ptr + table, hd, eps, BLOCK)
        if h < nq:
            tl.store(q_ptr + ((b * (nq + n_kv) + h) * T + t) * hd + cols, out, mask=keep)
        else:
            tl.store(k_ptr + slot + (h - nq) * c_sh + cols, out, mask=keep)


def norm_rope_write(
    qkv: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """``kernels.norm_rope_write_formula`` in one kernel: q and k as ``norm_rope``'s kernel
    makes them (the same code), the caches written in place, q the q heads' view of a
    [B, nq + n_kv, T, hd] tensor (the fake implementation's layout)."""
    qkv = qkv.contiguous()
    B, T, all_heads, hd = qkv.shape
    heads = weight.shape[0]
    n_kv = all_heads - heads
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("norm_rope_write needs key and value caches of one unit-stride layout")
    out = qkv.new_empty((B, heads, T, hd))
    cos, sin, s_cb = _tables(cos, sin, T, hd)
    positions = positions.expand(B, T)
    _norm_rope_write_kernel[(B * T * all_heads,)](
        qkv, weight.contiguous(), cos, sin, out, k_cache, v_cache, rows, positions,
        T, heads - n_kv, n_kv, hd, eps, s_cb, hd,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        positions.stride(0), positions.stride(1),
        BLOCK=triton.next_power_of_2(hd), **CONTRACTED,
    )  # fmt: skip
    return out[:, : heads - n_kv]


@triton.jit
def _order_key(x):
    """float32 -> int32 with the same order (-0.0 and 0.0 made one: as ``<`` sees them)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _choose_kernel(
    logits_ptr, s_l, factors_ptr, s_f, temp_ptr, greedy_ptr, kth_ptr, s_k, tail_ptr, s_t,
    noise_ptr, s_n, allow_ptr, out_ptr, V, eos,
    HAS_EOS: tl.constexpr, HAS_FACTORS: tl.constexpr, HAS_NOISE: tl.constexpr,
    BLOCK: tl.constexpr, ACCURATE: tl.constexpr,
):  # fmt: skip
    # One program per row: the whole vocabulary in registers, no sort. Top-k and top-p are
    # value thresholds found by bisection over the scores' order keys (32 counting passes).
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    valid = cols < V
    ninf = float("-inf")
    logits = tl.load(logits_ptr + b * s_l + cols, mask=valid, other=ninf).to(tl.float32)
    if HAS_EOS:
        allow = tl.load(allow_ptr + b)
        logits = tl.where((cols == eos) & (allow == 0), ninf, logits)
    if HAS_FACTORS:
        f = tl.load(factors_ptr + b * s_f + cols, mask=valid, other=1.0)
        logits = tl.where(logits < 0, logits * f, logits / f)
    greedy_id = tl.argmax(logits, axis=0, tie_break_left=True)
    if not HAS_NOISE:
        tl.store(out_ptr + b, greedy_id.to(tl.int64))
        return
    scores = logits / tl.load(temp_ptr + b)
    key = _order_key(scores)
    # top-k: the k-th largest score (ties at the cut kept), k = kth + 1
    k = tl.load(kth_ptr + b * s_k) + 1
    lo = tl.full((), -(2**31), tl.int64)
    hi = tl.full((), 2**31 - 1, tl.int64)
    for _ in range(32):  # largest t with count(key >= t) >= k
        mid = (lo + hi + 1) >> 1
        enough = tl.sum(((key >= mid) & valid).to(tl.int32), axis=0) >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    scores = tl.where(key >= lo, scores, ninf)
    key = _order_key(scores)
    # top-p: drop the low tail whose mass is <= 1 - p; the most likely id always stays
    e = _exp(scores - tl.max(scores, axis=0), ACCURATE)
    probs = e / tl.sum(e, axis=0)
    tail = tl.load(tail_ptr + b * s_t)  # 1 - top_p
    lo = tl.full((), -(2**31), tl.int64)
    hi = tl.full((), 2**31 - 1, tl.int64)
    for _ in range(32):  # smallest u with mass(key <= u) > tail
        mid = (lo + hi) >> 1
        over = tl.sum(tl.where(key <= mid, probs, 0.0), axis=0) > tail
        hi = tl.where(over, mid, hi)
        lo = tl.where(over, lo, mid + 1)
    top = tl.max(key, axis=0)
    kept = tl.where((key >= lo) | (key == top), scores, ninf)
    e = _exp(kept - tl.max(kept, axis=0), ACCURATE)
    probs = e / tl.sum(e, axis=0)
    noise = tl.load(noise_ptr + b * s_n + cols, mask=valid, other=1.0)
    drawn = tl.argmax(probs / noise, axis=0, tie_break_left=True)
    pick = tl.where(tl.load(greedy_ptr + b) != 0, greedy_id, drawn)
    tl.store(out_ptr + b, pick.to(tl.int64))


def choose_codebook(
    logits: torch.Tensor,
    factors: torch.Tensor | None,
    temperature: torch.Tensor,
    greedy: torch.Tensor,
    kth: torch.Tensor | None,
    tail: torch.Tensor | None,
    noise: torch.Tensor | None,
    eos: int,
    allow_eos: torch.Tensor | None,
) -> torch.Tensor:
    """``fused_sampling.choose_codebook_formula`` in one kernel per call (one program per
    row). Equal codes but where the formula's cumulative probability lands within float
    rounding of ``1 - top_p`` (its sums run in another order) or several ids tie exactly at
    the top-p cut (the formula's unstable sort picks among them, this keeps or drops them
    together)."""
    B, V = logits.shape
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    has_noise = noise is not None and kth is not None and tail is not None
    has_eos = eos >= 0 and allow_eos is not None
    for t in (logits, factors, noise):  # rows may be strided (a codebook's slice), ids not
        if t is not None and t.stride(-1) != 1:
            raise ValueError("choose_codebook needs unit stride along the vocabulary")
    dummy = temperature
    _choose_kernel[(B,)](
        logits, logits.stride(0),
        dummy if factors is None else factors, 0 if factors is None else factors.stride(0),
        temperature, greedy,
        kth if has_noise else dummy, kth.stride(0) if has_noise else 0,
        tail if has_noise else dummy, tail.stride(0) if has_noise else 0,
        noise if has_noise else dummy, noise.stride(0) if has_noise else 0,
        allow_eos if has_eos else dummy, out, V, eos,
        HAS_EOS=has_eos, HAS_FACTORS=factors is not None, HAS_NOISE=has_noise,
        BLOCK=triton.next_power_of_2(V), ACCURATE=ACCURATE, **CONTRACTED,
    )  # fmt: skip
    return out


@triton.jit
def _mix32(x):
    """``sampling._mix32`` on uint32 (products wrap mod 2**32: the formula's masked int64)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _keyed_noise_kernel(
    seed_ptr, counter_ptr, out_ptr, n, BLOCK: tl.constexpr, ACCURATE: tl.constexpr
):
    b = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr + b)
    counter = tl.load(counter_ptr + b)
    h0 = tl.full((), 0x9E3779B9, tl.uint32)  # the two lanes' starting states
    h1 = tl.full((), (0x632BE5AB + 0x9E3779B9) & 0xFFFFFFFF, tl.uint32)
    for w in tl.static_range(4):  # seed low, seed high, counter low, counter high
        word = seed if w < 2 else counter
        if w % 2 == 1:
            word = word >> 32
        word = word.to(tl.uint32)
        h0 = _mix32(h0 ^ word)
        h1 = _mix32(h1 ^ word)
    x = _mix32(_mix32(idx.to(tl.uint32) ^ h0) ^ h1)
    u = ((x >> 9).to(tl.float32) + 0.5) * (2.0**-23)
    tl.store(out_ptr + b * n + idx, -_log(u, ACCURATE), mask=idx < n)


def keyed_noise(seed: torch.Tensor, counter: torch.Tensor, rvq: int, vocab: int) -> torch.Tensor:
    """``fused_sampling.keyed_noise_formula`` in one kernel: the same 23-bit uniforms, bit
    for bit; ``-log`` may differ from torch's in the last bit."""
    B, n = seed.shape[0], rvq * vocab
    out = torch.empty((B, rvq, vocab), dtype=torch.float32, device=seed.device)
    _keyed_noise_kernel[(B, triton.cdiv(n, 1024))](
        seed, counter, out, n, BLOCK=1024, ACCURATE=ACCURATE, **CONTRACTED
    )
    return out


KERNELS = {
    "moss::rms_norm": (kernels.rms_norm, rms_norm),
    "moss::add_rms_norm": (kernels.add_rms_norm, add_rms_norm),
    "moss::norm_rope": (kernels.norm_rope, norm_rope),
    "moss::silu_mul": (kernels.silu_mul, silu_mul),
    "moss::choose_codebook": (fused_sampling.choose_codebook, choose_codebook),
    "moss::keyed_noise": (fused_sampling.keyed_noise_op, keyed_noise),
}

# Written 2026-12-05, checked in the interpreter only (not yet run on a GPU): registered where
# asked for (``device_kernels.KV_WRITE_KERNEL_ENV``), else the op runs its formula there
# (``norm_rope``'s kernel and two index writes, as before it).
KV_WRITE_KERNELS = {"moss::norm_rope_write": (kernels.norm_rope_write, norm_rope_write)}


_registered: list[str] = []


def register_cuda(table: dict) -> None:
    """The kernels of ``table`` (op name -> (op, kernel)) become the CUDA implementations of
    their ops (once: torch refuses a second registration) and are recorded in
    ``SINGLE_KERNEL``."""
    for name, (op, kernel) in table.items():
        if name not in _registered:
            op.register_kernel("cuda")(kernel)
            _registered.append(name)
        kernels.SINGLE_KERNEL.setdefault(name, set()).add("cuda")


def register() -> None:
    """The model's kernels (``KERNELS``), see ``register_cuda``."""
    register_cuda(KERNELS)


def register_kv_write() -> None:
    """The norm + RoPE + cache-write kernel (``KV_WRITE_KERNELS``; not yet measured on a GPU:
    asked for by ``MOSS_KV_WRITE_KERNEL=triton``), see ``register_cuda``."""
    register_cuda(KV_WRITE_KERNELS)
