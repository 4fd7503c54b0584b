"""The attention kernel (``moss_pipecat.model.triton_attention``) against the formula it stands
in for, on a CPU with Triton's interpreter: the decode step's shapes (GQA, a slot's keys past
its length hidden, a bucket longer than any row), the local transformer's (one mask for the
batch), the codec ring's (holes anywhere), keys split across programs or not, strided caches.

The closeness rule (float32: the formula's numbers; bfloat16: the exact attention's, within
the rounding of the weights) is ``tests/model/attention_helpers.py``'s.

Skipped without ``triton`` and where CUDA is present (there ``tests/gpu`` runs it compiled)."""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the interpreter check runs where there is no GPU", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton's kernels are defined
pytest.importorskip("triton")

from moss_pipecat.masks import additive_mask
from moss_pipecat.model import triton_attention
from tests.model.attention_helpers import check_attention
from tests.model.attention_helpers import decode_case as _decode_case
from tests.model.attention_helpers import x as _x


def _check(q, k, v, allowed, splits):
    check_attention(triton_attention.attention, q, k, v, allowed, splits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 2, 3])
def test_a_decode_step_over_a_bucket_matches(dtype, splits):
    _check(*_decode_case(dtype), splits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_head_sizes_match(dtype):
    # The backbone's and the local transformer's heads: 16 queries on 8 kv heads of 128.
    _check(*_decode_case(dtype, B=2, h=16, n_kv=8, hd=128, S=130, seed=5), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_mask_for_every_row_and_several_queries(dtype):
    # The local transformer: [1, 1, T, S] causal over a frame's codebooks, T queries a row.
    B, h, n_kv, T, S, hd = 2, 4, 2, 3, 16, 16
    q = _x(B, h, T, hd, seed=1, dtype=dtype)
    k, v = _x(B, n_kv, S, hd, seed=2, dtype=dtype), _x(B, n_kv, S, hd, seed=3, dtype=dtype)
    pos = torch.arange(S)
    allowed = (pos[None, :] <= pos[5 : 5 + T, None])[None, None]
    _check(q, k, v, allowed, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 2])
def test_a_ring_with_holes_matches(dtype, splits):
    # The codec: no GQA, a chunk of T queries, the keys any subset of the ring's slots
    # (whole blocks of them hidden, too: those are skipped).
    B, h, T, S, hd = 2, 3, 2, 200, 32
    q = _x(B, h, T, hd, seed=4, dtype=dtype)
    k, v = _x(B, h, S, hd, seed=5, dtype=dtype), _x(B, h, S, hd, seed=6, dtype=dtype)
    allowed = _x(B, 1, T, S, seed=7) > 0.3
    allowed[:, :, :, 64:128] = False
    allowed[:, :, :, 0] = True  # every query sees a key
    _check(q, k, v, allowed, splits)


def test_a_query_that_sees_no_key_gets_zeros():
    q, k, v, allowed = _decode_case(torch.float32)
    allowed[1] = False
    got = triton_attention.attention(q, k, v, additive_mask(allowed, q.dtype), splits=2)
    assert bool((got[1] == 0).all())
    _check(q[[0, 2]], k[[0, 2]], v[[0, 2]], allowed[[0, 2]], 2)


def test_the_kernel_takes_decode_calls_and_leaves_the_rest_to_the_formula():
    q, k, _, allowed = _decode_case(torch.float32)
    assert triton_attention.takes(q, k, additive_mask(allowed, q.dtype))
    assert not triton_attention.takes(q, k, allowed)  # a bool mask: the formula's
    long = q.expand(-1, -1, triton_attention.MAX_ROWS, -1)  # a prefill's many rows
    assert not triton_attention.takes(long, k, additive_mask(allowed, q.dtype))


def test_the_kernel_is_a_cuda_implementation_only_when_asked_for(monkeypatch):
    # Not yet measured on a GPU: the fused ops keep the library's attention unless
    # MOSS_ATTENTION_KERNEL=triton.
    from moss_pipecat.codec.device_kernels import register_device_kernels
    from moss_pipecat.model.device_kernels import ATTENTION_KERNEL_ENV
    from moss_pipecat.model.kernels import SINGLE_KERNEL

    monkeypatch.delenv(ATTENTION_KERNEL_ENV, raising=False)
    table = register_device_kernels()  # the model's and the codec's
    assert "moss::attention" not in table and "moss::codec_attention" not in table
    assert "moss::norm_rope" in SINGLE_KERNEL  # the measured kernels are
    monkeypatch.setenv(ATTENTION_KERNEL_ENV, "triton")
    table = register_device_kernels()
    assert "cuda" in table["moss::attention"] and "cuda" in table["moss::codec_attention"]
