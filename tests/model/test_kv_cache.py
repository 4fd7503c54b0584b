"""KV cache semantics: rollback, batching of sessions with different lengths, capacity."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.errors import CapacityError, InvalidInputError
from moss_pipecat.model import BatchSampling, FrameHistory, MossTTSRealtime, SamplingParams
from moss_pipecat.model.generate import generate_turn

ATOL = 1e-5


@pytest.fixture(scope="module")
def model(realtime_dir) -> MossTTSRealtime:
    return MossTTSRealtime.from_pretrained(realtime_dir)


def _decode(model, cache, slots, hidden, n_steps, text_id):
    """Greedy decode n_steps frames for a batch; returns frames [B, n_steps, rvq], hidden."""
    B = hidden.shape[0]
    sampling = BatchSampling.from_params([SamplingParams.greedy_decoding()] * B)
    history = FrameHistory(B, 50, model.cfg.rvq, "cpu")
    frames, hiddens = [], []
    for _ in range(n_steps):
        f = model.generate_frame(hidden, sampling, history.buf)
        frames.append(f)
        hiddens.append(hidden)
        history.push(f)
        row = torch.cat((torch.full((B, 1), text_id), f), dim=1)[:, None]  # [B, 1, 17]
        hidden = model.backbone(row, cache, slots)[:, 0]
    return torch.stack(frames, 1), torch.stack(hiddens, 1)


def test_truncate_then_regenerate_equals_fresh(model, realtime_golden, realtime_meta):
    g = realtime_golden
    t1 = realtime_meta["turns"]["turn1"]
    cache = model.new_cache(2, 256)
    prompt = g["turn1.prompt"]
    text = g["session.text1"][t1["n_prefill_text"] :].tolist()
    first = generate_turn(model, cache, 0, prompt, text, 32, min_frames=32)
    assert first.frames.shape[0] == 32  # so the rollback below really cuts generated frames
    fed = torch.cat((prompt, torch.cat((first.fed[:, None], first.frames[:-1]), dim=1)))
    # Roll back to "the user heard 5 frames": prompt + 5 step rows.
    keep = prompt.shape[0] + 5
    cache.truncate(0, keep)
    tail = g["turn2.prompt"]
    after = generate_turn(model, cache, 0, tail, [], 12)

    fresh = model.new_cache(2, 256)
    model.prefill(fed[None, :keep], fresh, torch.tensor([1]))
    ref = generate_turn(model, fresh, 1, tail, [], 12)
    assert torch.equal(after.frames, ref.frames) and after.stop == ref.stop
    torch.testing.assert_close(after.hidden, ref.hidden, atol=ATOL, rtol=0)


@pytest.mark.parametrize("slot_order", [None, [2, 0, 1]])
def test_batched_sessions_of_different_lengths_equal_each_alone(model, long_rows, slot_order):
    rows = long_rows
    lengths = [40, 61, 85]
    text_id = model.cfg.text_pad
    # Alone: one cache each.
    alone = []
    for n in lengths:
        c = model.new_cache(1, 128)
        h = model.prefill(rows[None, :n], c)
        alone.append(_decode(model, c, None, h, 6, text_id))
    # Together: one right-padded prefill, then batched steps.
    T = max(lengths)
    batch = rows[:T].repeat(3, 1, 1)  # padding rows are real ids; they are overwritten later
    for b, n in enumerate(lengths):
        batch[b, n:] = rows[:1]
    cache = model.new_cache(3, 128)
    slots = None if slot_order is None else torch.tensor(slot_order)
    h = model.prefill(batch, cache, slots, n_new=torch.tensor(lengths))
    frames, hiddens = _decode(model, cache, slots, h, 6, text_id)
    for b in range(3):
        assert torch.equal(frames[b], alone[b][0][0])
        torch.testing.assert_close(hiddens[b], alone[b][1][0], atol=ATOL, rtol=0)
    got = cache.lengths if slots is None else cache.lengths[slots]
    assert got.tolist() == [n + 6 for n in lengths]


def test_sampled_frames_depend_only_on_the_sessions_generator(model, long_rows):
    """With per-session generators, a session's draws are the same alone or in a batch."""
    from moss_pipecat.model.sampling import exponential_noise

    # Wide open, and eight seeds: under the defaults (top_p 0.6) a set's random model may leave
    # one code per codebook (2 codebooks of 64 codes: two seeds drew the same frame).
    rows, n, params = long_rows, 8, SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
    shape = (model.cfg.rvq, model.cfg.audio_vocab_size)
    cache = model.new_cache(n, 128)
    h = model.prefill(rows[:30].repeat(n, 1, 1), cache)
    noise = exponential_noise([torch.Generator().manual_seed(s) for s in range(n)], shape)
    batch = model.generate_frame(h, BatchSampling.from_params([params] * n), None, noise)
    solo_noise = exponential_noise([torch.Generator().manual_seed(1)], shape)
    solo = model.generate_frame(h[1:2], BatchSampling.from_params([params]), None, solo_noise)
    assert torch.equal(batch[1], solo[0])
    # Different seeds, same input: different draws.
    assert len({tuple(f.flatten().tolist()) for f in batch}) > 1


