"""Per-session state, owned and mutated by the engine thread only."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from moss_pipecat.engine.config import FRAME_SECONDS, EngineConfig
from moss_pipecat.engine.events import Channel
from moss_pipecat.engine.history import AssistantTurn, ConversationHistory
from moss_pipecat.engine.speaking_rate import SpeakingRates
from moss_pipecat.engine.word_times import WordTimer
from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.speech.events import TurnText


class Phase(enum.Enum):
    IDLE = "idle"  # no assistant turn open
    WAIT_TEXT = "wait_text"  # turn open, not enough text to prefill yet
    PREFILL = "prefill"  # rows being fed, chunk by chunk
    DECODE = "decode"  # one frame per step
    CLOSED = "closed"


@dataclass
class OpenTurn:
    """The assistant turn being generated."""

    turn_id: int
    channel: Channel
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    text_done: bool = False
    record: AssistantTurn | None = None  # set when the prefill starts
    fed_text: int = 0  # text tokens in the rows fed so far (lead + steps)
    t_trigger: float | None = None
    t_first: float | None = None
    max_frames: int | None = None  # the caller's own cap for this turn
    min_frames: int = 0  # frames before which EOS is masked
    eos_after_text: bool = False  # EOS masked until the whole text is fed
    words: WordTimer | None = None
    token_ends: list[int] = field(default_factory=list)  # end char (in text) of each token
    reported: int = 0  # text ids told with its chunks so far (``new_text``)

    def new_text(self, pad: int) -> TurnText | None:
        """The text ids received since the last call (None: none), for the turn's next chunk."""
        start, self.reported = self.reported, len(self.tokens)
        if start == self.reported:
            return None
        return TurnText(start, tuple(self.tokens[start:]), self.record.lead, pad)

    def fed_chars(self) -> int:
        """Characters of ``text`` the fed text tokens cover: an upper bound on what was said."""
        return self.token_ends[self.fed_text - 1] if self.fed_text > 0 else 0


@dataclass(eq=False)  # identity semantics: states are dict keys
class SessionState:
    session_id: str
    pool: int  # index into the engine's KV pools
    slot: int  # slot within that pool
    hist_row: int  # row of the engine's repetition-penalty history buffer
    history: ConversationHistory
    sampling: SamplingParams
    seed: int  # the key of the session's sampling noise (with ``noise_counter``)
    # Frames drawn since the session was (re)seeded, less those a cut turn drew past what was
    # heard (``EngineCore.close_record``, from the turn's ``noise_start``): the noise after a
    # barge-in depends on what was heard, not on how far generation had run when it came.
    noise_counter: int = 0
    phase: Phase = Phase.IDLE
    cache_len: int = 0  # host mirror of the slot's KV length
    turn: OpenTurn | None = None
    to_feed: torch.Tensor | None = None  # rows of the prefill still to feed
    prefix_pending: torch.Tensor | None = None  # system rows to keep in the prefix cache once fed
    refeed_end: int = 0  # rows below this were cached once: feeding them again is a re-prefill
    next_turn_id: int = 0
    rates: SpeakingRates = field(default_factory=SpeakingRates)  # refined per session
    codec_slot: int | None = None
    # Per-session overrides of the engine's EngineConfig (None: the engine's value).
    context_budget: int | None = None
    lookahead_s: float | None = None
    unlimited_lookahead: bool = False

    # ---- prefill -----------------------------------------------------------------------------
    def feed(self, rows: torch.Tensor) -> None:
        """Starts the turn's prefill of ``rows`` [N, C]; its channel tells how far it got."""
        self.to_feed = rows
        self.turn.channel.prefilled = (0, rows.shape[0])

    def fed(self, n: int) -> None:
        """The next ``n`` rows of the prefill are in the cache."""
        self.cache_len += n
        self.to_feed = self.to_feed[n:]
        done, total = self.turn.channel.prefilled
        self.turn.channel.prefilled = (done + n, total)

    # ---- readiness -------------------------------------------------------------------------
    def ready_to_prefill(self, delay: int) -> bool:
        """A turn starts once its text is one token past the delay (or has ended): the
        prefill feeds ``delay`` tokens and the first decode step, in the same tick, the next.
        Started on exactly ``delay``, a reply whose LLM streams slower than the engine ticks
        made its first frame and then waited a tick for text: a 2-tick gap after the first
        audio (simulated at 256 calls, 40 tokens/s: the p99 gap's tail)."""
        t = self.turn
        return (
            self.phase is Phase.WAIT_TEXT
            and t is not None
            and (len(t.tokens) > delay or (t.text_done and len(t.tokens) > 0))
        )

    def next_text_id(self, text_pad: int) -> int | None:
        """The text id the next step feeds, or None while waiting for the LLM."""
        t = self.turn
        if t.fed_text < len(t.tokens):
            return t.tokens[t.fed_text]
        return text_pad if t.text_done else None

    def eos_allowed(self, stepping: bool) -> bool:
        """Whether the turn's next frame may be EOS: not before ``min_frames`` frames, and with
        ``eos_after_text`` not before the text has ended and all of it is fed (counting the
        token the current step feeds when ``stepping``)."""
        t = self.turn
        if len(t.record.frames) < t.min_frames:
            return False
        if t.eos_after_text:
            fed = t.fed_text + int(stepping and t.fed_text < len(t.tokens))
            return t.text_done and fed >= len(t.tokens)
        return True

    def lookahead(self, config: EngineConfig) -> float | None:
        if self.unlimited_lookahead:
            return None
        return self.lookahead_s if self.lookahead_s is not None else config.lookahead_s

    def within_lookahead(self, config: EngineConfig, now: float) -> bool:
        lookahead = self.lookahead(config)
        if lookahead is None or self.turn.t_first is None:
            return True
        played = (now - self.turn.t_first) / FRAME_SECONDS
        return len(self.turn.record.frames) < played + lookahead / FRAME_SECONDS

    def seconds_until_lookahead(self, config: EngineConfig, now: float) -> float:
        lookahead = self.lookahead(config)
        if lookahead is None or self.turn.t_first is None:
            return 0.0
        ahead = len(self.turn.record.frames) * FRAME_SECONDS - lookahead
        return max(0.0, self.turn.t_first + ahead - now)

    def budget(self, config: EngineConfig) -> int:
        return self.context_budget or config.context_budget

    def frame_cap(self, config: EngineConfig) -> int:
        """Frames this turn may have: capped by its text length once the text is complete."""
        t = self.turn
        cap = config.turn_frame_cap(len(t.tokens)) if t.text_done else config.max_turn_frames
        return cap if t.max_frames is None else min(cap, t.max_frames)

    def out_of_room(self, capacity: int) -> bool:
        """True when the slot cannot take another step plus the two closing rows."""
        return self.cache_len + 3 > capacity

    def learn_speaking_rate(self, text: str, frames: int) -> None:
        """Refines the speaking rates from a turn that spoke its whole text."""
        self.rates.learn(text, frames)

    def word_timer(self) -> WordTimer:
        """A new turn's word timer, at the session's speaking rates."""
        return WordTimer(self.rates.other, self.rates.cjk)
