"""The Triton kernels of the fused ops (``moss_pipecat.model.triton_kernels``) against the
ops' formulas on a CPU, run by Triton's interpreter (``TRITON_INTERPRET=1``), at tiny and
real-size-narrow shapes. They round where the formulas round; what may differ is the last bit
of a reduction summed in another order or of ``exp``/``rsqrt`` (numpy's here, libdevice's on
a GPU): float32 within a few ulps, bf16 equal but for rare one-ulp flips.

Skipped without ``triton`` (a dev dependency on Linux) and where CUDA is present (there
``tests/gpu/test_fused_cuda.py`` runs them compiled)."""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the interpreter check runs where there is no GPU", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton's kernels are defined
pytest.importorskip("triton")

from moss_pipecat.model import kernels, triton_kernels
from moss_pipecat.model.fused_sampling import NO_EOS, choose_codebook_formula
from moss_pipecat.model.layers import rope_cos_sin
from moss_pipecat.model.sampling import (
    BatchSampling,
    NoiseKeys,
    SamplingParams,
    filter_plan,
    keyed_noise,
    penalty_factors,
    seen_mask,
)
from tests.model.fused_helpers import (
    SHAPES,
    assert_near,
    check_norm_rope_write,
    norm_rope_write_case,
)
from tests.model.test_fused_ops import EDGE_PARAMS


def _x(*shape, dtype, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_norms_and_silu_mul_match_the_formulas(dtype, shape):
    hidden, _, _, inter = SHAPES[shape]
    x, y = _x(3, 5, hidden, dtype=dtype), _x(3, 5, hidden, dtype=dtype, seed=1)
    w = _x(hidden, dtype=dtype, seed=2)
    assert_near(triton_kernels.rms_norm(x, w, 1e-6), kernels.scaled_rms_norm(x, w, 1e-6))
    got = triton_kernels.add_rms_norm(x, y, w, 1e-6)
    want = kernels.add_rms_norm_formula(x, y, w, 1e-6)
    assert torch.equal(got[0], want[0])  # the residual sum: one rounding, the same
    assert_near(got[1], want[1])
    gu = _x(3, 5, 2 * inter, dtype=dtype, seed=3)
    assert_near(triton_kernels.silu_mul(gu), kernels.silu_mul_formula(gu))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tables", ["per_row", "shared"])
def test_triton_norm_rope_matches_the_formula(dtype, shape, tables):
    _, heads, hd, _ = SHAPES[shape]
    B, T = 2, 2
    qk = _x(B, T, heads, hd, dtype=dtype)
    w = _x(heads, hd, dtype=dtype, seed=4)
    start = torch.tensor([[0], [1000]]) if tables == "per_row" else torch.zeros(1, 1).long()
    positions = start + torch.arange(T)[None]
    cos, sin = rope_cos_sin(positions, hd, 1e6, 1.0, dtype)
    got = triton_kernels.norm_rope(qk, w, cos, sin, 1e-6)
    assert_near(got, kernels.norm_rope_formula(qk, w, cos, sin, 1e-6))


@pytest.mark.parametrize(
    "shape, hd, dtype, where",  # hd None: the shape's; 12: a head size not a power of two
    [
        ("tiny", None, torch.float32, "slots"),
        ("tiny", 12, torch.bfloat16, "frame"),
        ("narrow_real", None, torch.bfloat16, "slots"),
        ("narrow_real", 12, torch.float32, "frame"),
    ],
)
def test_triton_norm_rope_write_matches_the_formula(shape, hd, dtype, where):
    check_norm_rope_write(triton_kernels, norm_rope_write_case(shape, hd, dtype, where))


def _sampler_case(params, seed: int, V: int, ties: bool, dtype=torch.float32):
    """(logits, factors, sampling, plan, noise) of one codebook (codebook 3 of a frame)."""
    B = len(params)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=gen) * 3
    if ties:  # many exactly tied scores
        logits = (logits * 2).round() / 2
    s = BatchSampling.from_params(params, allow_eos=[i % 2 == 0 for i in range(B)])
    history = torch.randint(0, V, (B, 6, 16), generator=gen)
    factors = penalty_factors(seen_mask(history.transpose(1, 2), V), s.penalty)[:, 3]
    noise = keyed_noise(NoiseKeys.from_ints(range(B), [seed] * B), 16, V)[:, 3]
    return logits.to(dtype), factors, s, filter_plan(s.top_k, s.top_p, V), noise


