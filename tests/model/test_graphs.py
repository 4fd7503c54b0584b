"""The padded static-buffer decode step (what CUDA graphs replay) equals the eager step."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moss_pipecat.cuda_graphs import capture_eagerly
from moss_pipecat.model import BatchSampling, MossTTSRealtime, SamplingParams
from moss_pipecat.model.graphs import GraphedDecodeStep, GraphedFrameStep, default_kv_buckets
from moss_pipecat.model.sampling import NO_HISTORY, NoiseKeys


def _setup(model, rows, lengths, n_slots):
    """Slots 2, 0, 3 (stepped) and 1 (idle, 20 rows of history) prefilled; 4 stays empty."""
    cache = model.new_cache(n_slots, 160)
    lengths = [*lengths, 20]
    slots = torch.tensor([2, 0, 3, 1])
    T = max(lengths)
    batch = torch.stack([torch.cat((rows[:n], rows[:1].expand(T - n, -1))) for n in lengths])
    model.prefill(batch, cache, slots, n_new=torch.tensor(lengths))
    return cache, slots[:3]


def _three_codebooks(model: MossTTSRealtime) -> MossTTSRealtime:
    """The model's shapes with only three codebooks (random weights, seeded; fewer if the
    fixture set has fewer): the first (EOS masked), one in the middle and the last take every
    path of the local loop, which dynamo unrolls, so tracing costs a fraction of the 16
    codebooks' trace."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        small = MossTTSRealtime(replace(model.cfg, rvq=min(3, model.cfg.rvq))).init_random_()
    return small.eval().requires_grad_(False)


@pytest.mark.parametrize(
    ("dtype", "capture", "backend"),
    [
        (torch.float32, False, None),
        (torch.bfloat16, False, None),
        (torch.float32, True, None),
        # dynamo traces the step as one graph (no breaks, i.e. no host sync) for every bucket;
        # on the model with three codebooks (``_three_codebooks``): the trace is per codebook
        (torch.float32, False, "eager"),
    ],
    ids=["fp32", "bf16", "fp32-capture-warmup", "fp32-compiled-fullgraph"],
)
def test_graphed_step_equals_eager_step(
    tiny_model, realtime_dir, long_rows, dtype, capture, backend
):
    if dtype != torch.float32:
        tiny_model = MossTTSRealtime.from_pretrained(realtime_dir, dtype=dtype)
    if backend is not None:
        tiny_model = _three_codebooks(tiny_model)
    rows = long_rows[:, : tiny_model.cfg.channels]
    lengths = [30, 47, 12]
    cfg = tiny_model.cfg
    eager_cache, slots = _setup(tiny_model, rows, lengths, 5)
    graph_cache, _ = _setup(tiny_model, rows, lengths, 5)
    graphed = GraphedDecodeStep(
        tiny_model,
        graph_cache,
        window=50,
        batch_buckets=(1, 4),
        kv_buckets=(32, 64, 160),
        use_cuda_graphs=capture,
        compile_backend=backend,
    )
    # On CPU: what capture really executes (the warm-up runs), then replays rerun the body,
    # so the order of capture vs. filling the buffers with session inputs is tested too.
    graphed.graphs.capture = capture_eagerly
    params = [SamplingParams.greedy_decoding(), SamplingParams(), SamplingParams(top_k=5)]
    sampling = BatchSampling.from_params(params)
    history = torch.full((3, 50, cfg.rvq), NO_HISTORY)
    frames = torch.full((3, cfg.rvq), cfg.audio_pad_token)
    mismatched = 0
    for step in range(25):  # crosses the 32 -> 64 kv bucket boundary
        step_rows = torch.cat((torch.full((3, 1), cfg.text_pad), frames), dim=1)[:, None]
        kv_len = int(eager_cache.lengths[slots].max()) + 1
        noise = NoiseKeys.from_ints([7, 8, 9], [step] * 3)  # made inside the step
        want, want_h = tiny_model.decode_step(
            step_rows, eager_cache, slots, kv_len, sampling, history, noise
        )
        got, got_h = graphed.step(step_rows, slots, kv_len, sampling, history, noise)
        if dtype == torch.float32:
            assert torch.equal(got, want)
            torch.testing.assert_close(got_h, want_h, atol=1e-5, rtol=0)
        else:
            # bf16: the padded kv bucket sums attention in another order (one-ulp differences
            # in the hidden state), so a near-tie may pick another code now and then.
            mismatched += int((got != want).sum())
            torch.testing.assert_close(got_h, want_h, atol=0.02 * want_h.abs().max(), rtol=0)
        assert torch.equal(graph_cache.lengths, eager_cache.lengths)
        history = torch.cat((history[:, 1:], want[:, None]), dim=1)
        frames = want
    assert mismatched <= 0.05 * 25 * 3 * cfg.rvq
    # The idle slot inside the stepped prefix kept its length and its entries.
    assert int(graph_cache.lengths[1]) == 20
    assert torch.equal(graph_cache.k[:, 1, :, :20], eager_cache.k[:, 1, :, :20])
    assert torch.equal(graph_cache.v[:, 1, :, :20], eager_cache.v[:, 1, :, :20])
    assert graphed.bucket(3, 40) == (4, 64)
    assert graphed.graphs.keys >= {(4, 64)}


