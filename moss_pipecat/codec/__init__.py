"""MOSS-Audio-Tokenizer in plain PyTorch: encode, full decode, batched streaming decode.

Typical use::

    codec = MossAudioCodec.from_pretrained("OpenMOSS-Team/MOSS-Audio-Tokenizer", device="cuda")
    ref = codec.encode_frames(wav, sample_rate, rvq)       # [T, rvq] int64, frame-major
    audio = codec.decode(codes)                            # codes [Q, B, T] -> [B, 1, T*hop]

    state = codec.new_stream_state(capacity=32)           # one per engine
    slot = state.add_stream()                              # one per call
    chunk = codec.decode_step(state, codes_qbt, [slot, ...])   # [B, T*hop] float32
    pcm = pcm16_bytes(chunk[0])                            # int16 at codec.sampling_rate

``hop`` = ``downsample_rate`` (80 ms of samples: 1920 at upstream's 24 kHz); ``rvq`` = the TTS
model's codebooks per frame (16 upstream).
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
