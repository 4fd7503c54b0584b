"""Codec parity against the upstream goldens: encode, decode, streaming decode, real-size shapes.

Every size, window and length is read from the fixture files, so other fixture variants run
through the same tests (``$MOSS_FIXTURES``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soxr
import torch
from safetensors import safe_open

from moss_pipecat.codec import CodecConfig, MossAudioCodec, frames_to_codes, real_config_dict
from moss_pipecat.codec.config import StageConfig

from ..fixture_facts import tts_rvq

WAV_ATOL = 1e-4


@pytest.fixture(scope="module")
def codec(codec_dir: Path) -> MossAudioCodec:
    return MossAudioCodec.from_pretrained(codec_dir)


@pytest.fixture(scope="module")
def rvq(realtime_dir: Path) -> int:
    return tts_rvq(realtime_dir)


def maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def expected_checkpoint_keys(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys/shapes derived from config.json by the upstream naming rules.

    Written independently of the model code, so both the tiny checkpoint and the real config
    are checked against the same structural description.
    """
    keys: dict[str, tuple[int, ...]] = {}
    for side in ("encoder", "decoder"):
        for i, m in enumerate(cfg[f"{side}_kwargs"]):
            if m["module_type"] != "Transformer":
                continue
            p = f"{side}.{i}."
            d, ff = m["d_model"], m["dim_feedforward"]
            if m["input_dimension"] != d:
                keys[p + "input_proj.weight"] = (d, m["input_dimension"])
            if m["output_dimension"] != d:
                keys[p + "output_proj.weight"] = (m["output_dimension"], d)
            for layer in range(m["num_layers"]):
                q = f"{p}transformer.layers.{layer}."
                keys[q + "self_attn.in_projs.0.weight"] = (3 * d, d)
                keys[q + "self_attn.out_projs.0.weight"] = (d, d)
                keys[q + "linear1.weight"] = (ff, d)
                keys[q + "linear2.weight"] = (d, ff)
                for norm in ("norm1", "norm2"):
                    keys[q + norm + ".weight"] = (d,)
                    keys[q + norm + ".bias"] = (d,)
                if m.get("layer_scale") is not None:
                    keys[q + "layer_scale_1.scale"] = (d,)
                    keys[q + "layer_scale_2.scale"] = (d,)
    qk = cfg["quantizer_kwargs"]
    inp, rvq, out = qk["input_dim"], qk["rvq_dim"], qk["output_dim"]
    cdim = qk["codebook_dim"]

    def wn(prefix: str, o: int, i: int) -> None:
        keys[prefix + ".parametrizations.weight.original0"] = (o, 1, 1)
        keys[prefix + ".parametrizations.weight.original1"] = (o, i, 1)
        keys[prefix + ".bias"] = (o,)

    if inp != rvq:
        wn("quantizer.input_proj", rvq, inp)
    if rvq != out:
        wn("quantizer.output_proj", out, rvq)
    for i in range(qk["num_quantizers"]):
        keys[f"quantizer.quantizers.{i}.codebook.weight"] = (qk["codebook_size"], cdim)
        if rvq != cdim:
            wn(f"quantizer.quantizers.{i}.in_proj", cdim, rvq)
            wn(f"quantizer.quantizers.{i}.out_proj", rvq, cdim)
    return keys


# ---------------------------------------------------------------------- structure


def test_attention_contexts_match_golden(codec: MossAudioCodec, codec_meta: dict) -> None:
    ours = {}
    for side, mods in (("encoder", codec.config.encoder), ("decoder", codec.config.decoder)):
        for i, m in enumerate(mods):
            if isinstance(m, StageConfig):
                ours[f"{side}.{i}"] = m.context
    golden = {e["module"]: e["context_steps"] for e in codec_meta["attention_context_steps"]}
    assert ours == golden


def test_checkpoint_keys_match_file_and_structure(codec: MossAudioCodec, codec_dir: Path) -> None:
    with safe_open(codec_dir / "model.safetensors", "pt") as f:
        in_file = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    ours = {k: tuple(v) for k, v in codec.checkpoint_shapes().items()}
    cfg = json.loads((codec_dir / "config.json").read_text())
    assert ours == in_file
    assert ours == expected_checkpoint_keys(cfg)


