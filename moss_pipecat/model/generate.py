"""Single-session turn generation: prefill a prompt, then one text row in, one frame out.

A plain synchronous loop for scripts, tests and benchmarks. The engine runs the same steps
for many sessions at once; this is the reference it is checked against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model.kv_cache import KVCache
from moss_pipecat.model.moss_tts import MossTTSRealtime
from moss_pipecat.model.sampling import (
    NO_HISTORY,
    BatchSampling,
    NoiseKeys,
    SamplingParams,
    exponential_noise,
)


@dataclass
class TurnResult:
    """frames: [F, rvq] codes (frame 0 from the prefill); hidden: [F, H] the hidden state that
    produced each frame; fed: [F-1] text ids fed by the steps; stop: "eos" or "max_frames"."""

    frames: torch.Tensor
    hidden: torch.Tensor
    fed: torch.Tensor
    stop: str


class FrameHistory:
    """Rolling window of a turn's last ``window`` frames per row, for the repetition penalty.

    buf: [B, window, rvq] int64, ``NO_HISTORY`` where empty. Static shape; the newest frame
    goes to the end.
    """

    def __init__(self, batch: int, window: int, rvq: int, device: torch.device | str) -> None:
        self.buf = torch.full((batch, window, rvq), NO_HISTORY, dtype=torch.int64, device=device)

    def push(self, frames: torch.Tensor) -> None:
        """frames: [B, rvq]."""
        if self.buf.shape[1]:
            self.buf = torch.cat((self.buf[:, 1:], frames[:, None]), dim=1)

    def clear(self, rows: torch.Tensor | slice = slice(None)) -> None:
        self.buf[rows] = NO_HISTORY


@torch.inference_mode()
def generate_turn(
    model: MossTTSRealtime,
    cache: KVCache,
    slot: int,
    prompt: torch.Tensor,
    remaining_text: Sequence[int],
    max_frames: int,
    sampling: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    min_frames: int = 0,
    eos_after_text: bool = False,
    seed: int | None = None,
    counter: int = 0,
) -> TurnResult:
    """Generates one turn for one cache slot.

    Args:
        prompt: [R, 17] rows of the turn's prefill (ends with the first min(L, delay) text
            tokens, BOS in codebook 0 of its last row), appended to the slot's history.
        remaining_text: text ids not in the prompt; step j feeds the next one, then text_pad.
        max_frames: hard cap on frames, frame 0 included.
        sampling: defaults to greedy with the upstream repetition penalty.
        generator: source of randomness for sampled decoding: explicit noise drawn from it
            (``exponential_noise``), one draw per frame.
        seed, counter: instead of ``generator``, the engine's counter-based noise: frame i's
            noise is ``keyed_noise`` of (seed, counter + i), so a fresh engine session with
            this seed makes the same frames (its counter starts at 0 and counts its frames).
        min_frames: frames 0..min_frames-1 never end the turn (EOS on codebook 0 is masked), so
            the turn has at least ``min(min_frames, max_frames)`` audio frames.
        eos_after_text: EOS is masked until every text id has been fed.
    """
    cfg = model.cfg
    if seed is not None and generator is not None:
        raise InvalidInputError("pass a generator or a seed, not both")
    sampling = sampling or SamplingParams.greedy_decoding()
    batch = BatchSampling.from_params([sampling], device=cache.device)
    slots = torch.tensor([slot], device=cache.device)
    history = FrameHistory(1, sampling.repetition_window, cfg.rvq, cache.device)
    vocab = cfg.audio_vocab_size

    text = list(remaining_text)
    allow = torch.ones(1, dtype=torch.bool, device=cache.device)

    def frame(h: torch.Tensor, index: int) -> torch.Tensor:
        noise = None
        if not sampling.greedy and seed is not None:
            noise = NoiseKeys.from_ints([seed], [counter + index], cache.device)
        elif not sampling.greedy:
            noise = exponential_noise([generator], (cfg.rvq, vocab), device=cache.device)
        hist = history.buf if index > 0 and sampling.repetition_window else None
        allow.fill_(index >= min_frames and not (eos_after_text and text))
        return model.generate_frame(h, dataclasses.replace(batch, allow_eos=allow), hist, noise)

    h = model.prefill(prompt[None].to(cache.device), cache, slots)  # [1, H]
    frames, hiddens, fed = [frame(h, 0)], [h], []  # frames: [1, rvq] each
    stop = "max_frames"
    while True:
        if int(frames[-1][0, 0]) == cfg.audio_eos:
            stop = "eos"
            break
        if len(frames) >= max_frames:
            break
        history.push(frames[-1])
        token = text.pop(0) if text else cfg.text_pad
        fed.append(token)
        row = torch.cat((torch.tensor([[token]], device=cache.device), frames[-1]), dim=1)
        h = model.backbone(row[:, None], cache, slots)[:, 0]  # [1, H]
        frames.append(frame(h, len(frames)))
        hiddens.append(h)
    return TurnResult(
        frames=torch.cat(frames),
        hidden=torch.cat(hiddens),
        fed=torch.tensor(fed, dtype=torch.int64),
        stop=stop,
    )
