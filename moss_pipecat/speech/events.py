"""What a turn's output stream carries: audio chunks and the turn's summary.

Pure Python (torch only for type checking) so the client and the protocol can build them
without the engine; ``moss_pipecat.engine`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TurnText:
    """Text ids an assistant turn received since its previous chunk: with the chunks' codes,
    the turn's rows as they stand (``lead`` prompt ids with BOS, then frame ``j`` on the row
    of id ``lead + j``, ``pad`` past the text, an EOS row closing it), so a client's journal
    can keep the turn in flight, cut at what was heard, when its server is lost
    (``client.journal.InflightTurn``).

    Attributes:
        start: the index in the turn's text of ``ids[0]``.
        ids: the new text ids.
        lead: the turn's prompt rows; pad: the ``<|text_pad|>`` id.
    """

    start: int
    ids: tuple[int, ...]
    lead: int
    pad: int


@dataclass(frozen=True)
class AudioChunk:
    """One generated audio frame (80 ms).

    Attributes:
        turn_id: the turn it belongs to; index: frame number in the turn (0-based).
        codes: [rvq] int64 codes.
        pcm: 16-bit mono PCM at the codec's rate (1920 samples at 24 kHz), or None when the
            engine runs without a codec.
        words: the words this frame lets the engine place, as (word, seconds from the
            turn's first frame): strictly increasing across a turn, always inside the audio
            generated so far (see ``engine.word_times``).
        text: the text ids the turn received since its previous chunk (None: none).
    """

    turn_id: int
    index: int
    codes: torch.Tensor
    pcm: bytes | None
    words: tuple[tuple[str, float], ...] = ()
    text: TurnText | None = None


@dataclass
class TurnSummary:
    """How a turn ended.

    Attributes:
        stop: "eos" (the model ended it), "max_frames" (frame cap), "interrupted", "empty"
            (no text to speak), "closed" (session closed) or "error".
        audio_frames: audio frames generated (an EOS frame is not audio).
        heard_frames: frames kept in the conversation (all of them unless interrupted).
        text_ids: text tokens the turn received; text: its text when given as a string.
        spoken_text: the words spoken in the heard frames (by the turn's word times).
        ttfa_s: seconds from the prefill trigger (enough text, or text end) to the first frame.
        error: the exception that ended it, for stop == "error".
        words: words placed when the turn ended ("eos", "max_frames"), after those of its
            chunks; words that were never fed to the model are never placed.
    """

    turn_id: int
    stop: str
    audio_frames: int = 0
    heard_frames: int = 0
    text_ids: list[int] = field(default_factory=list)
    text: str = ""
    spoken_text: str = ""
    ttfa_s: float | None = None
    error: BaseException | None = None
    words: list[tuple[str, float]] = field(default_factory=list)