def test_real_size_codec_on_meta() -> None:
    """The published checkpoint's dimensions give ~1.78B parameters with upstream key names."""
    cfg = real_config_dict()
    with torch.device("meta"):
        model = MossAudioCodec(CodecConfig.from_dict(cfg))
    expected = expected_checkpoint_keys(cfg)
    shapes = {k: tuple(v) for k, v in model.checkpoint_shapes().items()}
    assert shapes == expected
    n_checkpoint = sum(math.prod(s) for s in expected.values())
    n_model = model.num_parameters()
    # Folding weight norm drops the per-channel g of each 1x1 conv (its out channels).
    n_g = sum(s[0] for k, s in expected.items() if k.endswith("original0"))
    print(f"real codec: {n_checkpoint:,} checkpoint parameters, {n_model:,} after folding")
    assert n_model == n_checkpoint - n_g
    assert 1.70e9 < n_checkpoint < 1.85e9
    contexts = [m.context for m in model.config.decoder if isinstance(m, StageConfig)]
    assert contexts == [125, 250, 500, 1000]


# ---------------------------------------------------------------------- encode


def test_encode_matches_golden(codec: MossAudioCodec, codec_golden: dict, rvq: int) -> None:
    enc = codec.encode(codec_golden["encode.wav"], codec.sampling_rate)
    assert enc.codes.dtype == torch.int64
    assert torch.equal(enc.codes, codec_golden["encode.codes"])
    assert torch.equal(enc.lengths, codec_golden["encode.codes_lengths"])
    err = maxabs(enc.hidden, codec_golden["encode.hidden"])
    print(f"encode.hidden max abs err {err:.2e}")
    assert err <= 1e-4
    enc16 = codec.encode(codec_golden["encode.wav"], codec.sampling_rate, num_quantizers=rvq)
    assert torch.equal(enc16.codes, codec_golden["encode.codes16"])


def test_encode_frames_is_frame_major(codec: MossAudioCodec, codec_golden: dict, rvq: int) -> None:
    frames = codec.encode_frames(codec_golden["encode.wav"][0, 0], codec.sampling_rate, rvq)
    n = int(codec_golden["encode.codes_lengths"][0])
    assert frames.shape == (n, rvq) and frames.dtype == torch.int64
    assert torch.equal(frames, codec_golden["encode.codes16"][:, 0, :n].T)
    assert torch.equal(frames_to_codes(frames), codec_golden["encode.codes16"][:, :, :n])


def _check_long_codes(codes: torch.Tensor, golden: torch.Tensor, rvq: int) -> float:
    assert torch.equal(codes[:rvq], golden[:rvq])
    frac = (codes != golden).float().mean().item()
    assert frac <= 0.005
    return frac


def test_encode_long_matches_golden(codec: MossAudioCodec, codec_golden: dict, rvq: int) -> None:
    enc = codec.encode(codec_golden["encode_long.wav"], codec.sampling_rate)
    err = maxabs(enc.hidden, codec_golden["encode_long.hidden"])
    frac = _check_long_codes(enc.codes, codec_golden["encode_long.codes"], rvq)
    print(f"encode_long.hidden max abs err {err:.2e}, codes differing over all: {frac:.4f}")
    assert err <= 1e-5
    assert int(enc.lengths[0]) == enc.codes.shape[-1]


