"""A conversation's rows: system block (with the voice prompt) and turns, in training layout.

The history is the source of truth for what the model should have seen. The session's KV
cache holds a prefix of ``all_rows()``; whatever lies beyond ``cache_len`` is fed with the next
prefill. Rolling back, trimming and changing the voice only change the history and lower
``cache_len``; the cache follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moss_pipecat.engine.row_store import RowStore
from moss_pipecat.engine.rows import RowLayout


@dataclass
class AssistantTurn:
    """What an assistant turn fed: lead rows (text with BOS), step rows, frames generated.

    Attributes:
        text_ids: the turn's text tokens known so far.
        lead: rows of ``prompt`` (text tokens before the first frame).
        prompt: [lead, 17] text rows, BOS on the last (header excluded).
        steps: [17] rows fed by decode steps; step j carries frame j (a ``RowStore``: a few
            tensors, not one per row).
        frames: [rvq] codes generated; frame j came from the hidden of row lead-1+j.
        closing: rows that close the turn once it ended (EOS row, maybe a last-frame row).
        text: the turn's text when it arrived as a string.
        noise_start: see below.
    """

    text_ids: list[int]
    lead: int
    prompt: torch.Tensor
    steps: RowStore = field(default_factory=RowStore)
    frames: RowStore = field(default_factory=RowStore)
    closing: torch.Tensor | None = None
    turn_id: int = -1
    text: str = ""
    role: str = "assistant"
    words: Any = None  # the turn's WordTimer: which words its frames carry
    # The session's noise counter at frame 0 (``SessionState.noise_counter``), so a cut of this
    # turn keeps only the heard frames' draws; below 0 when it began drawing before the last
    # reseed; None where nothing here drew it (a restored turn).
    noise_start: int | None = None

    def __post_init__(self) -> None:
        # rows given as a list of [17] / [rvq] tensors or one [k, ...] tensor: stored compactly
        self.steps, self.frames = RowStore.of(self.steps), RowStore.of(self.frames)

    def body(self) -> torch.Tensor:
        parts = [self.prompt, *self.steps.tensors()]
        if self.closing is not None:
            parts.append(self.closing)
        return torch.cat(parts)

    def body_len(self) -> int:
        """Rows of ``body()``, without building them."""
        closing = 0 if self.closing is None else self.closing.shape[0]
        return self.prompt.shape[0] + len(self.steps) + closing

    def audio_frames(self, eos: int) -> int:
        """Generated frames that are audio (a final EOS frame is not)."""
        n = len(self.frames)
        return n - 1 if n and int(self.frames[-1][0]) == eos else n

    def close(self, layout: RowLayout, heard: int) -> None:
        """Ends the turn as if the user heard its first ``heard`` audio frames.

        Keeps the steps that carried those frames, then the training layout's closing rows:
        the row with the last heard frame if it was never fed, then the EOS row; the text
        channel continues with the turn's next unused token (or text_pad).
        """
        k = max(0, min(heard, self.audio_frames(layout.audio_eos)))
        self.steps.truncate(k)
        self.frames.truncate(k)  # (a closed turn's rows: one tensor each)
        last = self.frames[k - 1] if k > len(self.steps) else None
        used = self.lead + len(self.steps)
        self.closing = layout.closing_rows(iter(self.text_ids[used:]), last)


@dataclass
class UserTurn:
    """A user turn: its rows are complete when it is added (audio known up front)."""

    text_ids: list[int]
    frames: torch.Tensor
    rows: torch.Tensor  # body rows (header excluded), EOS row included
    role: str = "user"

    def body(self) -> torch.Tensor:
        return self.rows

    def body_len(self) -> int:
        return self.rows.shape[0]


Turn = AssistantTurn | UserTurn


class ConversationHistory:
    def __init__(self, layout: RowLayout, system: torch.Tensor) -> None:
        self.layout = layout
        self.system = system
        self.turns: list[Turn] = []

    def header(self, index: int) -> torch.Tensor:
        return self.layout.header(self.turns[index].role, first=index == 0)

    def turn_rows(self, index: int) -> torch.Tensor:
        return torch.cat((self.header(index), self.turns[index].body()))

    def offset(self, index: int) -> int:
        """Row at which turn ``index`` starts (counted, not built: trims and budget checks
        ask it of long histories)."""
        turns = self.turns
        rows = sum(self.layout.header_rows(turns[i].role, i == 0) for i in range(index))
        return self.system.shape[0] + rows + sum(turns[i].body_len() for i in range(index))

    def all_rows(self) -> torch.Tensor:
        return torch.cat([self.system, *(self.turn_rows(i) for i in range(len(self.turns)))])

    def audio_frames(self) -> list[int]:
        """Audio frames each turn holds (an assistant turn: those generated, or kept when it
        was cut; a user turn: its codec frames)."""
        eos = self.layout.audio_eos
        return [
            t.audio_frames(eos) if isinstance(t, AssistantTurn) else int(t.frames.shape[0])
            for t in self.turns
        ]

    def __len__(self) -> int:
        return self.offset(len(self.turns))

    def trim(self, max_rows: int) -> int:
        """Drops the oldest turns until the rows fit ``max_rows`` (system block always kept).

        Returns the number of turns dropped.
        """
        dropped = 0
        while self.turns and len(self) > max_rows:
            self.turns.pop(0)
            dropped += 1
        return dropped
