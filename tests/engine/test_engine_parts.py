"""An engine is built only on parts that agree: the row layout with the model's config, the
codec with both (every size and id read from the fixture files; a mismatch is one clear
``CheckpointError`` up front, not a failure deep inside a tick or silently wrong audio)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from moss_pipecat.codec import CodecConfig, MossAudioCodec
from moss_pipecat.engine import MossEngine
from moss_pipecat.errors import CheckpointError
from moss_pipecat.testing import FixtureSpec
from moss_pipecat.testing.fixtures import codec_config


def _codec(codec_dir: Path, **changes) -> MossAudioCodec:
    """A codec (on ``meta``: only its config matters here) from the fixture's config.json
    with ``changes`` applied (``quantizer.KEY`` for a quantizer key)."""
    d = json.loads((codec_dir / "config.json").read_text())
    for key, value in changes.items():
        part, _, name = key.rpartition(".")
        (d["quantizer_kwargs"] if part == "quantizer" else d)[name] = value
    with torch.device("meta"):
        return MossAudioCodec(CodecConfig.from_dict(d))


def test_the_fixture_parts_agree(tiny_model, golden_layout, codec_dir):
    MossEngine(tiny_model, golden_layout, codec=_codec(codec_dir))  # not started: no thread


@pytest.mark.parametrize("name", ["rvq", "audio_pad", "audio_bos", "audio_eos"])
def test_a_layout_off_the_models_audio_ids_is_refused(tiny_model, golden_layout, name):
    bad = dataclasses.replace(golden_layout, **{name: getattr(golden_layout, name) + 1})
    with pytest.raises(CheckpointError, match=name):
        MossEngine(tiny_model, bad)


@pytest.mark.parametrize("name", ["text_pad", "im_end", "newline"])
def test_a_layout_text_id_outside_the_vocab_is_refused(tiny_model, golden_layout, name):
    vocab = tiny_model.cfg.language.vocab_size
    value = (vocab,) if name == "newline" else vocab
    with pytest.raises(CheckpointError, match=f"outside vocab {vocab}"):
        MossEngine(tiny_model, dataclasses.replace(golden_layout, **{name: value}))


def test_a_codec_with_fewer_quantizers_than_codebooks_is_refused(
    tiny_model, golden_layout, codec_dir
):
    rvq = tiny_model.cfg.rvq
    if rvq == 1:
        pytest.skip("one codebook: a codec has at least one quantizer")
    with pytest.raises(CheckpointError, match=f"{rvq - 1} quantizers"):
        MossEngine(
            tiny_model,
            golden_layout,
            codec=_codec(codec_dir, **{"quantizer.num_quantizers": rvq - 1}),
        )
    MossEngine(
        tiny_model, golden_layout, codec=_codec(codec_dir, **{"quantizer.num_quantizers": rvq})
    )


def test_a_codec_whose_codebooks_miss_audio_codes_is_refused(tiny_model, golden_layout, codec_dir):
    size = tiny_model.cfg.audio_pad_token // 2
    with pytest.raises(CheckpointError, match=f"hold {size} codes"):
        MossEngine(
            tiny_model, golden_layout, codec=_codec(codec_dir, **{"quantizer.codebook_size": size})
        )


def test_a_codec_with_other_frames_is_refused(tiny_model, golden_layout, codec_dir):
    # The hop is fixed by the encoder's patches; another rate makes frames of another length.
    rate = json.loads((codec_dir / "config.json").read_text())["sampling_rate"]
    with pytest.raises(CheckpointError, match="MOSS frames are 80 ms"):
        MossEngine(tiny_model, golden_layout, codec=_codec(codec_dir, sampling_rate=rate * 2))


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_a_codec_at_another_rate_with_80_ms_frames_is_accepted(tiny_model, golden_layout, rate):
    """Frames must be 80 ms, not 24 kHz: a codec at ``rate`` whose hop is 80 ms of it (its
    first patch hop / 8) serves the model; the service resamples its output to the pipeline's
    rate and user audio to the codec's."""
    cfg = tiny_model.cfg
    spec = FixtureSpec(rvq=cfg.rvq, audio_codebook_size=cfg.audio_pad_token, codec_rate=rate)
    d = codec_config(spec.resolved(), random.Random(0))
    assert d["downsample_rate"] == rate * 8 // 100
    with torch.device("meta"):
        codec = MossAudioCodec(CodecConfig.from_dict(d))
    MossEngine(tiny_model, golden_layout, codec=codec)  # not started: no thread