@pytest.mark.parametrize("chunk_frames", [1, 7, 50])
def test_chunked_encode_equals_one_pass(
    codec: MossAudioCodec, codec_golden: dict, chunk_frames: int, rvq: int
) -> None:
    """Encoding in chunks with carried state keeps the exact window: same codes as one call."""
    wav = codec_golden["encode_long.wav"]
    one = codec.encode(wav, codec.sampling_rate, chunk_frames=10_000)
    chunked = codec.encode(wav, codec.sampling_rate, chunk_frames=chunk_frames)
    err = maxabs(chunked.hidden, codec_golden["encode_long.hidden"])
    assert err <= 1e-5
    assert maxabs(chunked.hidden, one.hidden) <= 1e-5
    _check_long_codes(chunked.codes, codec_golden["encode_long.codes"], rvq)
    assert torch.equal(chunked.codes[:rvq], one.codes[:rvq])


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_encode_resamples_other_rates(
    codec: MossAudioCodec, codec_golden: dict, rate: int, rvq: int
) -> None:
    sr = codec.sampling_rate
    wav = codec_golden["encode.wav"][0, 0].numpy()
    at_rate = torch.from_numpy(soxr.resample(wav, sr, rate, quality="HQ"))
    enc = codec.encode(at_rate, rate, num_quantizers=rvq)
    back = torch.from_numpy(soxr.resample(at_rate.numpy(), rate, sr, quality="HQ"))
    ref = codec.encode(back, sr, num_quantizers=rvq)
    assert torch.equal(enc.codes, ref.codes)
    assert enc.codes.shape[-1] == math.ceil(back.shape[-1] / codec.samples_per_frame)
    if rate > sr:
        # A nearly lossless round trip, relative to the hidden's scale (an encoder's gain is
        # the fixture set's: measured 4.1% of the largest value on the default set, 6.0% on a
        # seed-13 set whose hidden runs twice as large).
        golden = codec_golden["encode.hidden"][..., :-1]
        assert maxabs(enc.hidden[..., :-1], golden) < 0.1 * golden.abs().max()


def test_encode_downmix_and_batch(codec: MossAudioCodec, codec_golden: dict, rvq: int) -> None:
    wav = codec_golden["encode.wav"][0, 0]
    sr = codec.sampling_rate
    mono = codec.encode(wav, sr)
    stereo = codec.encode(torch.stack([wav, wav]), sr)  # [2, S], mean = wav exactly
    assert torch.equal(stereo.codes, mono.codes)
    other = 0.6 * wav.flip(0)
    batch = codec.encode(torch.stack([wav, other])[:, None], sr)  # [B=2, C=1, S]
    alone = codec.encode(other, sr)
    assert batch.codes.shape[1] == 2
    assert maxabs(batch.hidden[:1], mono.hidden) <= 1e-5
    assert maxabs(batch.hidden[1:], alone.hidden) <= 1e-5
    assert torch.equal(batch.codes[:rvq, :1], mono.codes[:rvq])
    agree = (batch.codes[:, 1:] == alone.codes).float().mean().item()
    assert agree >= 0.99
    as_int16 = (wav * 32768).round().clamp(-32768, 32767).to(torch.int16)
    enc16 = codec.encode(as_int16, sr)
    assert maxabs(enc16.hidden, mono.hidden) < 1e-3


# ---------------------------------------------------------------------- decode


def test_decode_matches_golden(codec: MossAudioCodec, codec_golden: dict) -> None:
    wav = codec.decode(codec_golden["decode.codes"])
    err = maxabs(wav, codec_golden["decode.wav"])
    print(f"decode.wav max abs err {err:.2e}")
    assert err <= WAV_ATOL


@pytest.mark.parametrize("chunk_frames", [None, 1, 13, 64])
def test_decode_long_matches_golden(
    codec: MossAudioCodec, codec_golden: dict, chunk_frames: int | None
) -> None:
    wav = codec.decode(codec_golden["long.codes"], chunk_frames=chunk_frames)
    err = maxabs(wav, codec_golden["long.full_wav"])
    print(f"long.full_wav (chunk_frames={chunk_frames}) max abs err {err:.2e}")
    assert err <= WAV_ATOL


# ---------------------------------------------------------------------- streaming decode


def stream_decode(
    codec: MossAudioCodec, codes: torch.Tensor, chunks: list[int], max_frames_per_step: int
) -> torch.Tensor:
    """Decodes ``codes [Q, 1, T]`` as one stream in calls of ``chunks`` frames (cycled)."""
    state = codec.new_stream_state(capacity=1, max_frames_per_step=max_frames_per_step)
    slot = state.add_stream()
    t = codes.shape[-1]
    out, f, i = [], 0, 0
    while f < t:
        n = min(chunks[i % len(chunks)], t - f)
        out.append(codec.decode_step(state, codes[:, :, f : f + n], [slot]))
        f, i = f + n, i + 1
    assert state.frames_decoded(slot) == t
    return torch.cat(out, dim=1)[:, None]  # [1, 1, S]


def test_stream_one_frame_matches_golden(codec: MossAudioCodec, codec_golden: dict) -> None:
    wav = stream_decode(codec, codec_golden["decode.codes"], [1], 1)
    assert maxabs(wav, codec_golden["stream1.wav"]) <= WAV_ATOL
    assert maxabs(wav, codec_golden["decode.wav"]) <= WAV_ATOL