def test_kv_buckets_end_at_the_cache_length():
    assert default_kv_buckets(3000) == (512, 1024, 2048, 3000)
    assert default_kv_buckets(512) == (512,)


def test_graphed_step_buckets_leave_out_the_spare_position(tiny_model):
    # A pool of 2048-position sessions has 2049 positions per slot; the last is the spare.
    step = GraphedDecodeStep(tiny_model, tiny_model.new_cache(3, 2049), window=50)
    assert step.kv_buckets == (512, 1024, 2048)
    assert step.batch_buckets == (1, 2, 3)  # capped at the cache's slots
    with pytest.raises(ValueError, match="exceed"):
        step.bucket(1, 2049)
    with pytest.raises(ValueError, match="distinct"):
        step.step(torch.zeros(2, 1, 17, dtype=torch.long), [0, 0], 10, None, None, None)


@pytest.mark.parametrize("capture", [False, True], ids=["padded", "capture-warmup"])
def test_graphed_first_frame_equals_generate_frame(tiny_model, capture):
    cfg = tiny_model.cfg
    gen = torch.Generator().manual_seed(4)
    step = GraphedFrameStep(
        tiny_model, window=50, max_batch=3, batch_buckets=(2, 4), use_cuda_graphs=capture
    )
    step.graphs.capture = capture_eagerly  # the capture's real side effects (warm-up runs)
    params = [SamplingParams(), SamplingParams.greedy_decoding(), SamplingParams(top_p=0.9)]
    for B in (1, 3, 2, 3):  # buckets reused with fewer rows: stale rows must not leak
        hidden = torch.randn(B, cfg.language.hidden_size, generator=gen)
        sampling = BatchSampling.from_params(params[:B])
        history = torch.randint(0, cfg.audio_pad_token, (B, 50, cfg.rvq), generator=gen)
        history[:, :20] = NO_HISTORY
        noise = NoiseKeys.from_ints([B * 7 + i for i in range(B)], [B] * B)
        want = tiny_model.generate_frame(hidden, sampling, history, noise)
        got = step.step(hidden, sampling, history, noise)
        assert torch.equal(got, want)
        greedy = BatchSampling.from_params([SamplingParams.greedy_decoding()] * B)
        assert torch.equal(
            step.step(hidden, greedy, history, None),
            tiny_model.generate_frame(hidden, greedy, history, None),
        )
    assert step.batch_buckets == (2, 3)  # capped at max_batch
    assert step.graphs.keys == {2, 3}
    assert step.capture_all() == 2


def test_graphed_steps_take_noise_keys_only(tiny_model):
    """The graphed steps make the noise inside the step: an explicit noise tensor is refused."""
    cfg = tiny_model.cfg
    step = GraphedDecodeStep(tiny_model, tiny_model.new_cache(2, 65), window=50)
    sampling = BatchSampling.from_params([SamplingParams()])
    history = torch.full((1, 50, cfg.rvq), NO_HISTORY)
    noise = torch.ones(1, cfg.rvq, cfg.audio_vocab_size)
    rows = torch.zeros(1, 1, cfg.channels, dtype=torch.long)
    with pytest.raises(TypeError, match="NoiseKeys"):
        step.step(rows, [0], 10, sampling, history, noise)
    frame_step = GraphedFrameStep(tiny_model, window=50, max_batch=2)
    hidden = torch.zeros(1, cfg.language.hidden_size)
    with pytest.raises(TypeError, match="NoiseKeys"):
        frame_step.step(hidden, sampling, history, noise)
