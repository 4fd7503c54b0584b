"""MOSS-TTS-Realtime in plain PyTorch: config, backbone, local transformer, KV cache, sampling."""

from moss_pipecat.model.config import MossTTSRealtimeConfig, TransformerConfig
from moss_pipecat.model.generate import FrameHistory, TurnResult, generate_turn
from moss_pipecat.model.kv_cache import KVCache
from moss_pipecat.model.moss_tts import IGNORED_KEYS, MossTTSRealtime
from moss_pipecat.model.sampling import BatchSampling, NoiseKeys, SamplingParams

__all__ = [
    "IGNORED_KEYS",
    "BatchSampling",
    "FrameHistory",
    "KVCache",
    "MossTTSRealtime",
    "MossTTSRealtimeConfig",
    "NoiseKeys",
    "SamplingParams",
    "TransformerConfig",
    "TurnResult",
    "generate_turn",
]
