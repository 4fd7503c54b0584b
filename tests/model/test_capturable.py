"""The hot steps can be captured as CUDA graphs: checked on the ``meta`` device, on CPU.

A CUDA graph replays kernels with fixed shapes and addresses; it breaks (or silently records
stale values) if the captured code reads device values on the host (``.item()``, ``bool()``,
``int()``, ``.tolist()``), makes shapes that depend on data (``nonzero``, boolean indexing) or
copies host tensors in. Running a step with every tensor on ``meta`` catches all three: meta
tensors have shapes but no values, so any host read or data-dependent shape raises, and a
dispatch guard flags every op that touches a non-meta tensor. This runs at the real model
sizes in seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from moss_pipecat.codec import CodecConfig, MossAudioCodec, real_config_dict
from moss_pipecat.codec.graphs import GraphedCodecDecode
from moss_pipecat.model import BatchSampling, MossTTSRealtime, MossTTSRealtimeConfig, SamplingParams
from moss_pipecat.model.graphs import GraphedDecodeStep, GraphedFrameStep, GraphedPrefill
from moss_pipecat.model.sampling import NO_HISTORY, NoiseKeys, keyed_noise

META = torch.device("meta")


class OnlyMeta(TorchDispatchMode):
    """Records every op that reads or makes a tensor off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.offenders: list[str] = []
        self.ops = 0
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.names.add(str(func))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and t.device != META:
                self.offenders.append(str(func))
                break
        return out


@pytest.fixture(scope="module")
def real_model() -> MossTTSRealtime:
    with META:
        model = MossTTSRealtime(MossTTSRealtimeConfig.real()).to(torch.bfloat16).eval()
        return model


@pytest.mark.parametrize("batch", [1, 5])
def test_decode_step_has_no_host_sync_at_real_size(real_model: MossTTSRealtime, batch: int):
    cfg = real_model.cfg
    cache = real_model.new_cache(8, 257, device=META)  # + the spare position per slot
    graphed = GraphedDecodeStep(real_model, cache, window=50, batch_buckets=(8,), kv_buckets=(256,))
    inputs = graphed.graphs.bucket((8, 256)).inputs
    assert inputs["rows"].device == META
    params = [SamplingParams(), SamplingParams.greedy_decoding()] * 4
    # Some rows may not end their turn yet (EOS masked): the mask is part of the graph too.
    allow_eos = [True, False, False, True] * 2
    sampling = BatchSampling.from_params(params, device=META, allow_eos=allow_eos)
    for name in ("temperature", "top_k", "top_p", "penalty", "greedy", "allow_eos"):
        inputs[name].copy_(getattr(sampling, name))  # in place, as a call fills them
    inputs["n_new"][:batch] = 1  # the first ``batch`` slots step, the rest idle
    with OnlyMeta() as guard:
        frames, hidden = graphed.graphs.launch((8, 256))  # exactly what the CUDA graph records
    assert guard.offenders == []
    assert guard.ops > 1000  # the guard really saw the step
    assert "aten.bitwise_xor.Tensor" in guard.names  # the sampling noise is made in the step
    assert frames.shape == (8, cfg.rvq) and frames.dtype == torch.int64
    assert hidden.shape == (8, cfg.language.hidden_size)


def test_prefill_chunk_has_no_host_sync_at_real_size(real_model: MossTTSRealtime):
    """The graphed prefill chunk (padded rows and sessions, spare-position writes, the last
    row's hidden state picked on the device) is capturable."""
    cache = real_model.new_cache(4, 257, device=META)  # + the spare position per slot
    graphed = GraphedPrefill(
        real_model, cache, row_buckets=(16,), batch_buckets=(2,), kv_buckets=(256,)
    )
    key = (2, 16, 256)
    inputs = graphed.graphs.bucket(key).inputs
    assert inputs["rows"].device == META and inputs["rows"].shape == (2, 16, 17)
    inputs["n_new"][:1] = 5  # one session of 5 rows, one idle batch row
    with OnlyMeta() as guard:
        hidden = graphed.graphs.launch(key)  # what the prefill graph records
    assert guard.offenders == []
    assert guard.ops > 28 * 20  # the guard saw every backbone layer
    assert "aten.index_add_.default" in guard.names  # lengths grow by the real rows only
    assert hidden.shape == (2, real_model.cfg.language.hidden_size)


