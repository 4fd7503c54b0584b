"""The engine's parts agree: the row layout with the model's config, the codec with both.

Every size and id comes from the checkpoints' files; a model, layout and codec from different
checkpoints (or a layout built by hand) would otherwise fail deep inside a tick, or worse,
decode silently wrong audio. ``check_parts`` turns that into one ``CheckpointError`` when the
engine is built.
"""

from __future__ import annotations

import math
from typing import Any

from moss_pipecat.codec.config import CodecConfig
from moss_pipecat.engine.rows import RowLayout
from moss_pipecat.errors import CheckpointError
from moss_pipecat.model.config import MossTTSRealtimeConfig
from moss_pipecat.speech.frames import FRAME_SECONDS


def check_parts(cfg: MossTTSRealtimeConfig, layout: RowLayout, codec: Any | None) -> None:
    """Raises ``CheckpointError`` unless ``layout`` uses the model's codebooks and audio ids,
    its text ids fit the model's vocabulary, and ``codec`` (a ``MossAudioCodec``; stand-ins
    without a ``CodecConfig`` are not checked) has the codebooks the model reads, codes for
    every id below the audio pad and frames of ``FRAME_SECONDS`` (the clock every layer and
    the wire count in)."""
    want = {
        "rvq": cfg.rvq,
        "audio_pad": cfg.audio_pad_token,
        "audio_bos": cfg.audio_bos,
        "audio_eos": cfg.audio_eos,
    }
    for name, value in want.items():
        if getattr(layout, name) != value:
            raise CheckpointError(
                f"row layout {name} {getattr(layout, name)} != the model config's {value}"
            )
    text = [layout.text_pad, layout.ref_audio_pad, layout.im_start, layout.im_end]
    text += [*layout.newline, *(i for ids in layout.roles.values() for i in ids)]
    vocab = cfg.language.vocab_size
    if vocab and not all(0 <= i < vocab for i in text):
        raise CheckpointError(f"row layout text ids {sorted(set(text))} outside vocab {vocab}")
    codec_cfg = getattr(codec, "config", None)
    if not isinstance(codec_cfg, CodecConfig):
        return
    q = codec_cfg.quantizer
    if q.num_quantizers < cfg.rvq:
        raise CheckpointError(
            f"the codec has {q.num_quantizers} quantizers, the model reads {cfg.rvq} codebooks"
        )
    if q.codebook_size < cfg.audio_pad_token:  # a larger codebook decodes every code too
        raise CheckpointError(
            f"the codec's codebooks hold {q.codebook_size} codes, the model's audio codes are "
            f"0..{cfg.audio_pad_token - 1}"
        )
    seconds = codec_cfg.downsample_rate / codec_cfg.sampling_rate
    if not math.isclose(seconds, FRAME_SECONDS, rel_tol=1e-9):
        raise CheckpointError(
            f"codec frames are {seconds * 1000:g} ms ({codec_cfg.downsample_rate} samples at "
            f"{codec_cfg.sampling_rate} Hz); MOSS frames are {FRAME_SECONDS * 1000:g} ms"
        )
