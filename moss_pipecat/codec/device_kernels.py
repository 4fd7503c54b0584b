"""The fused ops' device kernels, the model's and the codec's, where they can be had: the
Triton kernels need ``triton`` (not a dependency of this package)."""

from __future__ import annotations

from moss_pipecat.model import device_kernels
from moss_pipecat.model.device_kernels import attention_kernel_asked
from moss_pipecat.model.kernels import SINGLE_KERNEL


def register_device_kernels() -> dict[str, set[str]]:
    """The model's device kernels and the codec's (Triton, where ``triton`` can be imported;
    without it every op runs its formula); returns ``SINGLE_KERNEL``."""
    device_kernels.register_device_kernels()
    try:
        from moss_pipecat.codec import triton_kernels
    except ImportError:
        return SINGLE_KERNEL
    triton_kernels.register()
    if attention_kernel_asked():
        triton_kernels.register_attention()
    return SINGLE_KERNEL