def _both_samplers(logits, factors, s, plan, noise, eos):
    args = (logits, factors, s.temperature, s.greedy, plan.kth, plan.tail, noise, eos)
    if noise is None:
        args = (logits, factors, s.temperature, s.greedy, None, None, None, eos)
    return (
        triton_kernels.choose_codebook(*args, s.allow_eos),
        choose_codebook_formula(*args, s.allow_eos),
    )


@pytest.mark.parametrize(
    "V, dtype", [(1027, torch.float32), (1027, torch.bfloat16), (40, torch.float32)]
)
def test_triton_sampler_picks_the_formulas_codes(V, dtype):
    """Every edge setting (top_k 0/1, top_p 1, greedy, penalty 1, nucleus tiny and large),
    EOS masked in half the rows (codebook 0) or never (others), with and without penalty,
    sampled and all-greedy (no noise): the same codes."""
    logits, factors, s, plan, noise = _sampler_case(EDGE_PARAMS, 1, V, False, dtype)
    for f, eos, n in ((factors, V - 1, noise), (None, NO_EOS, noise), (factors, V - 1, None)):
        got, want = _both_samplers(logits, f, s, plan, n, eos)
        assert torch.equal(got, want)


def test_triton_sampler_keeps_ties_at_the_top_k_cut():
    """Tied scores at the top-k cut are all kept (a value threshold, as the formula's); top-p
    off, where the formula's unstable sort would otherwise choose among ties at its cut."""
    params = [SamplingParams(top_k=k, top_p=1.0) for k in (0, 1, 2, 3, 7, 30, 200, 1027)]
    logits, factors, s, plan, noise = _sampler_case(params, 2, 1027, True)
    got, want = _both_samplers(logits, factors, s, plan, noise, NO_EOS)
    assert torch.equal(got, want)


def test_triton_keyed_noise_matches_the_formula():
    """The same uniforms bit for bit (integer hash); ``-log`` to the last bit of the log
    (numpy's here, libdevice's on a GPU)."""
    keys = NoiseKeys.from_ints([0, -1, 2**63 + 5, 12345678901234], [0, 3, 2**40 + 1, 99])
    got = triton_kernels.keyed_noise(keys.seed, keys.counter, 16, 1027)
    want = keyed_noise(keys, 16, 1027)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # a few ulps, near u = 1
    assert (got == want).float().mean() > 0.7


def test_register_makes_them_the_cuda_kernels_counted_once(monkeypatch):
    from moss_pipecat.model.device_kernels import KV_WRITE_KERNEL_ENV, register_device_kernels

    saved = {k: set(v) for k, v in kernels.SINGLE_KERNEL.items()}
    try:
        triton_kernels.register()
        triton_kernels.register()  # idempotent
        for name in triton_kernels.KERNELS:
            assert "cuda" in kernels.SINGLE_KERNEL[name]
        # The cache-write kernel (not yet run on a GPU) only where asked for.
        monkeypatch.delenv(KV_WRITE_KERNEL_ENV, raising=False)
        assert "moss::norm_rope_write" not in register_device_kernels()
        monkeypatch.setenv(KV_WRITE_KERNEL_ENV, "triton")
        assert "cuda" in register_device_kernels()["moss::norm_rope_write"]
    finally:
        kernels.SINGLE_KERNEL.clear()
        kernels.SINGLE_KERNEL.update(saved)
