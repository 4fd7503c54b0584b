"""Codec API: input validation, checkpoint loading errors, stream-slot management, PCM output."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

from moss_pipecat.codec import MossAudioCodec, pcm16, pcm16_bytes
from moss_pipecat.errors import (
    CapacityError,
    CheckpointError,
    ConfigMismatchError,
    InvalidInputError,
)

from ..fixture_facts import tts_rvq


@pytest.fixture(scope="module")
def codec(codec_dir: Path) -> MossAudioCodec:
    return MossAudioCodec.from_pretrained(codec_dir)


@pytest.fixture
def ckpt_copy(codec_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "codec"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(codec_dir / name, d / name)
    return d


@pytest.fixture(scope="module")
def rvq(realtime_dir: Path) -> int:
    return tts_rvq(realtime_dir)


def codes_of(codec: MossAudioCodec, n_q: int, t: int = 3) -> torch.Tensor:
    size = codec.config.quantizer.codebook_size
    return torch.randint(0, size, (n_q, 1, t), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------- loading


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        MossAudioCodec.from_pretrained(tmp_path / "nowhere")


def test_load_missing_config(ckpt_copy: Path) -> None:
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        MossAudioCodec.from_pretrained(ckpt_copy)


def test_load_missing_weights(ckpt_copy: Path) -> None:
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        MossAudioCodec.from_pretrained(ckpt_copy)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_load_corrupt_weights(ckpt_copy: Path, damage: str) -> None:
    f = ckpt_copy / "model.safetensors"
    if damage == "garbage":
        f.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        MossAudioCodec.from_pretrained(ckpt_copy)


def _edit_config(d: Path, edit) -> None:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_load_mismatched_d_model(ckpt_copy: Path) -> None:
    def widen(cfg: dict) -> None:
        stage = next(m for m in cfg["decoder_kwargs"] if m["module_type"] == "Transformer")
        stage["d_model"] += 2 * stage["num_heads"]  # still splits into even heads

    _edit_config(ckpt_copy, widen)
    with pytest.raises(ConfigMismatchError, match="wrong shapes"):
        MossAudioCodec.from_pretrained(ckpt_copy)


def test_load_mismatched_quantizer_count(ckpt_copy: Path) -> None:
    q = json.loads((ckpt_copy / "config.json").read_text())["quantizer_kwargs"]["num_quantizers"]
    fewer = q > 1  # fewer quantizers than stored: their tensors are unexpected; more: missing
    n = 1 if fewer else 2
    _edit_config(ckpt_copy, lambda cfg: cfg["quantizer_kwargs"].update(num_quantizers=n))
    with pytest.raises(ConfigMismatchError, match="unexpected" if fewer else "missing"):
        MossAudioCodec.from_pretrained(ckpt_copy)


def test_load_missing_and_extra_tensors(ckpt_copy: Path) -> None:
    f = ckpt_copy / "model.safetensors"
    state = load_file(f)
    removed = sorted(state)[0]
    del state[removed]
    state["decoder.0.something_new"] = torch.zeros(2)
    save_file(state, f)
    with pytest.raises(ConfigMismatchError, match="missing.*unexpected"):
        MossAudioCodec.from_pretrained(ckpt_copy)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c["decoder_kwargs"][0].update(gating="silu"), "gating"),
        (lambda c: c["decoder_kwargs"][0].update(norm="rms_norm"), "norm"),
        (lambda c: c["quantizer_kwargs"].update(quantizer_type="rvq"), "quantizer_type"),
        (lambda c: c.update(downsample_rate=c["downsample_rate"] * 2), "downsample_rate"),
        (lambda c: c.pop("encoder_kwargs"), "encoder_kwargs"),
        (lambda c: c["decoder_kwargs"][0].update(num_heads=7), "heads"),
    ],
)
def test_load_invalid_config(ckpt_copy: Path, edit, match: str) -> None:
    _edit_config(ckpt_copy, edit)
    with pytest.raises(CheckpointError, match=match) as info:
        MossAudioCodec.from_pretrained(ckpt_copy)
    assert not isinstance(info.value, ConfigMismatchError)  # caught before the weights


def test_load_folds_weight_norm(codec: MossAudioCodec, codec_dir: Path) -> None:
    raw = load_file(codec_dir / "model.safetensors")
    prefix = "quantizer.quantizers.0.in_proj"
    g = raw[prefix + ".parametrizations.weight.original0"]
    v = raw[prefix + ".parametrizations.weight.original1"]
    w = g * v / v.norm(dim=(1, 2), keepdim=True)  # [out, in, 1]
    got = codec.quantizer.quantizers[0].in_proj.weight
    assert torch.allclose(got, w[..., 0], atol=1e-6)
    assert codec.num_parameters() < sum(t.numel() for t in raw.values())


def test_load_dtype(codec_dir: Path, codec_golden: dict) -> None:
    bf = MossAudioCodec.from_pretrained(codec_dir, dtype=torch.bfloat16)
    assert bf.decoder_dtype == torch.bfloat16
    assert bf.quantizer.quantizers[0].codebook.weight.dtype == torch.float32
    wav = bf.decode(codec_golden["decode.codes"])
    assert wav.dtype == torch.float32
    assert (wav - codec_golden["decode.wav"]).abs().max() < 0.1 * codec_golden[
        "decode.wav"
    ].abs().max()
    with pytest.raises(InvalidInputError):
        MossAudioCodec.from_pretrained(codec_dir, dtype=torch.int32)


# ---------------------------------------------------------------------- bad codes


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda c, size: c.clone().fill_(size), "must be in 0"),
        (lambda c, size: c.clone().fill_(-1), "must be in 0"),
        (lambda c, size: c[0], None),  # [Q, T] is accepted by decode() as one clip
        (lambda c, size: c[:, 0, 0], "num_quantizers, batch, frames"),
        (lambda c, size: c[None], "num_quantizers, batch, frames"),
        (lambda c, size: c.float(), "integer"),
        (lambda c, size: c.bool(), "integer"),
        (lambda c, size: c[:, :, :0], "empty"),
        (lambda c, size: c[:0], "quantizers"),
        (lambda c, size: c.repeat(3, 1, 1), "quantizers"),
        (lambda c, size: c.tolist(), "torch.Tensor"),
    ],
)
def test_decode_bad_codes(codec: MossAudioCodec, make, match: str | None) -> None:
    qc = codec.config.quantizer
    codes = codes_of(codec, n_q=qc.num_quantizers)
    bad = make(codes, qc.codebook_size)
    if match is None:
        assert codec.decode(bad).shape == (1, 1, codes.shape[-1] * codec.samples_per_frame)
        return
    with pytest.raises(InvalidInputError, match=match):
        codec.decode(bad)


def test_decode_step_bad_codes(codec: MossAudioCodec, rvq: int) -> None:
    state = codec.new_stream_state(capacity=2)
    slot = state.add_stream()
    codes = codes_of(codec, rvq, t=1)
    with pytest.raises(InvalidInputError, match="must be in 0"):
        codec.decode_step(state, codes + codec.config.quantizer.codebook_size, [slot])
    with pytest.raises(InvalidInputError, match="num_quantizers, batch, frames"):
        codec.decode_step(state, codes[:, 0], [slot])
    assert state.frames_decoded(slot) == 0  # rejected calls did not advance the stream


# ---------------------------------------------------------------------- bad audio


@pytest.mark.parametrize(
    ("wav", "match"),
    [
        (torch.zeros(0), "empty"),
        (torch.zeros(1, 0), "empty"),
        (torch.zeros(0, 1, 100), "empty"),
        (torch.tensor([0.0, float("nan"), 0.1] * 1000), "NaN or infinite"),
        (torch.tensor([0.0, float("inf"), 0.1] * 1000), "NaN or infinite"),
        (torch.zeros(4000, 2), "channel layout"),  # [samples, channels] mix-up
        (torch.zeros(1, 1, 1, 4000), "shape"),
        (torch.zeros((), dtype=torch.float32), "shape"),
        (torch.zeros(4000, dtype=torch.int32), "float"),
        ([0.0] * 4000, "torch.Tensor or numpy"),
    ],
)
def test_encode_bad_audio(codec: MossAudioCodec, wav, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        codec.encode(wav, codec.sampling_rate)


@pytest.mark.parametrize("rate", [0, -16000, 22050.5, math.nan, math.inf, "24000", None, 10**7])
def test_encode_bad_sample_rate(codec: MossAudioCodec, rate) -> None:
    with pytest.raises(InvalidInputError, match="sample_rate"):
        codec.encode(torch.zeros(4000), rate)


@pytest.mark.parametrize("n", [0, -1, 33, 2.0, True])
def test_encode_bad_num_quantizers(codec: MossAudioCodec, n) -> None:
    bad = n if n != 33 else codec.config.quantizer.num_quantizers + 1
    with pytest.raises(InvalidInputError, match="num_quantizers"):
        codec.encode(torch.zeros(4000), codec.sampling_rate, num_quantizers=bad)


def test_encode_accepts_numpy_and_short_clips(codec: MossAudioCodec, rvq: int) -> None:
    hop = codec.samples_per_frame
    enc = codec.encode(np.zeros(hop // 2, dtype=np.float32), codec.sampling_rate)
    assert enc.codes.shape[-1] == 1 and int(enc.lengths[0]) == 0  # only a partial frame
    assert codec.encode_frames(torch.zeros(hop // 2), codec.sampling_rate, rvq).shape == (0, rvq)
    with pytest.raises(InvalidInputError, match="one clip"):
        codec.encode_frames(torch.zeros(2, 1, hop), codec.sampling_rate, rvq)
    with pytest.raises(InvalidInputError, match="chunk_frames"):
        codec.encode(torch.zeros(hop), codec.sampling_rate, chunk_frames=0)


# ---------------------------------------------------------------------- stream slots


def test_stream_slots(codec: MossAudioCodec, rvq: int) -> None:
    state = codec.new_stream_state(capacity=2)
    a, b = state.add_stream(), state.add_stream()
    assert (a, b) == (0, 1) and state.active_slots == [0, 1]
    with pytest.raises(CapacityError):
        state.add_stream()
    codes = codes_of(codec, rvq, t=1)
    with pytest.raises(InvalidInputError, match="distinct"):
        codec.decode_step(state, torch.cat([codes, codes], 1), [a, a])
    with pytest.raises(InvalidInputError, match="slots for a batch"):
        codec.decode_step(state, codes, [a, b])
    state.remove_stream(a)
    with pytest.raises(InvalidInputError, match="not active"):
        codec.decode_step(state, codes, [a])
    with pytest.raises(InvalidInputError, match="not an active"):
        state.remove_stream(a)
    with pytest.raises(InvalidInputError, match="not an active"):
        state.frames_decoded(a)
    out = codec.decode_step(state, codes, [b])
    assert out.shape == (1, codec.samples_per_frame) and out.dtype == torch.float32
    assert state.frames_decoded(b) == 1
    assert state.add_stream() == a  # lowest free slot again, as a fresh stream
    assert state.frames_decoded(a) == 0
    with pytest.raises(InvalidInputError):
        codec.new_stream_state(capacity=0)
    with pytest.raises(InvalidInputError):
        codec.new_stream_state(capacity=1, max_frames_per_step=0)


def test_add_streams_claims_and_resets_like_add_stream(codec: MossAudioCodec, rvq: int) -> None:
    """``add_streams(n)``: the slots n ``add_stream`` calls give, reset together (the engine
    starts a tick's new turns at once)."""
    one, many = codec.new_stream_state(capacity=5), codec.new_stream_state(capacity=5)
    codes = codes_of(codec, rvq, t=1).repeat(1, 5, 1)
    for state in (one, many):
        slots = [state.add_stream() for _ in range(5)]
        codec.decode_step(state, codes, slots)  # every ring holds something now
        for slot in (1, 3):
            state.remove_stream(slot)
    assert [one.add_stream(), one.add_stream()] == many.add_streams(2) == [1, 3]
    for state in (one, many):
        assert state.active_slots == [0, 1, 2, 3, 4]
        assert [state.frames_decoded(s) for s in range(5)] == [1, 0, 1, 0, 1]
    for k1, k2 in zip(one.rings.k + one.rings.v, many.rings.k + many.rings.v, strict=True):
        if k1 is not None:
            assert torch.equal(k1, k2) and not bool(k1[:, 1].any()) and bool(k1[:, 0].any())
    assert torch.equal(one.rings.frames, many.rings.frames)
    assert many.add_streams(0) == []
    many.remove_stream(4)
    with pytest.raises(CapacityError):
        many.add_streams(2)
    assert many.active_slots == [0, 1, 2, 3]  # a refused call claims nothing


def test_stream_state_is_static_and_bounded(codec: MossAudioCodec, rvq: int) -> None:
    """Ring shapes never change and hold exactly context + chunk - 1 steps per layer."""
    state = codec.new_stream_state(capacity=1, max_frames_per_step=2)
    per_stream = state.bytes_per_stream()
    expected = 0
    for m in codec.config.decoder:
        if hasattr(m, "context"):
            size = m.context + 2 * m.steps_per_frame - 1
            expected += 2 * m.num_layers * m.num_heads * size * m.head_dim * 4
    assert per_stream == expected
    shapes = [None if k is None else k.shape for k in state.rings.k]
    slot = state.add_stream()
    longest = max(
        m.context // m.steps_per_frame for m in codec.config.decoder if hasattr(m, "context")
    )
    codes = codes_of(codec, rvq, t=2 * longest + 3)
    for f in range(0, codes.shape[-1], 2):
        codec.decode_step(state, codes[:, :, f : f + 2], [slot], check=False)
    assert [None if k is None else k.shape for k in state.rings.k] == shapes
    assert state.bytes_per_stream() == per_stream
    assert state.frames_decoded(slot) == codes.shape[-1]


# ---------------------------------------------------------------------- PCM output


def test_pcm16() -> None:
    wav = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0])
    ints = pcm16(wav)
    assert ints.dtype == torch.int16
    assert ints.tolist() == [-32767, -32767, -16384, 0, 8192, 32767, 32767]
    raw = pcm16_bytes(wav[None, None])
    assert len(raw) == 2 * wav.numel()
    assert np.frombuffer(raw, dtype="<i2").tolist() == ints.tolist()