@pytest.mark.parametrize(
    ("chunks", "max_frames_per_step"),
    [([1], 1), ([3], 3), ([1, 2, 5, 1, 3, 4, 2], 5), ([1, 2, 5, 1, 3, 4, 2], 2), ([64], 64)],
)
def test_stream_exact_window_any_chunking(
    codec: MossAudioCodec,
    codec_golden: dict,
    codec_meta: dict,
    chunks: list[int],
    max_frames_per_step: int,
) -> None:
    """Streaming equals full decode for any chunking, also after the rings wrap."""
    codes = codec_golden["long.codes"]
    wav = stream_decode(codec, codes, chunks, max_frames_per_step)
    full = codec_golden["long.full_wav"]
    err = maxabs(wav, full)
    print(f"stream chunks={chunks} max_frames_per_step={max_frames_per_step}: {err:.2e}")
    assert err <= WAV_ATOL
    # Upstream's own 1-frame streaming loses window keys once a ring wraps; before that
    # frame it equals ours.
    first = codec_meta["long_first_frame_where_stream_differs_gt_1e-5"]
    hop = codec.samples_per_frame
    stream1 = codec_golden["long.stream1_wav"]
    assert maxabs(wav[..., : first * hop], stream1[..., : first * hop]) <= 1e-5
    if first * hop < full.shape[-1]:
        assert maxabs(wav[..., first * hop :], stream1[..., first * hop :]) > 1e-5


def test_three_streams_batched_equal_alone(codec: MossAudioCodec, rvq: int) -> None:
    """Streams started at different times, with pauses and removals, decoded in one call each
    tick, equal each stream decoded alone."""
    qc = codec.config.quantizer
    stages = [m for m in codec.config.decoder if isinstance(m, StageConfig)]
    max_context = max(m.context // m.steps_per_frame for m in stages)  # in frames
    gen = torch.Generator().manual_seed(0)
    long = max_context + 25  # every ring wraps
    # name: (start tick, frames, tick at which it is removed or None)
    plan = {
        "a": (0, long, None),
        "b": (5, long, 40),
        "c": (12, long - 10, None),
        "d": (45, 60, None),
    }
    codes = {
        k: torch.randint(0, qc.codebook_size, (rvq, 1, n), generator=gen)
        for k, (_, n, _) in plan.items()
    }
    state = codec.new_stream_state(capacity=4, max_frames_per_step=2)
    slot: dict[str, int] = {}
    done = {k: 0 for k in plan}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in plan}

    def paused(k: str, tick: int) -> bool:
        return (k == "a" and tick % 7 == 3) or (k == "c" and tick % 11 == 5)

    tick, b_slot = 0, -1
    while tick < 400:
        for k, (start, _, stop) in plan.items():
            if tick == start:
                slot[k] = state.add_stream()
                if k == "d":
                    assert slot[k] == b_slot  # the freed slot is reused
            if stop is not None and tick == stop:
                b_slot = slot.pop(k)
                state.remove_stream(b_slot)
        t = 2 if tick % 5 == 0 else 1
        live = [
            k
            for k in slot
            # a (lowest slot) and c pause now and then: rows of live streams that sit out a
            # call are computed but must not advance.
            if done[k] + t <= plan[k][1] and not paused(k, tick)
        ]
        if live:
            batch = torch.cat([codes[k][:, :, done[k] : done[k] + t] for k in live], dim=1)
            wav = codec.decode_step(state, batch, [slot[k] for k in live])
            for i, k in enumerate(live):
                out[k].append(wav[i])
                done[k] += t
        for k in list(slot):
            if done[k] == plan[k][1]:
                state.remove_stream(slot.pop(k))
        tick += 1
        if not slot and tick > max(p[0] for p in plan.values()):
            break
    assert done["b"] < plan["b"][1]  # b was removed midway
    assert all(done[k] == plan[k][1] for k in "acd")
    for k in plan:
        got = torch.cat(out[k])
        alone = codec.decode(codes[k][:, :, : done[k]])[0, 0]
        assert maxabs(got, alone) <= WAV_ATOL, k
    assert state.active_slots == []
