"""Residual LFQ quantizer (inference only) and weight-norm folding.

Upstream stores every 1x1 convolution of the quantizer weight-normalised: ``g`` in
``...parametrizations.weight.original0`` ``[out, 1, 1]`` and ``v`` in ``...original1``
``[out, in, 1]``, weight = g * v / ||v|| (norm per output channel). The fold happens once at
load time; the modules here are plain ``nn.Linear`` layers (time-major, no conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moss_pipecat.codec.config import QuantizerConfig
from moss_pipecat.errors import CheckpointError
from moss_pipecat.model.layers import Embedding

WN_G = ".parametrizations.weight.original0"
WN_V = ".parametrizations.weight.original1"


class WNLinear(nn.Linear):
    """A Linear whose checkpoint form is a weight-normalised 1x1 Conv1d (with bias)."""


def fold_weight_norm(state: dict[str, torch.Tensor], prefixes: list[str]) -> None:
    """Replaces ``prefix + WN_G/WN_V`` by ``prefix.weight [out, in]`` in ``state``, in place.

    Uses ``torch._weight_norm``, the kernel behind torch's weight-norm parametrisation, so the
    folded weight is bit-identical to what upstream computes on every forward.
    """
    for p in prefixes:
        g = state.pop(p + WN_G).float()
        v = state.pop(p + WN_V).float()
        w = torch._weight_norm(v, g, 0)  # [out, in, 1]
        if not torch.isfinite(w).all():
            raise CheckpointError(f"{p}: weight norm of the checkpoint is not finite (zero v?)")
        state[p + ".weight"] = w.squeeze(-1)


def checkpoint_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """Checkpoint key -> shape for ``module``, with WNLinear weights in their stored (g, v) form."""
    wn = {name for name, m in module.named_modules() if isinstance(m, WNLinear)}
    shapes: dict[str, torch.Size] = {}
    for name, t in module.state_dict().items():
        prefix = name.rsplit(".", 1)[0]
        if prefix in wn and name.endswith(".weight"):
            out, inp = t.shape
            shapes[prefix + WN_G] = torch.Size([out, 1, 1])
            shapes[prefix + WN_V] = torch.Size([out, inp, 1])
        else:
            shapes[name] = t.shape
    return shapes


def weight_norm_prefixes(module: nn.Module, root: str = "") -> list[str]:
    """Names (with ``root`` prefix) of the WNLinear modules under ``module``."""
    return [root + n for n, m in module.named_modules() if isinstance(m, WNLinear)]


class LFQ(nn.Module):
    """One codebook: project to ``codebook_dim``, nearest codebook row by cosine, project back."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        projected = dim != codebook_dim
        self.in_proj = WNLinear(dim, codebook_dim) if projected else None
        self.out_proj = WNLinear(codebook_dim, dim) if projected else None
        self.codebook = Embedding(codebook_size, codebook_dim)

    def nearest(self, r: torch.Tensor) -> torch.Tensor:
        """Code of the codebook row with the highest cosine similarity to ``in_proj(r)``.

        ``r [N, dim]`` -> ``[N]`` int64. The squared distance between unit vectors is
        computed term by term as the reference does, so near-ties resolve the same way.
        """
        e = self.in_proj(r) if self.in_proj is not None else r
        e = F.normalize(e.float())
        c = F.normalize(self.codebook.weight.float())
        dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
        return (-dist).argmax(dim=1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [...] -> [..., dim]``: the raw (un-normalised) codebook row, projected."""
        q = self.codebook(codes).float()
        return self.out_proj(q) if self.out_proj is not None else q


class ResidualLFQ(nn.Module):
    """Residual LFQ over ``num_quantizers`` codebooks, time-major (``[B, T, C]``)."""

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_proj = (
            WNLinear(cfg.input_dim, cfg.rvq_dim) if cfg.input_dim != cfg.rvq_dim else None
        )
        self.output_proj = (
            WNLinear(cfg.rvq_dim, cfg.output_dim) if cfg.rvq_dim != cfg.output_dim else None
        )
        self.quantizers = nn.ModuleList(
            LFQ(cfg.rvq_dim, cfg.codebook_size, cfg.codebook_dim) for _ in range(cfg.num_quantizers)
        )
        self._tables: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None

    def prepare(self) -> None:
        """Stacks codebooks and output projections for the one-shot decode gather.

        Call after the weights are loaded (the stacks are copies, not views).
        """
        qs = list(self.quantizers)
        cb = torch.stack([q.codebook.weight.float() for q in qs])  # [Q, K, Dc]
        if qs[0].out_proj is None:
            self._tables = (cb, None, None)
        else:
            w = torch.stack([q.out_proj.weight.float() for q in qs])  # [Q, R, Dc]
            b = torch.stack([q.out_proj.bias.float() for q in qs])  # [Q, R]
            self._tables = (cb, w, b)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, lengths: torch.Tensor, n_q: int) -> torch.Tensor:
        """Quantises ``z [B, T, input_dim]`` -> codes ``[n_q, B, T]`` int64.

        Frames at or beyond ``lengths [B]`` are zeroed before each quantizer and their
        residual is never updated (upstream's padding rule; their codes are still returned).
        """
        b, t, _ = z.shape
        z = z.float()
        if self.input_proj is not None:
            z = self.input_proj(z)
        valid = (torch.arange(t, device=z.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        valid = valid.to(z.dtype)  # [B, T, 1]
        residual = z
        codes = []
        for quantizer in list(self.quantizers)[:n_q]:
            masked = residual * valid
            idx = quantizer.nearest(masked.reshape(b * t, -1)).view(b, t)
            residual = residual - quantizer.dequantize(idx) * valid
            codes.append(idx)
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [n_q, B, T]`` -> ``[B, T, output_dim]`` float32: sum of dequantised codes."""
        if self._tables is None:
            raise RuntimeError("ResidualLFQ.prepare() was not called after loading weights")
        cb, w, bias = self._tables
        n_q, b, t = codes.shape
        k = cb.shape[1]
        offsets = torch.arange(n_q, device=codes.device).view(n_q, 1, 1) * k
        rows = cb.flatten(0, 1)[codes + offsets]  # [n_q, B, T, Dc]
        rows = rows.view(n_q, b * t, -1)
        if w is None:
            x = rows.sum(0)
        else:
            # One batched matmul for all codebooks: [n_q, B*T, Dc] @ [n_q, Dc, R] + bias.
            x = torch.baddbmm(bias[:n_q, None, :], rows, w[:n_q].transpose(1, 2)).sum(0)
        x = x.view(b, t, -1)  # [B, T, R]
        if self.output_proj is not None:
            x = self.output_proj(x)
        return x
