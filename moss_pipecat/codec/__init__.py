"""MOSS-Audio-Tokenizer in plain PyTorch: encode, full decode, batched streaming decode."""

from moss_pipecat.codec.audio import pcm16, pcm16_bytes
from moss_pipecat.codec.config import CodecConfig, QuantizerConfig, StageConfig, real_config_dict
from moss_pipecat.codec.model import EncodedAudio, MossAudioCodec, codes_to_frames, frames_to_codes
from moss_pipecat.codec.streaming import CodecStreamState

__all__ = [
    "CodecConfig",
    "CodecStreamState",
    "EncodedAudio",
    "MossAudioCodec",
    "QuantizerConfig",
    "StageConfig",
    "codes_to_frames",
    "frames_to_codes",
    "pcm16",
    "pcm16_bytes",
    "real_config_dict",
]
