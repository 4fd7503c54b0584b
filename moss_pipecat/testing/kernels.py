"""Kernels per graphed step, counted on a CPU: one real-size decode step and one codec frame.

A CUDA graph replays every kernel it recorded, so at small batches the number of kernels in
the decode step and the codec frame, not their FLOPs, sets how long a replay takes. This
counts them without a GPU: the step runs on the ``meta`` device (shapes, no values) at the
real sizes and in the GPU's dtype (bf16), under a ``TorchDispatchMode`` with autograd's
composite ops decomposed into the ATen kernels they run (``no_grad``, not ``inference_mode``:
under inference mode some torch versions hand composite ops such as ``linear`` or
``rms_norm`` to the mode whole, which would make the count depend on the route an op takes).

What counts as one kernel:

* every ATen op that is not a view (``view``, ``t``, ``split``, ``_unsafe_view`` ...: no
  kernel, only a new tensor header) and not a bare allocation (``empty*``: no kernel);
* ``FUSED`` calls, once whole (what they decompose into on the CPU is not counted):
  ``F.rms_norm`` (ATen's ``_fused_rms_norm``, one CUDA kernel with or without the weight) and
  ``F.scaled_dot_product_attention`` (one fused attention kernel; a boolean mask adds the 3
  kernels ATen spends turning it into an additive one on CUDA: ``zeros_like``,
  ``logical_not``, ``masked_fill_``);
* a custom op (``torch.library``) once: the dispatch mode sees it as one op and not what its
  implementation runs; except our fused ops (``moss::``, ``moss_pipecat.model.kernels``) that
  have no single-kernel implementation on the device counted for (``device``, CUDA by
  default): those run their formula there, so their formula's kernels are counted.

The count is the same on any device and torch build that decomposes the same way; it does
not include what a compiler (``torch.compile``) would fuse further.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

META = torch.device("meta")

# Ops that make a tensor without running a kernel: views and bare allocations.
_NO_KERNEL = {
    "aten._unsafe_view",
    "aten.alias",
    "aten.detach",
    "aten.lift_fresh",
    # A Python scalar in a tensor op (``where(c, x, 0.0)``): a wrapped CPU scalar on CUDA.
    "aten.scalar_tensor",
    "aten.empty",
    "aten.empty_like",
    "aten.empty_strided",
    "aten.new_empty",
    "aten.new_empty_strided",
}
_BOOL_MASK_KERNELS = 3  # zeros_like, logical_not, masked_fill_ (SDPA on CUDA, bool mask)


def _sdpa_kernels(args: tuple, kwargs: dict) -> int:
    mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
    bool_mask = isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    return 1 + (_BOOL_MASK_KERNELS if bool_mask else 0)


# Functions counted whole: function -> kernels of one call (on CUDA).
FUSED: dict[Callable, Callable[[tuple, dict], int]] = {
    F.rms_norm: lambda args, kwargs: 1,
    F.scaled_dot_product_attention: _sdpa_kernels,
}


def _op_name(func) -> str:
    return str(func).rsplit(".", 1)[0] if str(func).startswith("aten.") else str(func)


class KernelCounter:
    """Counts the kernels of the code run inside ``with counter:`` (see the module docstring).

    ``total``: kernels; ``by_op``: kernels per ATen op name (``aten.mul``), fused calls under
    the function's name (``rms_norm``), custom ops under theirs.
    """

    def __init__(self, device: str = "cuda") -> None:
        from moss_pipecat.codec.kernels import FORMULAS as CODEC_FORMULAS
        from moss_pipecat.model.fused_sampling import FORMULAS as SAMPLING_FORMULAS
        from moss_pipecat.model.kernels import FORMULAS, SINGLE_KERNEL

        formulas = {**FORMULAS, **SAMPLING_FORMULAS, **CODEC_FORMULAS}
        self.by_op: Counter[str] = Counter()
        self._fused_depth = 0
        counter = self

        class _Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                op = func.name() if isinstance(func, torch._ops.OpOverload) else None
                if op in formulas and device not in SINGLE_KERNEL.get(op, ()):
                    with self:  # no kernel of its own there: count what its formula runs
                        return formulas[op](*args, **kwargs)
                kernels = FUSED.get(func)
                if kernels is None or counter._fused_depth:
                    return func(*args, **kwargs)
                counter.by_op[func.__name__] += kernels(args, kwargs)
                counter._fused_depth += 1
                try:
                    return func(*args, **kwargs)
                finally:
                    counter._fused_depth -= 1

        class _Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = _op_name(func)
                if not (counter._fused_depth or func.is_view or name in _NO_KERNEL):
                    counter.by_op[name] += 1
                return func(*args, **(kwargs or {}))

        self._modes = (_Functions(), _Ops())

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __enter__(self) -> KernelCounter:
        self._grad = torch.no_grad()  # composites decompose; see the module docstring
        self._grad.__enter__()
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._grad.__exit__(*exc)


@dataclasses.dataclass
class StepKernels:
    """Kernels of one step: ``total`` and ``by_op`` (largest first)."""

    total: int
    by_op: dict[str, int]

    @classmethod
    def of(cls, counter: KernelCounter) -> StepKernels:
        return cls(counter.total, dict(counter.by_op.most_common()))


def decode_step_kernels(
    dtype: torch.dtype = torch.bfloat16, batch: int = 1, context: int = 256, fused: bool = False
) -> StepKernels:
    """Kernels of one graphed decode step of the real model at ``batch`` rows (a bucket of
    that size, every row stepping and sampled with the default settings: repetition penalty,
    temperature, top-k, top-p, keyed noise, EOS maskable), on ``meta``; ``fused``: through
    the model's fused ops, each counted once where CUDA has a kernel for it
    (``device_kernels.register_device_kernels``: with ``triton`` installed) and as its formula
    otherwise."""
    from moss_pipecat.model import (
        BatchSampling,
        MossTTSRealtime,
        MossTTSRealtimeConfig,
        SamplingParams,
    )
    from moss_pipecat.model.device_kernels import register_device_kernels
    from moss_pipecat.model.graphs import GraphedDecodeStep
    from moss_pipecat.model.kernels import use_fused

    with META:
        model = MossTTSRealtime(MossTTSRealtimeConfig.real()).to(dtype).eval()
    model.requires_grad_(False)
    if fused:
        register_device_kernels()
    use_fused(model, fused)
    cache = model.new_cache(batch, context + 1, device=META)  # + the spare position
    step = GraphedDecodeStep(model, cache, window=50, batch_buckets=(batch,), kv_buckets=(context,))
    key = (batch, context)
    inputs = step.graphs.bucket(key).inputs
    sampling = BatchSampling.from_params([SamplingParams()] * batch, device=META)
    with torch.no_grad():
        for name in ("temperature", "top_k", "top_p", "penalty", "greedy"):
            inputs[name].copy_(getattr(sampling, name))
        inputs["n_new"].fill_(1)
    with KernelCounter() as counter:
        step.graphs.launch(key)  # what the CUDA graph records
    return StepKernels.of(counter)


def codec_frame_kernels(
    dtype: torch.dtype = torch.bfloat16, batch: int = 1, fused: bool = False
) -> StepKernels:
    """Kernels of one graphed one-frame streaming decode of the real codec at ``batch`` rows
    (16 quantizers, as the TTS feeds it), on ``meta``; ``fused``: through the codec's fused
    ops, counted as ``decode_step_kernels`` counts the model's."""
    from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict
    from moss_pipecat.codec.device_kernels import register_device_kernels
    from moss_pipecat.codec.graphs import GraphedCodecDecode
    from moss_pipecat.model.kernels import use_fused

    config = CodecConfig.from_dict(real_config_dict())
    with META:
        codec = MossAudioCodec(config)
    for name, p in codec.named_parameters():
        if not name.startswith("quantizer."):  # the quantizer stays fp32, as when loaded
            p.data = p.data.to(dtype)
    codec._finish()
    if fused:
        register_device_kernels()
    use_fused(codec, fused)
    state = codec.new_stream_state(batch)
    graphed = GraphedCodecDecode(codec, state, batch_buckets=(batch,))
    key = (batch, 16)
    with torch.no_grad():
        graphed.graphs.bucket(key).inputs["active"].fill_(True)
    with KernelCounter() as counter:
        graphed.graphs.launch(key)
    return StepKernels.of(counter)
