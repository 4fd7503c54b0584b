"""MOSS-Audio-Tokenizer in plain PyTorch: encode, full decode, batched streaming decode.

Typical use::

    codec = MossAudioCodec.from_pretrained("OpenMOSS-Team/MOSS-Audio-Tokenizer", device="cuda")
    ref = codec.encode_frames(wav, sample_rate)            # [T, 16] int64, frame-major
    audio = codec.decode(codes)                            # codes [Q, B, T] -> [B, 1, T*1920]

    state = codec.new_stream_state(capacity=32)           # one per engine
    slot = state.add_stream()                              # one per call
    chunk = codec.decode_step(state, codes_qbt, [slot, ...])   # [B, T*1920] float32
    pcm = pcm16_bytes(chunk[0])                            # 24 kHz int16 for pipecat
    state.remove_stream(slot)
"""

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
