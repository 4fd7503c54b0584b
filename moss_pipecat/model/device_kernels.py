"""The fused ops' device kernels, where they can be had: the Triton kernels of
``moss_pipecat.model.triton_kernels`` need ``triton`` (not a dependency of this package)."""

from __future__ import annotations

import os

import torch

from moss_pipecat.model.kernels import SINGLE_KERNEL

# Kernels written but not yet run on a GPU, each asked for by name (its variable = "triton"):
# the fused ops' attention in ``triton_attention``'s kernel (else the library's attention);
# q/k norm + RoPE with the cache writes in one kernel (``triton_kernels.KV_WRITE_KERNELS``;
# else ``norm_rope``'s kernel and two index writes).
ATTENTION_KERNEL_ENV = "MOSS_ATTENTION_KERNEL"
KV_WRITE_KERNEL_ENV = "MOSS_KV_WRITE_KERNEL"


def fused_by_default(device: torch.device) -> bool:
    """Whether an engine on ``device`` runs its fused ops unless told: on CUDA where the
    Triton kernels can be had (there they are measured faster, same frames); elsewhere each op
    would run its formula, the plain path with extra dispatch, so off."""
    if device.type != "cuda":
        return False
    try:  # the same test as ``register_device_kernels``: the kernels' module imports
        from moss_pipecat.model import triton_kernels  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_asked(env: str) -> bool:
    """Whether the variable ``env`` (``ATTENTION_KERNEL_ENV``, ``KV_WRITE_KERNEL_ENV``) asks
    for its Triton kernel."""
    return os.environ.get(env, "") == "triton"


def attention_kernel_asked() -> bool:
    """Whether ``ATTENTION_KERNEL_ENV`` asks for the Triton attention kernel."""
    return kernel_asked(ATTENTION_KERNEL_ENV)


def register_device_kernels() -> dict[str, set[str]]:
    """Puts the Triton kernels under their ops as their CUDA implementations where ``triton``
    can be imported (without it every op runs its formula); returns ``SINGLE_KERNEL``."""
    try:
        from moss_pipecat.model import triton_kernels
    except ImportError:
        return SINGLE_KERNEL
    triton_kernels.register()
    if kernel_asked(KV_WRITE_KERNEL_ENV):
        triton_kernels.register_kv_write()  # not yet measured on a GPU: asked for by name only
    from moss_pipecat.model import triton_attention

    if attention_kernel_asked():
        triton_attention.register()  # not yet measured on a GPU: asked for by name only
    return SINGLE_KERNEL
