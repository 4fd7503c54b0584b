"""The Triton kernels of the codec's fused ops (``moss_pipecat.codec.triton_kernels``) against
the ops' formulas on a CPU, in Triton's interpreter (``TRITON_INTERPRET=1``), at the tiny
codec's and the real codec's narrowed shapes (head dims that are no power of two among
them), float32 and bf16, with and without LayerScale, at edge values (a constant row, large
and tiny values, positions in the thousands, ring slots wrapping, a ring that is a view of
a larger state whose other rows stay untouched).

RoPE, the ring writes and the residual sum are the formulas' numbers bit for bit (launched
without floating-point contraction); the LayerNorm may differ in a last bit (its mean and
variance summed in another order). Skipped without ``triton`` and where CUDA is present
(there ``tests/gpu/test_fused_cuda.py`` runs them compiled)."""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the interpreter check runs where there is no GPU", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton's kernels are defined
pytest.importorskip("triton")

from moss_pipecat.codec import kernels, triton_kernels
from moss_pipecat.model.kernels import SINGLE_KERNEL
from tests.codec.fused_helpers import SHAPES, assert_layer_norm_near, layer_norm_case, rope_case

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scaled", [True, False], ids=["layer_scale", "no_scale"])
def test_triton_add_layer_norm_matches_the_formula(dtype, shape, scaled):
    args = layer_norm_case(SHAPES[shape][0], dtype, scaled)
    got = triton_kernels.add_layer_norm(*args)
    want = kernels.add_layer_norm_formula(*args)
    assert torch.equal(got[0], want[0])  # the residual sum: the same roundings
    assert_layer_norm_near(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [1, 4])  # 4: the chunk wraps around its ring
def test_triton_rope_write_matches_the_formula(dtype, shape, steps):
    qkv, c, s, idx, state = rope_case(*SHAPES[shape], steps, dtype)
    want_state, b = state.clone(), qkv.shape[0]
    want = kernels.rope_write_formula(qkv, c, s, want_state[0, :b], want_state[1, :b], idx)
    got = triton_kernels.rope_write(qkv, c, s, state[0, :b], state[1, :b], idx)
    assert torch.equal(got, want) and got.is_contiguous()
    assert torch.equal(state, want_state)  # the rings written alike, row 2 untouched


def test_register_makes_them_the_cuda_kernels_counted_once():
    saved = {k: set(v) for k, v in SINGLE_KERNEL.items()}
    try:
        triton_kernels.register()
        triton_kernels.register()  # idempotent
        # The attention's kernel is registered apart (``model.triton_attention``, on request).
        assert set(triton_kernels.KERNELS) == set(kernels.FORMULAS) - {"moss::codec_attention"}
        for name in triton_kernels.KERNELS:
            assert "cuda" in SINGLE_KERNEL[name]
    finally:
        SINGLE_KERNEL.clear()
        SINGLE_KERNEL.update(saved)
