"""The fused ops (``moss_pipecat.model.kernels``, ``fused_sampling``) give the plain path's
numbers bit for bit on CPU: each fused module path against the plain one with the same
weights, at tiny and real-size-narrow shapes, float32 and bf16, sampling at its edge values;
and the kernel counter counts a fused op as its formula's kernels until a device kernel
says it is one."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch

from moss_pipecat.model import MossTTSRealtime, MossTTSRealtimeConfig
from moss_pipecat.model.kernels import SINGLE_KERNEL, silu_mul, use_fused
from moss_pipecat.model.layers import (
    DecoderLayer,
    KVDestination,
    KVWriter,
    RMSNorm,
    rope_cos_sin,
    run_stack,
)
from moss_pipecat.model.local import LocalTransformer
from moss_pipecat.model.sampling import NO_HISTORY, BatchSampling, NoiseKeys, SamplingParams
from moss_pipecat.testing.kernels import KernelCounter

DTYPES = [torch.float32, torch.bfloat16]


def _narrow_real(width: int = 16):
    """The real layer shapes (heads, head count ratio, eps, theta) with widths / ``width``."""
    real = MossTTSRealtimeConfig.real()

    def narrow(t):
        return dataclasses.replace(
            t,
            hidden_size=t.hidden_size // width,
            head_dim=t.head_dim // width,
            intermediate_size=t.intermediate_size // width,
            num_hidden_layers=min(t.num_hidden_layers, 2),
        )

    return dataclasses.replace(real, language=narrow(real.language), local=narrow(real.local))


@contextlib.contextmanager
def _device_kernels(ops: dict[str, set[str]]):
    """``SINGLE_KERNEL`` set to ``ops`` inside (as if just those had device kernels)."""
    saved = {k: set(v) for k, v in SINGLE_KERNEL.items()}
    SINGLE_KERNEL.clear()
    SINGLE_KERNEL.update(ops)
    try:
        yield
    finally:
        SINGLE_KERNEL.clear()
        SINGLE_KERNEL.update(saved)


def _both(module: torch.nn.Module, fn, *args):
    """fn(*args) with ``module`` plain, then fused."""
    use_fused(module, False)
    plain = fn(*args)
    use_fused(module, True)
    try:
        return plain, fn(*args)
    finally:
        use_fused(module, False)


class _Scratch(KVWriter):
    """A layer's keys/values for one call, [B, n_kv, T, hd]: what its attention reads."""

    def __init__(self, B: int, T: int, cfg, dtype) -> None:
        self.k = torch.zeros(B, cfg.num_key_value_heads, T, cfg.head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.rows, self.positions = torch.arange(B), torch.arange(T)[None]

    def write(self, k, v):
        self.k.copy_(k)
        self.v.copy_(v)
        return self.k, self.v

    def destination(self) -> KVDestination:
        return KVDestination(self.k, self.v, self.rows, self.positions)

    def attended(self, batch: int):
        return self.k, self.v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", ["tiny", "narrow_real"])
def test_fused_decoder_stack_equals_plain(tiny_model, dtype, shapes):
    """Three decoder layers and the final norm (``run_stack``): each residual add fused with
    the norm after it, q/k norm + RoPE, SiLU·mul, the norms with their weights."""
    cfg = tiny_model.cfg.language if shapes == "tiny" else _narrow_real().language
    gen = torch.Generator().manual_seed(3)
    stack = torch.nn.ModuleList(
        [DecoderLayer(cfg) for _ in range(3)] + [RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)]
    ).to(dtype)
    with torch.no_grad():
        for p in stack.parameters():  # random norms too, so their weights matter
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1 if p.dim() == 1 else 0))
    B, T = 3, 5
    x = torch.randn(B, T, cfg.hidden_size, generator=gen).to(dtype)
    positions = torch.arange(T)[None].repeat(B, 1) + torch.tensor([[0], [7], [130]])
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, 1.0, dtype)
    mask = torch.zeros(1, 1, T, T, dtype=dtype).masked_fill(
        torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")
    )
    caches = []  # each run's own: the plain one's, then the fused one's

    def run():
        caches.append([_Scratch(B, T, cfg, dtype) for _ in range(3)])
        return run_stack(stack[:3], stack[3], x, cos, sin, caches[-1], mask)

    with torch.no_grad():
        plain, fused = _both(stack, run)
    for a, b in zip(*caches, strict=True):  # the same keys and values written
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and bool(a.k.abs().sum() > 0)
    assert plain.dtype == dtype
    assert torch.equal(plain, fused)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_op_equals_the_formula_and_counts_by_its_device(dtype):
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    gate, up = x.chunk(2, dim=-1)
    assert torch.equal(silu_mul(x), torch.nn.functional.silu(gate) * up)
    meta = x.to("meta")
    with _device_kernels({}), KernelCounter() as counter:
        silu_mul(meta)
    assert dict(counter.by_op) == {"aten.silu": 1, "aten.mul": 1}  # no CUDA kernel: formula
    with _device_kernels({"moss::silu_mul": {"cuda"}}):
        with KernelCounter() as counter:
            silu_mul(meta)
        assert dict(counter.by_op) == {"moss.silu_mul.default": 1}
        with KernelCounter(device="xpu") as counter:
            silu_mul(meta)
        assert counter.total == 2


