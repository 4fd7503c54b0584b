"""Attention masks shared by the TTS model and the codec."""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True = attend) as the additive one SDPA uses: 0 / -inf.

    Made once per step and shared by every layer: SDPA converts a boolean mask into exactly
    this inside every call on CUDA (3 kernels per call); the attention result is the same.
    """
    return torch.where(allowed, 0.0, float("-inf")).to(dtype)
