"""On a GPU: CUDA-graph replay equals the same padded step run eagerly, and the graphed
engine equals the eager one (frames exact in float32).

The CPU suite already shows padded == eager; these add what only a GPU can show: capture
succeeds, replay reads the updated static buffers, and nothing leaks between replays.
"""

from __future__ import annotations

import asyncio

import torch

from moss_pipecat.codec import MossAudioCodec
from moss_pipecat.codec.graphs import GraphedCodecDecode
from moss_pipecat.model import BatchSampling, MossTTSRealtime, MossTTSRealtimeConfig, SamplingParams
from moss_pipecat.model.graphs import GraphedDecodeStep
from moss_pipecat.model.sampling import NO_HISTORY, NoiseKeys

CUDA = torch.device("cuda")


def _prefilled(model: MossTTSRealtime, rows: torch.Tensor, lengths: list[int], n_slots: int):
    cache = model.new_cache(n_slots, 160, device=CUDA)
    slots = torch.tensor([2, 0, 3][: len(lengths)], device=CUDA)
    T = max(lengths)
    batch = torch.stack([torch.cat((rows[:n], rows[:1].expand(T - n, -1))) for n in lengths])
    model.prefill(batch.to(CUDA), cache, slots, n_new=torch.tensor(lengths, device=CUDA))
    return cache, slots


def _run_steps(model, step_fn, cache, slots, n_steps: int = 20):
    """Greedy + sampled rows for ``n_steps``; returns the frames of every step."""
    cfg = model.cfg
    B = slots.shape[0]
    params = [SamplingParams.greedy_decoding(), SamplingParams(), SamplingParams(top_k=5)][:B]
    sampling = BatchSampling.from_params(params, device=CUDA)
    history = torch.full((B, 50, cfg.rvq), NO_HISTORY, device=CUDA)
    frames = torch.full((B, cfg.rvq), cfg.audio_pad_token, device=CUDA)
    out = []
    for step in range(n_steps):
        rows = torch.cat((torch.full((B, 1), cfg.text_pad, device=CUDA), frames), dim=1)[:, None]
        kv_len = int(cache.lengths[slots].max()) + 1
        noise = NoiseKeys.from_ints([10 + i for i in range(B)], [step] * B, device=CUDA)
        got, _ = step_fn(rows, slots, kv_len, sampling, history, noise)
        frames = got.clone()
        history = torch.cat((history[:, 1:], frames[:, None]), dim=1)
        out.append(frames)
    return torch.stack(out)


def test_tts_graph_replay_equals_padded_eager_and_eager(realtime_dir, long_rows):
    model = MossTTSRealtime.from_pretrained(realtime_dir, device=CUDA)
    rows, lengths = long_rows, [30, 47, 12]
    results = {}
    for mode in ("graph", "padded", "eager"):
        cache, slots = _prefilled(model, rows, lengths, 5)
        if mode == "eager":

            def step(r, s, k, sm, h, n, cache=cache):
                return model.decode_step(r, cache, s, k, sm, h, n)

        else:
            g = GraphedDecodeStep(
                model,
                cache,
                window=50,
                batch_buckets=(1, 4),
                kv_buckets=(32, 64, 160),
                use_cuda_graphs=mode == "graph",
            )
            step = g.step
        results[mode] = _run_steps(model, step, cache, slots)
    assert torch.equal(results["graph"], results["padded"])
    assert torch.equal(results["graph"], results["eager"])


def test_real_size_bf16_capture_and_replay():
    cfg = MossTTSRealtimeConfig.real()
    with CUDA:
        model = MossTTSRealtime(cfg).to(torch.bfloat16)
    model.init_random_().eval().requires_grad_(False)
    prompt = torch.randint(0, 1000, (8, 100, cfg.channels), generator=torch.Generator())
    prompt[..., 1:] %= cfg.audio_vocab_size
    frames = {}
    for mode in ("graph", "padded"):
        cache = model.new_cache(8, 1024, device=CUDA)
        slots = torch.arange(8, device=CUDA)
        model.prefill(prompt.to(CUDA), cache, slots)
        g = GraphedDecodeStep(model, cache, window=50, use_cuda_graphs=mode == "graph")
        frames[mode] = _run_steps(model, g.step, cache, slots[:3], n_steps=6)
    assert torch.equal(frames["graph"], frames["padded"])


