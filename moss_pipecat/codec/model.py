"""MossAudioCodec: MOSS-Audio-Tokenizer encode, full decode and batched streaming decode.

Code layout is upstream's: ``codes [Q, B, T]`` (quantizer-major). The TTS works frame-major
(``[T, 16]``); ``frames_to_codes``/``codes_to_frames`` convert.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from moss_pipecat._log import logger
from moss_pipecat.checkpoint import check_keys, load_state_dict, read_config, resolve_checkpoint
from moss_pipecat.codec.audio import check_sample_rate, resample, to_mono_batch
from moss_pipecat.codec.config import CodecConfig, PatchConfig
from moss_pipecat.codec.modules import PatchFold, PatchUnfold, RingView, TransformerStage
from moss_pipecat.codec.quantizer import (
    ResidualLFQ,
    checkpoint_shapes,
    fold_weight_norm,
    weight_norm_prefixes,
)
from moss_pipecat.codec.streaming import CodecStreamState, StageRings
from moss_pipecat.errors import InvalidInputError

DEFAULT_CHUNK_FRAMES = 250  # 20 s: longer inputs run in chunks with carried state (same result)


@dataclass
class EncodedAudio:
    """Result of ``MossAudioCodec.encode``.

    Attributes:
        codes: ``[Q, B, T]`` int64. ``T = ceil(samples / downsample_rate)`` at the codec's
            rate; the last frame is partial (zero-padded input) unless the length is a multiple
            of a frame.
        lengths: ``[B]`` int64, valid (complete) frames: ``floor(samples / downsample_rate)``.
        hidden: ``[B, D, T]`` encoder output before quantisation (upstream's conv layout).
    """

    codes: torch.Tensor
    lengths: torch.Tensor
    hidden: torch.Tensor


def frames_to_codes(frames: torch.Tensor) -> torch.Tensor:
    """Frame-major ``[T, Q]`` or ``[B, T, Q]`` -> codec layout ``[Q, B, T]``."""
    if frames.dim() == 2:
        frames = frames[None]
    if frames.dim() != 3:
        raise InvalidInputError(f"frames must be [T, Q] or [B, T, Q], got {tuple(frames.shape)}")
    return frames.permute(2, 0, 1)


def codes_to_frames(codes: torch.Tensor) -> torch.Tensor:
    """Codec layout ``[Q, B, T]`` -> frame-major ``[B, T, Q]``."""
    return codes.permute(1, 2, 0)


class MossAudioCodec(nn.Module):
    """MOSS-Audio-Tokenizer in plain PyTorch.

    Build with ``from_pretrained`` (checkpoint) or ``random`` (random weights, benchmarks).
    Parameter names match the upstream checkpoint, except that the quantizer's weight-normalised
    convolutions are folded into plain ``weight``s at load time.
    """

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.ModuleList(
            PatchFold(m.patch_size) if isinstance(m, PatchConfig) else TransformerStage(m)
            for m in config.encoder
        )
        self.quantizer = ResidualLFQ(config.quantizer)
        self.decoder = nn.ModuleList(
            PatchUnfold(m.patch_size) if isinstance(m, PatchConfig) else TransformerStage(m)
            for m in config.decoder
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        repo_or_path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        revision: str | None = None,
    ) -> MossAudioCodec:
        """Loads a MOSS-Audio-Tokenizer checkpoint (local directory or hub id).

        Modules are built on ``meta`` and the checkpoint tensors are assigned in place, so the
        weights exist once. The quantizer stays float32 (it is tiny and argmax-sensitive).

        Raises:
            CheckpointError: missing/unreadable directory, config or weights.
            ConfigMismatchError: the weights do not fit the architecture in config.json.
        """
        _check_dtype(dtype)
        directory = resolve_checkpoint(repo_or_path, revision=revision)
        config = CodecConfig.from_dict(read_config(directory))
        with torch.device("meta"):
            model = cls(config)
        state = load_state_dict(directory, device=device)
        check_keys(model.checkpoint_shapes(), state, ignored={})
        fold_weight_norm(state, model.weight_norm_prefixes())
        for k in list(state):
            state[k] = state[k].to(torch.float32 if k.startswith("quantizer.") else dtype)
        model.load_state_dict(state, strict=True, assign=True)
        model._finish()
        logger.info(
            f"Loaded MOSS-Audio-Tokenizer from {directory}: "
            f"{model.num_parameters() / 1e6:.1f}M parameters, {dtype}, {device}"
        )
        return model

    @classmethod
    def random(
        cls,
        config: CodecConfig,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> MossAudioCodec:
        """A codec with random weights (scaled so activations stay O(1)), for benchmarks."""
        _check_dtype(dtype)
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        # Drawn where the weights live (a real-size codec drawn on a CPU took ~20 s per GPU
        # benchmark start); the same seed gives other values on another device type.
        where = torch.device(device)
        where = where if where.type in ("cpu", "cuda") else torch.device("cpu")
        gen = torch.Generator(device=where).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
                    init = torch.full(p.shape, 0.01, device=where)
                elif ".norm" in name:
                    fill = 1.0 if name.endswith("weight") else 0.0
                    init = torch.full(p.shape, fill, device=where)
                elif name.endswith("bias"):
                    init = torch.zeros(p.shape, device=where)
                elif p.dim() == 2 and "codebook" not in name:
                    init = torch.randn(p.shape, generator=gen, device=where) / math.sqrt(p.shape[1])
                else:
                    init = torch.randn(p.shape, generator=gen, device=where)
                p.copy_(init)
        for name, p in model.named_parameters():
            if not name.startswith("quantizer."):
                p.data = p.data.to(dtype)
        model._finish()
        return model

    def _finish(self) -> None:
        self.quantizer.prepare()
        self.eval()
        self.requires_grad_(False)

    def checkpoint_shapes(self) -> dict[str, torch.Size]:
        """Checkpoint key -> shape this config needs (upstream names, weight norm unfolded)."""
        return checkpoint_shapes(self)

    def weight_norm_prefixes(self) -> list[str]:
        """Names of the weight-normalised 1x1 convolutions in the checkpoint."""
        return weight_norm_prefixes(self)

    def num_parameters(self) -> int:
        """Parameters of the loaded (weight-norm folded) model."""
        return sum(p.numel() for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder_dtype

    @property
    def decoder_dtype(self) -> torch.dtype:
        for m in self.decoder:
            if isinstance(m, TransformerStage):
                return m.transformer.layers[0].linear1.weight.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.quantizer.quantizers[0].codebook.weight.device

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def samples_per_frame(self) -> int:
        return self.config.downsample_rate

    # ------------------------------------------------------------------ encode

    @torch.inference_mode()
    def encode(
        self,
        wav: torch.Tensor,
        sample_rate: int,
        num_quantizers: int | None = None,
        chunk_frames: int | None = None,
    ) -> EncodedAudio:
        """Encodes audio into codes.

        Args:
            wav: ``[S]``, ``[C, S]`` or ``[B, C, S]`` float samples (channels are averaged).
            sample_rate: rate of ``wav``; anything else than the codec's rate (24 kHz upstream) is
                resampled with soxr.
            num_quantizers: codebooks to compute (default all; the TTS uses its ``rvq``). The first
                ``n`` codes do not depend on ``n``.
            chunk_frames: run the encoder over this many frames at a time with carried
                attention state (bounds memory for long audio; same result as one pass).
                Default: one pass up to 250 frames (20 s), chunks of 250 beyond.

        Raises:
            InvalidInputError: bad audio, sample rate or arguments.
        """
        n_q = self._check_num_quantizers(num_quantizers)
        sr = check_sample_rate(sample_rate)
        x = to_mono_batch(wav)  # [B, S]
        x = resample(x, sr, self.sampling_rate).to(self.device)
        b, s = x.shape
        hop = self.samples_per_frame
        t = -(-s // hop)  # ceil: the last partial frame is zero-padded, as upstream
        x = torch.nn.functional.pad(x, (0, t * hop - s))
        lengths = torch.full((b,), s // hop, dtype=torch.long, device=x.device)
        dtype = self._encoder_dtype()
        hidden = self._run_chunked(
            self.encoder, self.config.encoder, x[..., None].to(dtype), t, hop, chunk_frames
        )  # [B, T, D]
        codes = self.quantizer.encode(hidden.float(), lengths, n_q)
        return EncodedAudio(codes=codes, lengths=lengths, hidden=hidden.float().transpose(1, 2))

    def encode_frames(
        self, wav: torch.Tensor, sample_rate: int, num_quantizers: int
    ) -> torch.Tensor:
        """One clip -> its complete frames, frame-major ``[T, num_quantizers]`` int64.

        This is what the TTS takes for a voice reference or a user turn, with
        ``num_quantizers`` = the TTS model's ``rvq`` (no default: the codec cannot know how
        many codebooks a model reads). A trailing partial frame (one codec hop, 80 ms, not
        filled) is dropped.
        """
        enc = self.encode(wav, sample_rate, num_quantizers=num_quantizers)
        if enc.codes.shape[1] != 1:
            raise InvalidInputError(
                f"encode_frames takes one clip, got a batch of {enc.codes.shape[1]}"
            )
        n = int(enc.lengths[0])
        return enc.codes[:, 0, :n].T.contiguous()

    def _encoder_dtype(self) -> torch.dtype:
        for m in self.encoder:
            if isinstance(m, TransformerStage):
                return m.transformer.layers[0].linear1.weight.dtype
        return torch.float32

    # ------------------------------------------------------------------ decode

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """Decodes codes into audio (non-streaming).

        Args:
            codes: ``[Q, B, T]`` (or ``[Q, T]`` for one clip) integer codes of the first ``Q``
                quantizers, each in ``0..codebook_size-1``.
            chunk_frames: frames per decoder pass with carried state (default 250; any value
                gives the same audio).

        Returns:
            ``[B, 1, T * downsample_rate]`` float32 waveform at ``sampling_rate``.

        Raises:
            InvalidInputError: wrong shape, dtype or out-of-range codes.
        """
        if isinstance(codes, torch.Tensor) and codes.dim() == 2:
            codes = codes[:, None]  # [Q, T] -> [Q, 1, T]
        self.check_codes(codes)
        codes = codes.to(self.device, torch.long)
        t = codes.shape[2]
        x = self.quantizer.decode(codes).to(self.decoder_dtype)  # [B, T, D]
        wav = self._run_chunked(self.decoder, self.config.decoder, x, t, 1, chunk_frames)
        return wav.float().transpose(1, 2)  # [B, S, 1] -> [B, 1, S]

    def _run_chunked(
        self,
        modules: nn.ModuleList,
        configs: tuple,
        x: torch.Tensor,
        frames: int,
        steps_per_frame: int,
        chunk_frames: int | None,
    ) -> torch.Tensor:
        """Runs a whole sequence ``x [B, frames*steps_per_frame, C]`` through ``modules``.

        Up to ``chunk_frames`` frames go through in one pass with band masks; longer inputs go
        through in chunks with a temporary ring state, which gives the same result.
        """
        chunk = DEFAULT_CHUNK_FRAMES if chunk_frames is None else int(chunk_frames)
        if chunk < 1:
            raise InvalidInputError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if frames <= chunk:
            return run_modules(modules, x, None)
        b = x.shape[0]
        rings = StageRings(configs, b, chunk, x.dtype, x.device)
        outs = []
        for f0 in range(0, frames, chunk):
            f1 = min(frames, f0 + chunk)
            xc = x[:, f0 * steps_per_frame : f1 * steps_per_frame]
            outs.append(run_modules(modules, xc, rings.views(b)))
            rings.advance(b, f1 - f0)
        return torch.cat(outs, dim=1)

    # ------------------------------------------------------------------ streaming decode

    def new_stream_state(self, capacity: int, max_frames_per_step: int = 1) -> CodecStreamState:
        """Streaming state for up to ``capacity`` concurrent streams on this codec's device."""
        return CodecStreamState(
            self.config,
            capacity,
            max_frames_per_step=max_frames_per_step,
            dtype=self.decoder_dtype,
            device=self.device,
        )

    @torch.inference_mode()
    def decode_step(
        self,
        state: CodecStreamState,
        codes: torch.Tensor,
        slots: Sequence[int],
        check: bool = True,
    ) -> torch.Tensor:
        """Decodes the next frames of several streams in one batched pass.

        Streams may be at any point of their lives; streams not named in ``slots`` do not
        advance. The result equals decoding each stream's whole code sequence at once.

        Args:
            state: from ``new_stream_state``; its slots come from ``state.add_stream()``.
            codes: ``[Q, B, T]`` next ``T`` frames of each of the ``B`` streams.
            slots: ``B`` distinct active slots, row ``i`` of ``codes`` belongs to ``slots[i]``.
            check: validate code values (one host sync). Shape checks always run; pass
                ``False`` only where the producer guarantees ``0..codebook_size-1``.

        Returns:
            ``[B, T * downsample_rate]`` float32 audio, row ``i`` for ``slots[i]``.
        """
        slots = [int(s) for s in slots]
        self.check_codes(codes, values=check)
        if len(slots) != codes.shape[1]:
            raise InvalidInputError(f"{len(slots)} slots for a batch of {codes.shape[1]} streams")
        if len(set(slots)) != len(slots):
            raise InvalidInputError(f"slots must be distinct, got {slots}")
        live = set(state.active_slots)
        if not set(slots) <= live:
            raise InvalidInputError(f"slots {sorted(set(slots) - live)} are not active streams")
        if state.config is not self.config and state.config != self.config:
            raise InvalidInputError("stream state was made for a different codec config")
        n_q, b, t = codes.shape
        n = max(slots) + 1  # rows 0..n-1 are computed; slots are packed low (add_stream)
        dev = state.device
        rows = torch.tensor(slots, dtype=torch.long, device=dev)
        if b == n and slots == list(range(n)):
            full, active = codes.to(dev, torch.long), None
        else:
            full = torch.zeros(n_q, n, t, dtype=torch.long, device=dev)
            full[:, rows] = codes.to(dev, torch.long)
            active = torch.zeros(n, dtype=torch.bool, device=dev)
            active[rows] = True
        outs = []
        step = state.max_frames_per_step
        for f0 in range(0, t, step):
            f1 = min(t, f0 + step)
            x = self.quantizer.decode(full[:, :, f0:f1]).to(self.decoder_dtype)  # [n, t', D]
            outs.append(run_modules(self.decoder, x, state.rings.views(n)))  # [n, t'*hop, 1]
            state.rings.advance(n, f1 - f0, active)
        state._record(slots, t)
        wav = torch.cat(outs, dim=1)[..., 0].float()  # [n, T*hop]
        return wav if active is None else wav[rows]

    # ------------------------------------------------------------------ checks

    def check_codes(self, codes: torch.Tensor, values: bool = True) -> None:
        """Raises ``InvalidInputError`` unless ``codes`` is a valid ``[Q, B, T]`` code tensor."""
        qc = self.config.quantizer
        if not isinstance(codes, torch.Tensor):
            raise InvalidInputError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
            raise InvalidInputError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.dim() != 3:
            raise InvalidInputError(
                f"codes must be [num_quantizers, batch, frames], got shape {tuple(codes.shape)}"
            )
        n_q, b, t = codes.shape
        if not 1 <= n_q <= qc.num_quantizers:
            raise InvalidInputError(
                f"codes have {n_q} quantizers; the codec has 1..{qc.num_quantizers}"
            )
        if b < 1 or t < 1:
            raise InvalidInputError(f"codes are empty (shape {tuple(codes.shape)})")
        if values:
            lo, hi = torch.stack([codes.min(), codes.max()]).tolist()  # one host sync
            if lo < 0 or hi >= qc.codebook_size:
                raise InvalidInputError(
                    f"codes must be in 0..{qc.codebook_size - 1}, got values in {lo}..{hi}"
                )

    def _check_num_quantizers(self, n: int | None) -> int:
        total = self.config.quantizer.num_quantizers
        if n is None:
            return total
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise InvalidInputError(f"num_quantizers must be an int in 1..{total}, got {n!r}")
        return n


def run_modules(
    modules: nn.ModuleList, x: torch.Tensor, rings: list[RingView | None] | None
) -> torch.Tensor:
    """Runs ``x`` through encoder or decoder modules (time-major)."""
    for i, m in enumerate(modules):
        x = m(x, None if rings is None else rings[i])
    return x


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidInputError(f"dtype must be a floating torch.dtype, got {dtype!r}")


__all__ = [
    "EncodedAudio",
    "MossAudioCodec",
    "codes_to_frames",
    "frames_to_codes",
]