def test_sampled_turn_is_reproducible_with_a_seeded_generator(model, realtime_golden):
    g = realtime_golden

    def run(seed: int):
        cache = model.new_cache(1, 256)
        return generate_turn(
            model,
            cache,
            0,
            g["turn1.prompt"],
            [],
            10,
            SamplingParams(),
            torch.Generator().manual_seed(seed),
            min_frames=10,  # 10 frames to compare, wherever this set's model would stop
        ).frames

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_capacity_and_truncate_errors(model, long_rows):
    rows = long_rows
    cache = model.new_cache(1, 50)
    model.prefill(rows[None, :40], cache)
    with pytest.raises(CapacityError):
        model.prefill(rows[None, :11], cache)
    assert cache.length(0) == 40  # a refused prefill changes nothing
    with pytest.raises(InvalidInputError):
        cache.truncate(0, 41)
    with pytest.raises(InvalidInputError):
        cache.truncate(3, 0)
    cache.reset(0)
    assert cache.length(0) == 0


def test_the_backbone_on_the_gpu_route_gives_the_cpu_routes_numbers(model, long_rows):
    """On a CPU the backbone attends only the key blocks up to its longest row, with a
    boolean mask; the kernel checks turn that off (``cpu_shortcuts``) to run a GPU's route,
    the whole slot with an additive mask. Both give the same frames, hidden states and
    caches, bit for bit: the checks' route is the engine's numbers."""
    from moss_pipecat.testing.kernel_drive import model_run

    masks: list[tuple[torch.dtype, int]] = []  # what the first layer's attention was given
    attn = model.language_model.layers[0].self_attn
    hook = attn.register_forward_pre_hook(
        lambda m, args: masks.append((args[4].dtype, args[4].shape[-1]))
    )
    try:
        with torch.inference_mode():
            cpu = model_run(model, long_rows, steps=3, max_len=512)
            cpu_masks, masks[:] = list(masks), []
            model.language_model.cpu_shortcuts = False
            gpu = model_run(model, long_rows, steps=3, max_len=512)
    finally:
        model.language_model.cpu_shortcuts = True
        hook.remove()
    # The prefill: a boolean mask over the key blocks its rows need / additive over the slot.
    assert cpu_masks[0] == (torch.bool, 256)  # one key block of the 512-long slot
    assert masks[0] == (model.language_model.layers[0].input_layernorm.weight.dtype, 512)
    assert all(m[0].is_floating_point for m in masks)
    (frames_a, hidden_a, cache_a), (frames_b, hidden_b, cache_b) = cpu, gpu
    assert all(torch.equal(a, b) for a, b in zip(frames_a, frames_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(hidden_a, hidden_b, strict=True))
    assert torch.equal(cache_a.k, cache_b.k) and torch.equal(cache_a.v, cache_b.v)