def test_decode_output_to_pcm(codec: MossAudioCodec, codec_golden: dict) -> None:
    wav = codec.decode(codec_golden["decode.codes"])
    raw = pcm16_bytes(wav[0])
    assert len(raw) == 2 * codec_golden["decode.codes"].shape[-1] * codec.samples_per_frame
    back = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32767
    ref = wav[0, 0].clamp(-1, 1).numpy()
    assert np.abs(back - ref).max() <= 0.5 / 32767 + 1e-7


# ---------------------------------------------------------------------- no host syncs


class _SyncRecorder(TorchDispatchMode):
    """Records ops that make the host wait for device values (.item(), bool(), nonzero)."""

    SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNC_OPS:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_decode_step_has_no_host_sync(codec: MossAudioCodec, rvq: int) -> None:
    """With check=False the streaming step reads no device value on the host (CUDA-graph ready)."""
    state = codec.new_stream_state(capacity=3, max_frames_per_step=2)
    a, b, c = (state.add_stream() for _ in range(3))
    codes = codes_of(codec, rvq, t=2).repeat(1, 2, 1)
    with _SyncRecorder() as control:
        torch.ones(2).sum().item()
    assert control.seen == ["aten::_local_scalar_dense"]  # the recorder does see syncs
    with _SyncRecorder() as rec:
        codec.decode_step(state, codes, [a, c], check=False)  # b sits out: masked rows
        codec.decode_step(state, codes[:, :1], [b], check=False)
    assert rec.seen == []
