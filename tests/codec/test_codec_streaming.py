"""Streaming and chunked codec paths on config variants the fixture does not cover.

Random weights, short windows that wrap many times within a few seconds, windows that are not
multiples of the chunk, no layer scale and no quantizer input projection: the streaming
decoder must still equal full decoding, and chunked encoding one pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moss_pipecat.codec import CodecConfig, MossAudioCodec
from moss_pipecat.codec.config import StageConfig

from ..fixture_facts import tts_rvq

FRAMES = 40


def variant(codec_dir: Path, duration: float, **changes) -> CodecConfig:
    cfg = json.loads((codec_dir / "config.json").read_text())
    cfg["causal_transformer_context_duration"] = duration
    if changes.get("no_layer_scale"):
        for m in cfg["encoder_kwargs"] + cfg["decoder_kwargs"]:
            if m["module_type"] == "Transformer":
                m["layer_scale"] = None
    if changes.get("no_input_proj"):  # and no output projection: every width the input's
        qk = cfg["quantizer_kwargs"]
        qk["rvq_dim"] = qk["output_dim"] = qk["input_dim"]
        first = next(m for m in cfg["decoder_kwargs"] if m["module_type"] == "Transformer")
        first["input_dimension"] = qk["input_dim"]
    return CodecConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def short_window(codec_dir: Path) -> MossAudioCodec:
    # 0.57 s: at 12.5 frames/s, windows of 7/14/28/56 steps, none a multiple of the chunks.
    cfg = variant(codec_dir, 0.57, no_layer_scale=True, no_input_proj=True)
    return MossAudioCodec.random(cfg, seed=3)


@pytest.fixture(scope="module")
def tts_codes(realtime_dir: Path, codec_dir: Path) -> torch.Tensor:
    """[rvq, 1, FRAMES] seeded codes of the codebooks the TTS decodes."""
    size = CodecConfig.from_dict(json.loads((codec_dir / "config.json").read_text()))
    shape = (tts_rvq(realtime_dir), 1, FRAMES)
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, size.quantizer.codebook_size, shape, generator=gen)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_variant_shapes(short_window: MossAudioCodec) -> None:
    keys = short_window.checkpoint_shapes()
    assert not any("layer_scale" in k for k in keys)
    assert not any(k.startswith(("quantizer.input_proj", "quantizer.output_proj")) for k in keys)
    stages = [m for m in short_window.config.decoder if isinstance(m, StageConfig)]
    assert max(m.context / m.steps_per_frame for m in stages) * 5 < FRAMES  # rings wrap often


@pytest.mark.parametrize(
    ("chunks", "max_frames_per_step"), [([1], 1), ([3], 3), ([1, 2, 5, 1, 3], 5), ([7], 2)]
)
def test_short_window_stream_equals_full(
    short_window: MossAudioCodec,
    tts_codes: torch.Tensor,
    chunks: list[int],
    max_frames_per_step: int,
) -> None:
    codec, codes = short_window, tts_codes
    full = codec.decode(codes)[0]
    state = codec.new_stream_state(capacity=2, max_frames_per_step=max_frames_per_step)
    state.add_stream()  # slot 0 stays idle: the stream under test runs in row 1
    slot = state.add_stream()
    out, f, i = [], 0, 0
    while f < FRAMES:
        n = min(chunks[i % len(chunks)], FRAMES - f)
        out.append(codec.decode_step(state, codes[:, :, f : f + n], [slot]))
        f, i = f + n, i + 1
    assert rel_err(torch.cat(out, dim=1), full) < 1e-5


def test_short_window_matters(
    short_window: MossAudioCodec, codec_dir: Path, tts_codes: torch.Tensor
) -> None:
    """Same weights with a long window decode differently: the window is really applied."""
    long_window = MossAudioCodec.random(
        variant(codec_dir, 100.0, no_layer_scale=True, no_input_proj=True)
    )
    long_window.load_state_dict(short_window.state_dict())
    long_window.quantizer.prepare()
    codes = tts_codes
    assert rel_err(long_window.decode(codes), short_window.decode(codes)) > 1e-3


@pytest.mark.parametrize("chunk_frames", [1, 4, 9])
def test_short_window_chunked_encode(
    short_window: MossAudioCodec, realtime_dir: Path, chunk_frames: int
) -> None:
    codec = short_window
    wav = 0.3 * torch.randn(
        2, 1, codec.samples_per_frame * 30 + 100, generator=torch.Generator().manual_seed(1)
    )
    one = codec.encode(wav, codec.sampling_rate, chunk_frames=1000)
    chunked = codec.encode(wav, codec.sampling_rate, chunk_frames=chunk_frames)
    assert rel_err(chunked.hidden, one.hidden) < 1e-5
    rvq = tts_rvq(realtime_dir)
    assert (chunked.codes[:rvq] != one.codes[:rvq]).float().mean() < 0.01
    assert one.codes.shape[-1] == 31 and one.lengths.tolist() == [30, 30]