# Sampling settings at their edges, one per row: top_k 0 (off) / 1, top_p 1, greedy
# (temperature 0), a large and a tiny nucleus, a penalty of 1.
EDGE_PARAMS = [
    SamplingParams(),
    SamplingParams(top_k=0),
    SamplingParams(top_k=1),
    SamplingParams(top_p=1.0),
    SamplingParams(top_k=0, top_p=1.0),
    SamplingParams.greedy_decoding(),
    SamplingParams(temperature=1.7, top_k=400, top_p=0.97, repetition_penalty=1.4),
    SamplingParams(temperature=0.2, top_k=3, top_p=0.05, repetition_penalty=1.0),
]


@pytest.fixture(scope="module")
def local_models(tiny_model):
    """(shapes, dtype) -> a local transformer: the tiny model's (a copy), and one of the
    real shapes narrowed, random weights."""
    narrow = LocalTransformer(_narrow_real())
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in narrow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1 if p.dim() == 1 else 0))
    tiny = copy.deepcopy(tiny_model.local_transformer)
    return {
        (shapes, dtype): copy.deepcopy(m).to(dtype).eval()
        for shapes, m in (("tiny", tiny), ("narrow_real", narrow))
        for dtype in DTYPES
    }


@pytest.mark.parametrize(
    "shapes, dtype, ties",
    [(s, torch.float32, t) for s in ("tiny", "narrow_real") for t in (False, True)]
    + [(s, torch.bfloat16, False) for s in ("tiny", "narrow_real")],
)
def test_fused_frame_sampling_equals_plain(tiny_model, local_models, dtype, shapes, ties):
    """A whole frame (local transformer + 16 sampling ops + keyed noise) at the edge
    settings, EOS masked in some rows and allowed in others, with a penalty window, an
    empty one (window 0) and none; and every row greedy."""
    local = local_models[(shapes, dtype)]
    cfg = local.cfg
    gen = torch.Generator().manual_seed(11)
    B = len(EDGE_PARAMS)
    hidden = torch.randn(B, cfg.local.hidden_size, generator=gen) * (4 if ties else 1)
    if ties:  # tied logits come from tied hidden states
        hidden = (hidden * 2).round() / 2
    hidden = hidden.to(dtype)
    history = torch.randint(0, cfg.audio_vocab_size, (B, 6, cfg.rvq), generator=gen)
    history[:, :3] = NO_HISTORY  # a half-empty window
    allow = torch.arange(B) % 2 == 0
    sampling = BatchSampling.from_params(EDGE_PARAMS, allow_eos=allow.tolist())
    greedy_all = BatchSampling.from_params([SamplingParams.greedy_decoding()] * B)
    keys = NoiseKeys.from_ints(range(B), [5] * B)
    empty = torch.full((B, 0, cfg.rvq), NO_HISTORY)
    cases = [(sampling, h, keys) for h in (history, empty, None)]
    cases += [(sampling, history, None), (greedy_all, history, keys)]
    with torch.no_grad():
        for s, hist, noise in cases:
            plain, fused = _both(local, local.generate, hidden, s, hist, noise)
            assert torch.equal(plain, fused)


def test_fused_ops_count_once_with_device_kernels():
    """The decode step's fused ops, as the count sees them on ``meta``: each op once per call
    where its device has a single kernel (here pretended for all), the formula otherwise."""
    cfg = _narrow_real()
    with torch.device("meta"):
        model = MossTTSRealtime(cfg).to(torch.bfloat16).eval()
    B = 2
    hidden = torch.empty(B, cfg.language.hidden_size, device="meta", dtype=torch.bfloat16)
    sampling = BatchSampling.from_params([SamplingParams()] * B, device="meta")
    keys = NoiseKeys(torch.zeros(B, dtype=torch.int64, device="meta"), torch.zeros(B).long())
    keys.counter = keys.counter.to("meta")
    history = torch.empty(B, 4, cfg.rvq, dtype=torch.int64, device="meta")

    def count() -> KernelCounter:
        with KernelCounter() as counter:
            model.generate_frame(hidden, sampling, history, keys)
        return counter

    with _device_kernels({}):
        plain, fused = _both(model, count)
        assert fused.total == plain.total  # no device kernels registered: the same kernels
    ops = ["rms_norm", "add_rms_norm", "norm_rope", "silu_mul", "choose_codebook", "keyed_noise"]
    with _device_kernels({f"moss::{op}": {"cuda"} for op in ops}):
        _, fused = _both(model, count)
    layers = cfg.rvq * cfg.local.num_hidden_layers
    assert fused.by_op["moss.choose_codebook.default"] == cfg.rvq
    assert fused.by_op["moss.keyed_noise.default"] == 1
    assert fused.by_op["moss.silu_mul.default"] == layers
    assert fused.by_op["moss.norm_rope.default"] == layers
    # each residual add with the norm after it; one plain norm per stack call (its input)
    assert fused.by_op["moss.add_rms_norm.default"] == 2 * layers
    assert fused.by_op["moss.rms_norm.default"] == cfg.rvq
    assert "aten.add" not in fused.by_op
    assert fused.total < plain.total
    # The cache writes folded in too: the two writes of every layer call go.
    with _device_kernels({f"moss::{op}": {"cuda"} for op in [*ops, "norm_rope_write"]}):
        _, folded = _both(model, count)
    assert folded.by_op["moss.norm_rope_write.default"] == layers
    assert "moss.norm_rope.default" not in folded.by_op
    assert folded.by_op["aten.index_put_"] == fused.by_op["aten.index_put_"] - 2 * layers
    assert folded.total == fused.total - 2 * layers
