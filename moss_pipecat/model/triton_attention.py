"""Attention over a cache in one Triton kernel (two where the keys are split): the CUDA
implementation of ``moss::attention`` (the decoder layers) and ``moss::codec_attention`` (the
codec's ring).

Why: in a decode step a query row attends over a whole cache bucket that its mask mostly
hides (a slot's keys past its length, a ring's slots outside the window). The library kernels
read every key and value of the bucket; this one reads the mask first and loads only the keys
some query of its block sees. The g query heads of a kv head are one program's rows (GQA
without copies), and a long cache is split across programs (flash-decoding: each split keeps
its own max and sum, a second kernel combines them) so a lone session still fills the GPU.

Numbers: scores in float32 (products of the inputs' dtype, summed in float32), softmax in
float32, probabilities rounded to the values' dtype before they weight the values (as flash
attention does), the output rounded once. The library's kernel sums in another order: the
result differs in its last bits. Checked against ``attention.grouped_attention`` by
``tests/model/test_triton_attention.py`` (Triton's interpreter) and on CUDA by
``tests/gpu/test_fused_cuda.py``.

Shapes it takes (else the op runs its formula): queries per kv head (g * T) up to
``MAX_ROWS``, a floating (additive) mask. Importing this module needs ``triton``.

Not yet run on a GPU (written 2026-12-04 after the H200 profile, checked in the interpreter
only), so it is not among the fused ops' default CUDA kernels: ``register()`` (and the
codec's ``register_attention``) put it under the two ops, and the ``register_device_kernels``
of ``model.device_kernels`` and ``codec.device_kernels`` call them only where
``MOSS_ATTENTION_KERNEL=triton`` (``device_kernels.ATTENTION_KERNEL_ENV``; the benchmarks'
``--attention-kernel triton``); elsewhere the ops run the library's attention, as the plain
path does.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from moss_pipecat.model.attention import grouped_attention
from moss_pipecat.model.triton_common import ACCURATE, CONTRACTED, _exp, _log, round_to

MAX_ROWS = 64  # query rows (g * T) one program holds; a prefill's many rows go to the library
BLOCK_N = 64  # keys per block


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, part_ptr, lse_ptr,
    sqb, sqh, sqt, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    smb, smt, sms,
    sob, soh, sot, sod,
    n_kv, T, G, S, HD, keys_per_split, scale,
    M_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, SPLIT: tl.constexpr,
    IEEE: tl.constexpr, ACCURATE: tl.constexpr,
):  # fmt: skip
    pid, split = tl.program_id(0), tl.program_id(1)
    b, kvh = pid // n_kv, pid % n_kv
    r = tl.arange(0, M_PAD)  # this program's query rows: head kvh * G + r // T, time r % T
    t = r % T
    row_ok = r < G * T
    d = tl.arange(0, D_PAD)
    d_ok = d < HD
    qh = kvh * G + r // T
    q_off = b * sqb + qh[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    top = tl.full([M_PAD], float("-inf"), tl.float32)  # running max
    total = tl.zeros([M_PAD], tl.float32)  # running sum of weights
    acc = tl.zeros([M_PAD, D_PAD], tl.float32)  # running weighted sum of values
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, S)
    for n0 in range(lo, hi, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        n_ok = n < hi
        bias = tl.load(
            m_ptr + b * smb + t[:, None] * smt + n[None, :] * sms,
            mask=row_ok[:, None] & n_ok[None, :],
            other=float("-inf"),
        ).to(tl.float32)  # [M_PAD, BLOCK]
        seen = tl.max(bias, 0) > float("-inf")  # [BLOCK]: keys some row attends
        if tl.max(seen.to(tl.int32), 0) > 0:  # a block nobody sees is not read
            kv_ok = seen[:, None] & d_ok[None, :]
            k_off = b * skb + kvh * skh + n[:, None] * sks + d[None, :] * skd
            k = tl.load(k_ptr + k_off, mask=kv_ok, other=0.0)  # [BLOCK, D_PAD]
            if IEEE:  # float32 products exact to float32 (no tf32), or the interpreter's
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:  # 16-bit products, exact in the float32 sum
                s = tl.dot(q, tl.trans(k))
            s = s * scale + bias
            new_top = tl.maximum(top, tl.max(s, 1))
            shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # no key yet: no NaN
            p = _exp(s - shift[:, None], ACCURATE)
            rescale = _exp(top - shift, ACCURATE)
            total = total * rescale + tl.sum(p, 1)
            v_off = b * svb + kvh * svh + n[:, None] * svs + d[None, :] * svd
            v = tl.load(v_ptr + v_off, mask=kv_ok, other=0.0)
            pv = round_to(p, v.dtype).to(v.dtype)
            if IEEE:
                pv_v = tl.dot(pv.to(tl.float32), v.to(tl.float32), input_precision="ieee")
                acc = acc * rescale[:, None] + pv_v
            else:
                acc = acc * rescale[:, None] + tl.dot(pv, v)
            top = new_top
    safe = tl.where(total == 0.0, 1.0, total)
    out = acc / safe[:, None]  # a row that saw no key: zeros
    if SPLIT:
        # This split's normalised output and log-sum-exp, for the combining kernel.
        base = (pid * tl.num_programs(1) + split) * M_PAD
        tl.store(part_ptr + (base + r[:, None]) * D_PAD + d[None, :], out)
        lse = tl.where(total == 0.0, float("-inf"), top + _log(safe, ACCURATE))
        tl.store(lse_ptr + base + r, lse)
    else:
        o_off = b * sob + qh[:, None] * soh + t[:, None] * sot + d[None, :] * sod
        dt = o_ptr.dtype.element_ty
        tl.store(o_ptr + o_off, round_to(out, dt), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _combine_kernel(
    part_ptr, lse_ptr, o_ptr,
    sob, soh, sot, sod,
    n_kv, T, G, HD, splits,
    M_PAD: tl.constexpr, D_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, ACCURATE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b, kvh = pid // n_kv, pid % n_kv
    r = tl.arange(0, M_PAD)
    sp = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, D_PAD)
    sp_ok = sp < splits
    base = pid * splits * M_PAD
    lse = tl.load(lse_ptr + base + sp[:, None] * M_PAD + r[None, :], mask=sp_ok[:, None],
                  other=float("-inf"))  # [SPLITS_PAD, M_PAD]  # fmt: skip
    top = tl.max(lse, 0)
    shift = tl.where(top == float("-inf"), 0.0, top)
    w = _exp(lse - shift[None, :], ACCURATE)  # [SPLITS_PAD, M_PAD]
    acc = tl.zeros([M_PAD, D_PAD], tl.float32)
    for i in range(0, splits):
        part = tl.load(part_ptr + ((base + i * M_PAD) + r[:, None]) * D_PAD + d[None, :])
        wi = tl.sum(tl.where(sp[:, None] == i, w, 0.0), 0)  # [M_PAD]
        acc += wi[:, None] * part
    total = tl.sum(w, 0)
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    t = r % T
    qh = kvh * G + r // T
    ok = (r < G * T)[:, None] & (d < HD)[None, :]
    o_off = b * sob + qh[:, None] * soh + t[:, None] * sot + d[None, :] * sod
    tl.store(o_ptr + o_off, round_to(out, o_ptr.dtype.element_ty), mask=ok)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_wanted(device: torch.device) -> int:
    """Programs that keep every SM of the GPU busy (two per SM); 1 off CUDA (the interpreter,
    a compile-only check: ``testing.kernel_compile``, which sets a GPU's count)."""
    return 2 * _sm_count(device.index or 0) if device.type == "cuda" else 1


def takes(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether the kernel runs this call (else the op's formula does)."""
    _, h, T, hd = q.shape
    return (
        mask.is_floating_point()
        and h % k.shape[1] == 0
        and (h // k.shape[1]) * T <= MAX_ROWS
        and hd <= 256
        and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and k.dtype == q.dtype
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    splits: int | None = None,
) -> torch.Tensor:
    """``grouped_attention(q, k, v, mask)`` (q [B, h, T, hd], k/v [B, n_kv, S, hd] with any
    strides, mask additive [B or 1, 1, T, S]) in one kernel, or two with the keys split in
    ``splits`` (default: enough programs for the GPU). Callers check ``takes`` first."""
    B, h, T, hd = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    G = h // n_kv
    m_pad = max(16, triton.next_power_of_2(G * T))
    d_pad = max(16, triton.next_power_of_2(hd))
    blocks = triton.cdiv(S, BLOCK_N)
    if splits is None:
        wanted = programs_wanted(q.device)
        splits = min(blocks, max(1, triton.cdiv(wanted, B * n_kv)), 64)
    per_split = triton.cdiv(blocks, max(1, min(splits, blocks))) * BLOCK_N
    splits = triton.cdiv(S, per_split)
    out = torch.empty_like(q)
    mb = mask.stride(0) if mask.shape[0] > 1 else 0
    split = splits > 1
    part = lse = out  # unused without a split
    if split:
        part = q.new_empty((B * n_kv, splits, m_pad, d_pad), dtype=torch.float32)
        lse = q.new_empty((B * n_kv, splits, m_pad), dtype=torch.float32)
    _attention_kernel[(B * n_kv, splits)](
        q, k, v, mask, out, part, lse,
        *q.stride(), *k.stride(), *v.stride(),
        mb, mask.stride(2), mask.stride(3),
        *out.stride(),
        n_kv, T, G, S, hd, per_split, hd**-0.5,
        M_PAD=m_pad, D_PAD=d_pad, BLOCK=BLOCK_N, SPLIT=split,
        # The interpreter multiplies 16-bit tiles wrongly: there they go as float32 (the
        # same products, exact either way).
        IEEE=q.dtype == torch.float32 or not ACCURATE, ACCURATE=ACCURATE,
        num_warps=4, **CONTRACTED,
    )  # fmt: skip
    if split:
        _combine_kernel[(B * n_kv,)](
            part, lse, out, *out.stride(), n_kv, T, G, hd, splits,
            M_PAD=m_pad, D_PAD=d_pad, SPLITS_PAD=triton.next_power_of_2(splits),
            ACCURATE=ACCURATE, num_warps=4, **CONTRACTED,
        )  # fmt: skip
    return out


def attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``moss::attention`` on CUDA: the kernel where it takes the call, else the formula."""
    if takes(q, k, mask):
        return attention(q, k, v, mask)
    return grouped_attention(q, k, v, mask)


def codec_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``moss::codec_attention`` on CUDA: the kernel where it takes the call, else SDPA."""
    if takes(q, k, mask):
        return attention(q, k, v, mask)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def register() -> None:
    """This kernel becomes the CUDA implementation of ``moss::attention`` (see
    ``model.triton_kernels.register_cuda``; the codec registers ``codec_attention_op`` under
    ``moss::codec_attention`` itself: ``codec.triton_kernels.register_attention``)."""
    from moss_pipecat.model import kernels
    from moss_pipecat.model.triton_kernels import register_cuda

    register_cuda({"moss::attention": (kernels.attention, attention_op)})
