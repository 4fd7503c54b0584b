"""The fused model and codec driven where the engine drives them, for the kernel checks that run
outside the suite (``scripts/interpret_kernels.py``: the kernels' numbers in Triton's
interpreter; ``scripts/compile_kernels.py``: the kernels compiled for a GPU).

A prefill of conversations into slots out of order, decode steps with greedy and seeded rows
and a padding row (its keys to its slot's spare position), the local transformer's frame
scratch; codec streams of different ages through the padded codec frame.
"""

from __future__ import annotations

import torch

from moss_pipecat.codec import MossAudioCodec
from moss_pipecat.codec.graphs import GraphedCodecDecode
from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.model.sampling import NO_HISTORY, BatchSampling, NoiseKeys, SamplingParams

PREFILL_SLOTS = (2, 0, 3)  # the conversations' slots, out of order
PREFILL_LENGTHS = (9, 14, 5)
PADDING_SLOT = 1


def model_run(model: MossTTSRealtime, rows: torch.Tensor, steps: int, max_len: int = 64):
    """Prefill slots 2, 0, 3 (9, 14, 5 rows of ``rows`` [>= 14, channels]), then ``steps``
    decode steps of them and a padding row (slot 1, appends nothing), greedy and seeded rows,
    in a cache of ``max_len`` positions a slot; returns (frames, hidden states, cache)."""
    cfg = model.cfg
    cache = model.new_cache(5, max_len)
    T = max(PREFILL_LENGTHS)
    batch = torch.stack(
        [torch.cat((rows[:n], rows[:1].expand(T - n, -1))) for n in PREFILL_LENGTHS]
    )
    hidden = [
        model.prefill(batch, cache, torch.tensor(PREFILL_SLOTS), torch.tensor(PREFILL_LENGTHS))
    ]
    params = [SamplingParams.greedy_decoding(), SamplingParams(), SamplingParams(top_k=5)]
    sampling = BatchSampling.from_params([*params, SamplingParams()])
    frames = torch.full((4, cfg.rvq), cfg.audio_pad_token)
    history = torch.full((4, 8, cfg.rvq), NO_HISTORY)
    slots, n_new = torch.tensor([*PREFILL_SLOTS, PADDING_SLOT]), torch.tensor([1, 1, 1, 0])
    out = []
    for step in range(steps):
        step_rows = torch.cat((torch.full((4, 1), cfg.text_pad), frames), dim=1)[:, None]
        noise = NoiseKeys.from_ints([10, 11, 12, 13], [step] * 4)
        frames, h = model.decode_step(
            step_rows, cache, slots, max_len, sampling, history, noise, n_new, spare_writes=True
        )
        history = torch.cat((history[:, 1:], frames[:, None]), dim=1)
        out.append(frames)
        hidden.append(h)
    return out, hidden, cache


def random_rows(model: MossTTSRealtime, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows a model takes: a text id below its text pad, audio codes (no golden rows at
    the real sizes)."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, min(cfg.text_pad, cfg.language.vocab_size), (n, 1), generator=gen)
    audio = torch.randint(0, cfg.audio_pad_token, (n, cfg.rvq), generator=gen)
    return torch.cat((text, audio), dim=1)


def codec_run(codec: MossAudioCodec, codes: torch.Tensor) -> torch.Tensor:
    """Streams of different ages through the padded codec frame (``codes`` [quantizers, 3,
    frames]): two, a third from frame 2; the PCM, flattened."""
    state = codec.new_stream_state(4)
    graphed = GraphedCodecDecode(codec, state, batch_buckets=(1, 2, 4))  # prepared when hit
    state.add_streams(2)
    out = []
    for f in range(codes.shape[2]):
        if f == 2:
            state.add_stream()
        slots = [0, 1, 2] if f >= 2 else [0, 1]
        out.append(graphed.step(codes[:, slots, f], slots).flatten())
    return torch.cat(out)
