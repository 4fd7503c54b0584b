"""The layer math as functions, and the fused kernels of the decode step as custom ops.

Each fused op (``torch.library.custom_op``, namespace ``moss``) does one job that the plain path
spends several kernels on: RMSNorm with its weight, residual add + RMSNorm, q/k norm + RoPE,
SiLU·mul, q/k norm + RoPE with the new keys and values written into the layer's cache,
attention over a cache (one kernel that reads only the keys a query sees). Its
registered implementation is the plain formula written here (the same function the unfused path
calls), so on every device the fused path gives the unfused numbers bit for bit; a device with a
single-kernel implementation registers it over that one (``op.register_kernel``: the Triton
kernels of ``triton_kernels`` on CUDA, where ``triton`` is installed; they round where the
formulas round, but may differ in a reduction's or an ``exp``'s last bit, see there). A fake
implementation gives the output's shape on ``meta``, where ``moss_pipecat.testing.kernels``
counts a fused op as one kernel when it has such a single-kernel implementation
(``SINGLE_KERNEL``) and as the kernels of its formula otherwise.

``use_fused(model, on)`` switches a model's layers (and its sampler, see
``moss_pipecat.model.fused_sampling``) between the two paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moss_pipecat.model.attention import grouped_attention

# Ops whose device implementation is one kernel (name -> the device types it is one on),
# filled by ``device_kernels.register_device_kernels``. An op without one runs its formula
# on that device, and the kernel count says so.
SINGLE_KERNEL: dict[str, set[str]] = {}


def scaled_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm of the last axis times ``weight`` ([D], or [rows, D] for per-row weights of
    the second-to-last axis).

    One ``F.rms_norm``, normalised in fp32. The reference casts the normed value back, then
    scales it in the activation dtype. In fp32 scaling inside ``F.rms_norm`` gives the same
    numbers in one kernel less; in bf16 it would round once instead of twice (other numbers),
    so there it stays apart (see docs/PERFORMANCE.md).
    """
    if weight.dim() == 1 and x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x*cos + [-x2, x1]*sin, written as x*cos + [x2, x1]*signed_sin (the
    sign lives in the table: one kernel less per call, bit-identical). [x2, x1] is x rolled
    by half a head: one op where two slices and a cat were three (the eager CPU step is
    dispatch-bound).

    x: [B, heads, T, hd]; cos/sin: [B, 1, T, hd] from ``layers.rope_cos_sin``.
    """
    swapped = x.roll(x.shape[-1] // 2, dims=-1)
    return x * cos + swapped * sin


def norm_rope_formula(
    qk: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """q/k heads [B, T, heads, hd] normed (per-head weights [heads, hd]) and rotated ->
    [B, heads, T, hd]: the same math as apart, element for element."""
    return apply_rope(scaled_rms_norm(qk, weight, eps).transpose(1, 2), cos, sin)


def add_rms_norm_formula(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add and the next norm: (x + y, ``scaled_rms_norm(x + y)``)."""
    s = x + y
    return s, scaled_rms_norm(s, weight, eps)


def silu_mul_formula(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's inner product: silu(gate) * up of ``gate_up`` [..., 2I] (gate, then up)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# ---- the custom ops -------------------------------------------------------------------------
@torch.library.custom_op("moss::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``scaled_rms_norm`` as one op."""
    return scaled_rms_norm(x, weight, eps)


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("moss::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_rms_norm_formula`` as one op."""
    return add_rms_norm_formula(x, y, weight, eps)


@add_rms_norm.register_fake
def _(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("moss::norm_rope", mutates_args=())
def norm_rope(
    qk: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """``norm_rope_formula`` as one op."""
    return norm_rope_formula(qk, weight, cos, sin, eps)


@norm_rope.register_fake
def _(
    qk: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    B, T, h, hd = qk.shape
    return qk.new_empty((B, h, T, hd))


def norm_rope_write_formula(
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
    """A layer's attention inputs from its fused projection ``qkv [B, T, nq + 2 n_kv, hd]``:
    q and k normed (per-head ``weight [nq + n_kv, hd]``) and rotated (``norm_rope``), k and v
    written into the caches ``[N, n_kv, M, hd]`` at row ``rows[b]`` ([B]), position
    ``positions[b, t]`` ([B or 1, T]) (in place); returns q ``[B, nq, T, hd]``.

    The norm and RoPE go through the ``norm_rope`` op: where it has a device kernel of its
    own and this op has none, this is that kernel and the two writes, as apart."""
    heads = weight.shape[0]
    n_kv = qkv.shape[2] - heads
    qk, v = qkv.split_with_sizes((heads, n_kv), dim=2)
    q, k = norm_rope(qk, weight, cos, sin, eps).split_with_sizes((heads - n_kv, n_kv), dim=1)
    where = rows[:, None], slice(None), positions  # -> [B, T, n_kv, hd]
    k_cache[where] = k.transpose(1, 2)
    v_cache[where] = v
    return q


@torch.library.custom_op("moss::norm_rope_write", mutates_args=("k_cache", "v_cache"))
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
    """``norm_rope_write_formula`` as one op. q is the q heads' view of the normed q and k
    heads (as the formula's split leaves it: no copy)."""
    return norm_rope_write_formula(qkv, weight, cos, sin, eps, k_cache, v_cache, rows, positions)


@norm_rope_write.register_fake
def _(qkv, weight, cos, sin, eps, k_cache, v_cache, rows, positions) -> torch.Tensor:
    B, T, _, hd = qkv.shape
    heads = weight.shape[0]
    return qkv.new_empty((B, heads, T, hd))[:, : 2 * heads - qkv.shape[2]]


@torch.library.custom_op("moss::silu_mul", mutates_args=())
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu_mul_formula`` as one op."""
    return silu_mul_formula(gate_up)


@silu_mul.register_fake
def _(gate_up: torch.Tensor) -> torch.Tensor:
    return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))


@torch.library.custom_op("moss::attention", mutates_args=())
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``attention.grouped_attention`` as one op (a decoder layer's attention over its cache:
    q [B, h, T, hd], k/v [B, n_kv, S, hd], mask [B or 1, 1, T, S])."""
    return grouped_attention(q, k, v, mask)


@attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(q)


# Every fused op -> its formula (what it runs where no single kernel is registered).
FORMULAS = {
    "moss::rms_norm": scaled_rms_norm,
    "moss::add_rms_norm": add_rms_norm_formula,
    "moss::norm_rope": norm_rope_formula,
    "moss::norm_rope_write": norm_rope_write_formula,
    "moss::silu_mul": silu_mul_formula,
    "moss::attention": grouped_attention,
}


class Fusable:
    """Mixin of the modules with a fused path: ``fused`` (class default False) picks it."""

    fused: bool = False


def use_fused(model: nn.Module, on: bool) -> None:
    """Switches every ``Fusable`` module of ``model`` to its fused path (``on``) or back.
    The setting belongs to the model: engines that share a model share it."""
    for m in model.modules():
        if isinstance(m, Fusable):
            m.fused = bool(on)