def test_codec_graph_replay_equals_eager(codec_dir):
    codec = MossAudioCodec.from_pretrained(codec_dir, device=CUDA)
    Q, size = codec.config.quantizer.num_quantizers, codec.config.quantizer.codebook_size
    gen = torch.Generator().manual_seed(0)
    eager_state, graph_state = codec.new_stream_state(4), codec.new_stream_state(4)
    graphed = GraphedCodecDecode(codec, graph_state, use_cuda_graphs=True)
    eager = [eager_state.add_stream() for _ in range(3)]
    mine = [graph_state.add_stream() for _ in range(3)]
    for step in range(12):
        pick = [0, 2] if step % 3 == 1 else [0, 1, 2]  # stream 1 pauses now and then
        codes = torch.randint(0, size, (Q, len(pick)), generator=gen).to(CUDA)
        want = codec.decode_step(eager_state, codes[:, :, None], [eager[i] for i in pick])
        got = graphed.step(codes, [mine[i] for i in pick])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_graphed_engine_equals_eager_engine(realtime_dir, golden_layout, realtime_meta, codec_dir):
    from moss_pipecat.engine.config import EngineConfig
    from moss_pipecat.engine.engine import MossEngine

    model = MossTTSRealtime.from_pretrained(realtime_dir, device=CUDA)
    codec = MossAudioCodec.from_pretrained(codec_dir, device=CUDA)
    gen = torch.Generator().manual_seed(5)
    lo, hi = realtime_meta["text_ids_drawn_from"]
    texts = [torch.randint(lo, hi, (12 + 3 * i,), generator=gen).tolist() for i in range(4)]

    async def speak_all(graphed: bool):
        engine = MossEngine(
            model,
            golden_layout,
            codec=codec,
            config=EngineConfig(
                max_sessions=4,
                max_context=512,
                context_budget=400,
                turn_reserve=64,
                lookahead_s=None,
                graphed_decode=graphed,
            ),
        ).start()
        try:
            assert engine.graphed == graphed and engine.uses_cuda_graphs == graphed
            sessions = [
                engine.create_session(sampling=SamplingParams.greedy_decoding()) for _ in texts
            ]

            async def one(session, text):
                turn = await session.start_turn(max_frames=30)
                turn.push_ids(text)
                turn.end_text()
                return torch.stack([c.codes for c in [c async for c in turn]])

            return await asyncio.gather(*(one(s, t) for s, t in zip(sessions, texts, strict=True)))
        finally:
            engine.shutdown()

    eager, graphed = asyncio.run(speak_all(False)), asyncio.run(speak_all(True))
    for a, b in zip(eager, graphed, strict=True):
        assert torch.equal(a.cpu(), b.cpu())


def test_prefill_graph_replay_equals_padded_eager_and_eager(realtime_dir, long_rows):
    """Graphed prefill chunks (padded rows and sessions, replayed) equal the same padded
    chunks run eagerly exactly, and the eager prefill's frames after them."""
    from moss_pipecat.model.graphs import GraphedPrefill

    model = MossTTSRealtime.from_pretrained(realtime_dir, device=CUDA)
    plan = [([2, 0], [5, 7]), ([3], [30]), ([0, 1, 3], [3, 8, 20]), ([2, 4, 0, 1], [1, 2, 31, 7])]
    caches, lasts = {}, {}
    for mode in ("graph", "padded", "eager"):
        cache = model.new_cache(5, 161, device=CUDA)
        graphed = GraphedPrefill(
            model, cache, row_buckets=(8, 32), batch_buckets=(1, 4), kv_buckets=(32, 64, 160),
            use_cuda_graphs=mode == "graph",
        )  # fmt: skip
        out = []
        for i, (slots, sizes) in enumerate(plan):
            T = max(sizes)
            rows = torch.stack([long_rows[3 * i + 7 * b :][:T] for b in range(len(slots))])
            rows = rows.to(CUDA)
            if mode == "eager":
                kv_len = max(int(cache.lengths[s]) for s in slots) + T
                n_new = torch.tensor(sizes, device=CUDA)
                h = model.backbone(rows, cache, torch.tensor(slots, device=CUDA), n_new, kv_len)
                out.append(h[torch.arange(len(slots), device=CUDA), n_new - 1])
            else:
                kv_len = max(int(cache.lengths[s]) + n for s, n in zip(slots, sizes, strict=True))
                out.append(graphed.step(rows, slots, sizes, kv_len))
        caches[mode], lasts[mode] = cache, out
    for a, b, c in zip(lasts["graph"], lasts["padded"], lasts["eager"], strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=0)
    assert torch.equal(caches["graph"].lengths, caches["eager"].lengths)
    slots = torch.arange(5, device=CUDA)
    sampling = BatchSampling.from_params([SamplingParams.greedy_decoding()] * 5, device=CUDA)
    history = torch.full((5, 50, model.cfg.rvq), NO_HISTORY, device=CUDA)
    kv_len = int(caches["eager"].lengths.max()) + 1
    frames = [
        model.decode_step(long_rows[:5, None].to(CUDA), caches[m], slots, kv_len, sampling,
                          history)[0]
        for m in ("graph", "eager")
    ]  # fmt: skip
    assert torch.equal(frames[0], frames[1])
