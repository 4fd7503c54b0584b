"""MOSS-Audio-Tokenizer configuration: parsed from the checkpoint's ``config.json``.

Only what the model uses is kept. Keys the upstream config carries but the model ignores
(``code_dim``, ``reversed_decoder_kwargs``, ``model_type``, ``auto_map``, ...) are dropped.
Anything the architecture does not support (gating, RMSNorm, sinusoidal positions,
non-causal stages, other quantizer types) raises ``CheckpointError`` instead of being
silently mis-run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moss_pipecat.errors import CheckpointError

SUPPORTED_QUANTIZERS = ("rlfq", "random_prefix_rlfq")  # identical at inference time


@dataclass(frozen=True)
class PatchConfig:
    """``PatchedPretransform``: folds ``patch_size`` time steps into channels (or back)."""

    patch_size: int


@dataclass(frozen=True)
class StageConfig:
    """A projected causal ``Transformer`` stage.

    Attributes:
        context: attention window in steps of this stage (query p sees keys p-context+1..p).
        steps_per_frame: time steps of this stage per 80 ms codec frame.
    """

    input_dimension: int
    output_dimension: int
    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    max_period: float
    layer_scale: float | None
    context: int
    steps_per_frame: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


Module = PatchConfig | StageConfig


@dataclass(frozen=True)
class QuantizerConfig:
    """Residual LFQ: ``num_quantizers`` codebooks of ``codebook_size`` x ``codebook_dim``."""

    num_quantizers: int
    codebook_size: int
    codebook_dim: int
    input_dim: int
    rvq_dim: int
    output_dim: int


@dataclass(frozen=True)
class CodecConfig:
    """The whole codec: encoder and decoder module lists (run in order) and the quantizer."""

    sampling_rate: int
    downsample_rate: int
    context_duration: float
    encoder: tuple[Module, ...]
    decoder: tuple[Module, ...]
    quantizer: QuantizerConfig
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.downsample_rate

    @property
    def hidden_dim(self) -> int:
        """Channels of the encoder output (= quantizer input)."""
        return self.quantizer.input_dim

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CodecConfig:
        """Parses an upstream ``config.json`` dict.

        Raises:
            CheckpointError: a key is missing, a value is invalid or a feature is unsupported.
        """
        try:
            return _parse(d)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"invalid codec config: {type(e).__name__}: {e}") from e


def _parse(d: dict[str, Any]) -> CodecConfig:
    sr = int(d["sampling_rate"])
    downsample = int(d["downsample_rate"])
    duration = float(d["causal_transformer_context_duration"])
    if sr <= 0 or downsample <= 0 or not math.isfinite(duration) or duration <= 0:
        raise CheckpointError(
            f"invalid codec config: sampling_rate={sr}, downsample_rate={downsample}, "
            f"causal_transformer_context_duration={duration}"
        )
    qk = dict(d["quantizer_kwargs"])
    qtype = qk.get("quantizer_type", d.get("quantizer_type", "rvq"))
    if qtype not in SUPPORTED_QUANTIZERS:
        raise CheckpointError(f"unsupported quantizer_type {qtype!r} (supported: rlfq)")
    input_dim = int(qk["input_dim"])
    quantizer = QuantizerConfig(
        num_quantizers=int(qk["num_quantizers"]),
        codebook_size=int(qk["codebook_size"]),
        codebook_dim=int(qk["codebook_dim"]),
        input_dim=input_dim,
        rvq_dim=int(qk.get("rvq_dim") or input_dim),
        output_dim=int(qk.get("output_dim") or input_dim),
    )
    if min(quantizer.num_quantizers, quantizer.codebook_size, quantizer.codebook_dim) <= 0:
        raise CheckpointError(f"invalid quantizer config {qk}")

    # The context of each stage follows upstream's float frame-rate bookkeeping exactly
    # (sampling rate divided by each patch in turn), so int() truncates the same way.
    rate = float(sr)
    samples_per_step = 1
    encoder: list[Module] = []
    for i, m in enumerate(d["encoder_kwargs"]):
        mod = _parse_module(m, f"encoder.{i}", rate, duration, downsample // samples_per_step)
        if isinstance(mod, PatchConfig):
            rate /= mod.patch_size
            samples_per_step *= mod.patch_size
        encoder.append(mod)
    if samples_per_step != downsample:
        raise CheckpointError(
            f"encoder patches multiply to {samples_per_step}, not downsample_rate {downsample}"
        )
    decoder: list[Module] = []
    steps_per_frame = 1
    for i, m in enumerate(d["decoder_kwargs"]):
        mod = _parse_module(m, f"decoder.{i}", rate, duration, steps_per_frame)
        if isinstance(mod, PatchConfig):
            rate *= mod.patch_size
            steps_per_frame *= mod.patch_size
        decoder.append(mod)
    if steps_per_frame != downsample:
        raise CheckpointError(
            f"decoder patches multiply to {steps_per_frame}, not downsample_rate {downsample}"
        )
    _check_dims(encoder, 1, quantizer.input_dim, "encoder")
    _check_dims(decoder, quantizer.output_dim, 1, "decoder")
    used = {
        "sampling_rate",
        "downsample_rate",
        "causal_transformer_context_duration",
        "quantizer_kwargs",
        "encoder_kwargs",
        "decoder_kwargs",
    }
    return CodecConfig(
        sampling_rate=sr,
        downsample_rate=downsample,
        context_duration=duration,
        encoder=tuple(encoder),
        decoder=tuple(decoder),
        quantizer=quantizer,
        extra={k: v for k, v in d.items() if k not in used},
    )


def _parse_module(
    m: dict[str, Any], name: str, rate: float, duration: float, steps_per_frame: int
) -> Module:
    kind = m["module_type"]
    if kind == "PatchedPretransform":
        p = int(m["patch_size"])
        if p <= 0:
            raise CheckpointError(f"{name}: patch_size must be positive, got {p}")
        return PatchConfig(p)
    if kind != "Transformer":
        raise CheckpointError(f"{name}: unsupported module_type {kind!r}")
    unsupported = {
        "causal": (m.get("causal", False), True),
        "gating": (m.get("gating", "none"), "none"),
        "norm": (m.get("norm", "layer_norm"), "layer_norm"),
        "positional_embedding": (m.get("positional_embedding", "sin"), "rope"),
        "weights_per_step": (m.get("weights_per_step", 0), 0),
    }
    for key, (got, want) in unsupported.items():
        if got != want:
            raise CheckpointError(f"{name}: unsupported {key}={got!r} (only {want!r})")
    d_model, heads = int(m["d_model"]), int(m["num_heads"])
    if heads <= 0 or d_model % heads or (d_model // heads) % 2:
        raise CheckpointError(
            f"{name}: d_model {d_model} must split into {heads} heads of even size"
        )
    context = int(rate * duration)
    if context <= 0:
        raise CheckpointError(f"{name}: attention context {context} steps is not positive")
    ls = m.get("layer_scale")
    return StageConfig(
        input_dimension=int(m["input_dimension"]),
        output_dimension=int(m["output_dimension"]),
        d_model=d_model,
        num_heads=heads,
        num_layers=int(m["num_layers"]),
        dim_feedforward=int(m["dim_feedforward"]),
        max_period=float(m.get("max_period", 10_000)),
        layer_scale=None if ls is None else float(ls),
        context=context,
        steps_per_frame=steps_per_frame,
    )


def _check_dims(mods: list[Module], channels: int, out_channels: int, side: str) -> None:
    """Walks the channel count through the module list so a bad config fails at load time."""
    for i, m in enumerate(mods):
        if isinstance(m, PatchConfig):
            if side == "encoder":
                channels *= m.patch_size
            else:
                if channels % m.patch_size:
                    raise CheckpointError(
                        f"{side}.{i}: {channels} channels do not unfold by patch {m.patch_size}"
                    )
                channels //= m.patch_size
        else:
            if m.input_dimension != channels:
                raise CheckpointError(
                    f"{side}.{i}: input_dimension {m.input_dimension} != {channels} channels"
                )
            channels = m.output_dimension
    if channels != out_channels:
        raise CheckpointError(f"{side} ends with {channels} channels, expected {out_channels}")


def _stage(inp: int, out: int, d: int, heads: int, layers: int, ff: int) -> dict[str, Any]:
    return {
        "module_type": "Transformer",
        "input_dimension": inp,
        "output_dimension": out,
        "d_model": d,
        "num_heads": heads,
        "num_layers": layers,
        "dim_feedforward": ff,
        "causal": True,
        "conv_layout": True,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "max_period": 10000,
        "layer_scale": 0.01,
    }


def _patch(p: int) -> dict[str, Any]:
    return {"module_type": "PatchedPretransform", "patch_size": p}


def real_config_dict() -> dict[str, Any]:
    """Dimensions of the published ``OpenMOSS-Team/MOSS-Audio-Tokenizer`` checkpoint.

    Used to build a real-sized model on ``meta`` (parameter counts) or with random weights
    (benchmarks) without downloading 7 GB. The layer-scale init value is irrelevant there.
    """
    small = (768, 12, 12, 3072)  # d_model, heads, layers, ff of the 768-wide stages
    big = (1280, 20, 32, 5120)
    return {
        "sampling_rate": 24000,
        "downsample_rate": 1920,
        "causal_transformer_context_duration": 10.0,
        "quantizer_type": "rlfq",
        "quantizer_kwargs": {
            "quantizer_type": "rlfq",
            "num_quantizers": 32,
            "codebook_size": 1024,
            "codebook_dim": 8,
            "input_dim": 768,
            "rvq_dim": 512,
            "output_dim": 768,
        },
        "encoder_kwargs": [
            _patch(240),
            _stage(240, 384, *small),
            _patch(2),
            _stage(768, 384, *small),
            _patch(2),
            _stage(768, 640, *small),
            _patch(2),
            _stage(1280, 768, *big),
        ],
        "decoder_kwargs": [
            _stage(768, 1280, *big),
            _patch(2),
            _stage(640, 768, *small),
            _patch(2),
            _stage(384, 768, *small),
            _patch(2),
            _stage(384, 240, *small),
            _patch(240),
        ],
    }
