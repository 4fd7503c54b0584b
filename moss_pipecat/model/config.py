"""Model configuration, read from the checkpoint's ``config.json`` (upstream key names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moss_pipecat.errors import CheckpointError

# Defaults of upstream's local-transformer config class (a checkpoint may omit any of them).
LOCAL_DEFAULTS: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 6144,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 33,
    "rope_theta": 1e6,  # upstream builds rope_parameters from these when it is absent
    "rope_type": "linear",
}


@dataclass(frozen=True)
class TransformerConfig:
    """One Qwen3-style decoder stack (the backbone or the local transformer)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    # "linear" RoPE scaling divides positions by this factor; 1.0 is plain RoPE.
    rope_scaling_factor: float = 1.0
    max_position_embeddings: int = 40960
    vocab_size: int = 0  # text vocabulary of the backbone; unused by the local transformer

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        for name in ("hidden_size", "num_hidden_layers", "head_dim", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        try:
            rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
            theta = rope.get("rope_theta", d.get("rope_theta", 1e6))
            rope_type = rope.get("rope_type", d.get("rope_type", "default"))
            if rope_type not in ("default", "linear"):
                raise CheckpointError(f"unsupported rope_type {rope_type!r}")
            factor = float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0
            heads = int(d["num_attention_heads"])
            return cls(
                hidden_size=int(d["hidden_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads", heads)),
                head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
                intermediate_size=int(d["intermediate_size"]),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                rope_scaling_factor=factor,
                max_position_embeddings=int(d.get("max_position_embeddings", 40960)),
                vocab_size=int(d.get("vocab_size", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"invalid transformer config: {e!r}") from e


@dataclass(frozen=True)
class MossTTSRealtimeConfig:
    """MOSS-TTS-Realtime: Qwen3 backbone over 17-channel rows + local (depth) transformer."""

    language: TransformerConfig
    local: TransformerConfig
    rvq: int = 16
    audio_vocab_size: int = 1027
    audio_pad_token: int = 1024
    text_pad: int = 151655
    reference_audio_pad: int = 151654
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.local.hidden_size != self.language.hidden_size:
            raise CheckpointError(
                f"local hidden_size {self.local.hidden_size} != backbone hidden_size "
                f"{self.language.hidden_size}"
            )
        # Pad, BOS and EOS follow the codes: a vocabulary without room for EOS would fail deep
        # inside the first turn (its EOS mask), not here.
        if self.rvq < 1 or self.audio_pad_token < 1 or self.audio_vocab_size < self.audio_eos + 1:
            raise CheckpointError(
                f"invalid audio config: rvq {self.rvq}, audio_pad_token {self.audio_pad_token}, "
                f"audio_vocab_size {self.audio_vocab_size} (need rvq >= 1 and room for pad, "
                "BOS and EOS after the codes)"
            )

    # Audio special ids follow the pad id (upstream convention: pad, BOS, EOS).
    @property
    def audio_bos(self) -> int:
        return self.audio_pad_token + 1

    @property
    def audio_eos(self) -> int:
        return self.audio_pad_token + 2

    @property
    def channels(self) -> int:
        """Ids per row: text + one per codebook."""
        return self.rvq + 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MossTTSRealtimeConfig:
        try:
            language = TransformerConfig.from_dict(d["language_config"])
            # Missing local keys take the upstream local-transformer config class defaults.
            local_d = {**LOCAL_DEFAULTS, **(d.get("local_config") or {})}
            local = TransformerConfig.from_dict(local_d)
            return cls(
                language=language,
                local=local,
                rvq=int(d.get("rvq", 16)),
                audio_vocab_size=int(d.get("audio_vocab_size", 1027)),
                audio_pad_token=int(d.get("audio_pad_token", 1024)),
                text_pad=int(d.get("text_pad", 151655)),
                reference_audio_pad=int(d.get("reference_audio_pad", 151654)),
                extra={k: v for k, v in d.items() if k not in ("language_config", "local_config")},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"invalid MOSS-TTS-Realtime config: missing/bad {e!r}") from e

    @classmethod
    def real(cls) -> MossTTSRealtimeConfig:
        """The published OpenMOSS-Team/MOSS-TTS-Realtime sizes (Qwen3-1.7B backbone)."""
        qwen = dict(
            hidden_size=2048,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=6144,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_theta": 1e6, "rope_type": "default"},
        )
        return cls.from_dict(
            {
                "language_config": {
                    **qwen,
                    "num_hidden_layers": 28,
                    "vocab_size": 151936,
                    "max_position_embeddings": 40960,
                },
                "local_config": {**qwen, "num_hidden_layers": 4, "max_position_embeddings": 33},
                "rvq": 16,
                "audio_vocab_size": 1027,
                "audio_pad_token": 1024,
                "text_pad": 151655,
                "reference_audio_pad": 151654,
            }
        )
