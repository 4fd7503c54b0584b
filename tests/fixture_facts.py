"""Audio facts of the fixture set under test, read from its files (never hard-coded: other sets
have other codebook counts, audio vocabularies and codec rates)."""

from __future__ import annotations

import json
from pathlib import Path


def tts_rvq(realtime_dir: Path) -> int:
    """The codebooks the TTS model reads per frame: the first ``rvq`` of the codec's quantizers."""
    return int(json.loads((realtime_dir / "config.json").read_text())["rvq"])


def frame_pcm_bytes(codec_dir: Path) -> int:
    """Bytes of one 80 ms frame of 16-bit PCM at the codec's rate (its hop x 2)."""
    return 2 * int(json.loads((codec_dir / "config.json").read_text())["downsample_rate"])
