"""Conversation rows in the MOSS-TTS-Realtime training layout.

A row holds 17 ids: the text id, then one id per audio codebook. The layout (fixtures README,
"Row layout of a conversation"):

* system block: ``<|im_start|> system \\n <system text> <|im_end|> \\n``, optionally followed by a
  voice-prompt block ``<|im_start|> context \\n <instruction> <|audio_pad|>xR <|im_end|> \\n``
  whose R rows carry the reference frames;
* every turn: a header (``<|im_start|> ROLE \\n``, preceded by ``<|im_end|> \\n`` after the first
  turn), the text, and the audio delayed by ``delay`` text tokens (or right after a shorter
  text), BOS in codebook 0 of the row before the first frame, one EOS row closing the turn; the
  text channel is ``<|text_pad|>`` once the text is used up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from moss_pipecat.errors import InvalidInputError

DEFAULT_DELAY = 12


@dataclass(frozen=True)
class RowLayout:
    """The ids a conversation is built from.

    Attributes:
        rvq: audio codebooks per row.
        audio_pad / audio_bos / audio_eos: audio-channel specials (1024 / 1025 / 1026).
        text_pad: ``<|text_pad|>``; ref_audio_pad: ``<|audio_pad|>`` (text of voice-prompt rows).
        im_start / im_end / newline: chat-template ids.
        roles: role name -> its token ids (``assistant``, ``user``, ``system``, ``context``).
        delay: text tokens the audio trails the text by.
    """

    rvq: int
    audio_pad: int
    audio_bos: int
    audio_eos: int
    text_pad: int
    ref_audio_pad: int
    im_start: int
    im_end: int
    newline: tuple[int, ...]
    roles: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    delay: int = DEFAULT_DELAY

    @property
    def channels(self) -> int:
        return self.rvq + 1

    def text_rows(self, text_ids: Sequence[int]) -> torch.Tensor:
        """[n, 17]: the text ids with audio pad in every codebook."""
        rows = torch.full((len(text_ids), self.channels), self.audio_pad, dtype=torch.int64)
        rows[:, 0] = torch.as_tensor(list(text_ids), dtype=torch.int64)
        return rows

    def role_ids(self, role: str) -> tuple[int, ...]:
        try:
            return tuple(self.roles[role])
        except KeyError:
            raise InvalidInputError(f"unknown role {role!r}; known: {sorted(self.roles)}") from None

    def header(self, role: str, first: bool) -> torch.Tensor:
        """``<|im_start|> ROLE \\n``, preceded by ``<|im_end|> \\n`` unless it is the first turn."""
        return self.text_rows(self._header_ids(role, first))

    def header_rows(self, role: str, first: bool) -> int:
        """Rows of ``header(role, first)``."""
        return len(self._header_ids(role, first))

    def _header_ids(self, role: str, first: bool) -> list[int]:
        ids = [] if first else [self.im_end, *self.newline]
        return [*ids, self.im_start, *self.role_ids(role), *self.newline]

    def system_block(
        self,
        system_text: Sequence[int],
        ref_codes: torch.Tensor | None = None,
        instruction: Sequence[int] = (),
    ) -> torch.Tensor:
        """System prompt rows, plus the voice-prompt block when reference codes are given.

        Args:
            system_text: ids of the system sentence.
            ref_codes: [R, rvq] reference-voice frames, or None.
            instruction: ids of the voice-clone instruction sentence.
        """
        end = [self.im_end, *self.newline]
        ids = [self.im_start, *self.role_ids("system"), *self.newline, *system_text, *end]
        parts = [self.text_rows(ids)]
        if ref_codes is not None and len(ref_codes):
            ref = self.check_frames(ref_codes, "ref_codes")
            head = [self.im_start, *self.role_ids("context"), *self.newline, *instruction]
            voice = self.text_rows([self.ref_audio_pad] * ref.shape[0])
            voice[:, 1:] = ref
            parts += [self.text_rows(head), voice, self.text_rows(end)]
        return torch.cat(parts)

    def lead(self, n_text: int) -> int:
        """Text rows before the first audio frame of a turn with ``n_text`` tokens."""
        return min(n_text, self.delay)

    def turn_rows(
        self, header: torch.Tensor, text: Sequence[int], frames: torch.Tensor
    ) -> torch.Tensor:
        """A whole turn: header, text, delayed audio, EOS row. Used for user turns (whose audio
        is known up front) and for rebuilding a finished assistant turn.

        Args:
            header: rows from ``header``; text: the turn's text ids; frames: [A, rvq] codes.
        Raises:
            InvalidInputError: if the text does not fit beside the audio (L > delay + A + 1).
        """
        frames = self.check_frames(frames, "frames")
        L, A = len(text), frames.shape[0]
        lead = self.lead(L)
        if L > lead + A + 1:
            raise InvalidInputError(
                f"{L} text tokens do not fit beside {A} audio frames "
                f"(at most {lead + A + 1}); the text is too long for the audio"
            )
        rows = self.text_rows([self.text_pad] * (lead + A + 1))
        rows[:L, 0] = torch.as_tensor(list(text), dtype=torch.int64)
        if lead > 0:
            rows[lead - 1, 1] = self.audio_bos
        else:
            header = header.clone()
            header[-1, 1] = self.audio_bos
        rows[lead : lead + A, 1:] = frames
        rows[lead + A, 1] = self.audio_eos
        return torch.cat((header, rows))

    def prefill_rows(self, header: torch.Tensor, text: Sequence[int]) -> torch.Tensor:
        """Rows that start an assistant turn: header + the first min(L, delay) text ids, BOS on the
        last row (the row whose hidden state yields frame 0)."""
        lead = self.lead(len(text))
        rows = torch.cat((header, self.text_rows(list(text[:lead]))))
        rows[-1, 1] = self.audio_bos
        return rows

    def step_row(self, text_id: int, frame: torch.Tensor) -> torch.Tensor:
        """[17]: one decode-step row, ``text_id`` beside the previous frame."""
        return torch.cat((torch.tensor([text_id], dtype=torch.int64), frame.to(torch.int64)))

    def step_rows(self, text_ids: Sequence[int], frames: torch.Tensor) -> torch.Tensor:
        """[B, 17]: a batch's decode-step rows at once (row b is ``step_row(text_ids[b],
        frames[b])``), for frames [B, rvq]."""
        text = torch.tensor(text_ids, dtype=torch.int64)[:, None]  # [B, 1]
        return torch.cat((text, frames.to(torch.int64)), dim=1)

    def closing_rows(
        self, next_text: Iterator[int], last_frame: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rows that close an assistant turn in the training layout.

        Args:
            next_text: yields the turn's unused text ids (``text_pad`` once exhausted).
            last_frame: [rvq] the last generated frame when the turn was cut by a frame cap
                (it was never fed); None when the model ended it with EOS.
        """
        rows = []
        if last_frame is not None:
            rows.append(self.step_row(next(next_text, self.text_pad), last_frame))
        eos = torch.full((self.channels,), self.audio_pad, dtype=torch.int64)
        eos[0], eos[1] = next(next_text, self.text_pad), self.audio_eos
        rows.append(eos)
        return torch.stack(rows)

    def check_frames(self, frames: torch.Tensor, name: str) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        if frames.dim() != 2 or frames.shape[1] != self.rvq:
            raise InvalidInputError(
                f"{name} must be [frames, {self.rvq}], got {tuple(frames.shape)}"
            )
        if frames.is_floating_point():
            raise InvalidInputError(f"{name} must be integer codes, got {frames.dtype}")
        if len(frames) and bool(((frames < 0) | (frames > self.audio_eos)).any()):
            raise InvalidInputError(f"{name} has codes outside [0, {self.audio_eos}]")
        return frames.to(torch.int64)