def test_sampling_noise_path_has_no_host_sync(real_model: MossTTSRealtime):
    cfg = real_model.cfg
    B = 3
    cache = real_model.new_cache(B, 64, device=META)
    rows = torch.zeros(B, 1, cfg.channels, dtype=torch.int64, device=META)
    slots = torch.zeros(B, dtype=torch.int64, device=META)
    history = torch.full((B, 50, cfg.rvq), NO_HISTORY, device=META)
    noise = torch.empty(B, cfg.rvq, cfg.audio_vocab_size, device=META)
    sampling = BatchSampling.from_params(
        [SamplingParams(top_k=0, top_p=0.9)] * B, device=META, allow_eos=[False, True, False]
    )
    with OnlyMeta() as guard:
        frames, _ = real_model.decode_step(rows, cache, slots, 64, sampling, history, noise)
    assert guard.offenders == [] and frames.shape == (B, cfg.rvq)


def test_keyed_noise_has_no_host_sync(real_model: MossTTSRealtime):
    """The counter-based noise (per-row seed and frame counter in, Exp(1) noise out) is static
    shapes and device ops only, alone and inside the decode step and the first-frame step."""
    cfg = real_model.cfg
    B = 3
    keys = NoiseKeys(
        seed=torch.zeros(B, dtype=torch.int64, device=META),
        counter=torch.zeros(B, dtype=torch.int64, device=META),
    )
    with OnlyMeta() as guard:
        noise = keyed_noise(keys, cfg.rvq, cfg.audio_vocab_size)
    assert guard.offenders == [] and guard.ops > 20
    assert noise.shape == (B, cfg.rvq, cfg.audio_vocab_size) and noise.dtype == torch.float32
    cache = real_model.new_cache(B, 64, device=META)
    rows = torch.zeros(B, 1, cfg.channels, dtype=torch.int64, device=META)
    slots = torch.zeros(B, dtype=torch.int64, device=META)
    history = torch.full((B, 50, cfg.rvq), NO_HISTORY, device=META)
    sampling = BatchSampling.from_params([SamplingParams()] * B, device=META)
    with OnlyMeta() as guard:
        frames, _ = real_model.decode_step(rows, cache, slots, 64, sampling, history, keys)
    assert guard.offenders == [] and frames.shape == (B, cfg.rvq)
    assert "aten.bitwise_xor.Tensor" in guard.names
    step = GraphedFrameStep(real_model, window=50, max_batch=4, batch_buckets=(4,))
    inputs = step.graphs.bucket(4).inputs
    assert inputs["seed"].device == META
    inputs["greedy"].zero_()  # every row sampled
    with OnlyMeta() as guard:
        frames = step.graphs.launch(4)  # what the first-frame graph records
    assert guard.offenders == [] and "aten.bitwise_xor.Tensor" in guard.names
    assert frames.shape == (4, cfg.rvq)


def test_codec_step_has_no_host_sync_at_real_size():
    config = CodecConfig.from_dict(real_config_dict())
    with META:
        codec = MossAudioCodec(config)
    codec.quantizer.prepare()
    codec.eval().requires_grad_(False)
    state = codec.new_stream_state(4)
    assert state.device == META
    graphed = GraphedCodecDecode(codec, state)
    key = (4, config.quantizer.num_quantizers)
    with torch.inference_mode():
        assert graphed.graphs.bucket(key).inputs["codes"].device == META
        with OnlyMeta() as guard:
            wav = graphed.graphs.launch(key)
    assert guard.offenders == []
    assert wav.shape == (4, codec.samples_per_frame)
