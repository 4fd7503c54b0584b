"""One bot reply's bookkeeping and the heard clock: when each reply's audio plays, so word
frames come out as they are heard and an interruption keeps what was heard."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextProgressFrame,
    ControlFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextFrame,
    TTSStartedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport

from moss_pipecat.service.carries import Carries
from moss_pipecat.service.phases import TAKES_TEXT, TURN_STARTED, ReplyPhase, check_move
from moss_pipecat.service.word_order import MatchOrder
from moss_pipecat.speech.frames import FRAME_SECONDS
from moss_pipecat.speech.units import TimedWord, is_spaced, is_unit_char

MAX_TRACKED_REPLIES = 4
FRAME_NS = round(FRAME_SECONDS * 1e9)
RELEASE_STEP_NS = 1_000  # between units released at the end of one frame
# A word frame's metadata entry naming its reply and unit: (Reply, index in ``Reply.units``).
WORD_TAG = "moss_pipecat.unit"
# The frames that open and close a reply in pipecat's assistant aggregator.
REPLY_BOUNDARIES = (LLMFullResponseStartFrame, LLMFullResponseEndFrame, TTSStartedFrame)


def stamped_in_order(frame: Frame) -> bool:
    """Whether the assistant aggregator must take ``frame`` in its place among the word frames:
    a reply's boundary, or text that is not spoken (``skip_tts``: pipecat queues a reply the
    TTS skips behind the audio before it, and the aggregator takes its text as it comes)."""
    if isinstance(frame, REPLY_BOUNDARIES):
        return True
    return isinstance(frame, TextFrame) and not isinstance(frame, TTSTextFrame) and frame.skip_tts


@dataclass
class SpokenWordsEnd(ControlFrame):
    """Queued in a reply's audio context after its last word time: words pipecat would
    still emit for that context (its force-complete of text never timed) were not spoken."""

    context_id: str = ""


@dataclass(eq=False)
class Reply:
    """One bot reply: a pipecat audio context and the engine turn speaking it.

    The service owns a reply from its first piece of text: the reply's task opens its engine
    turn (once the reply before it has ended), feeds it and reads its frames, so an
    interruption at any moment finds every reply and closes whatever each one opened.

    One clock says what was heard: ``start_ns`` is when the reply's audio starts playing,
    ``runs`` how it played on; the frames kept on an interruption are those played by then
    (``heard_frames``) and each unit's word frame is released when the frame its time falls in
    has finished playing (``release_ns``), on the same mapping. So a unit at ``t`` is released
    by ``T`` exactly when ``heard_frames(T) > floor(t / F)``, i.e. ``t < heard_frames(T) * F``:
    the engine's rule for what was heard (``WordTimer.heard``).
    """

    context_id: str
    previous: Reply | None  # the reply whose engine turn comes before this one's
    # Facts apart from the phase: pipecat's context says if an interruption may drop it (fixed
    # at creation), and pipecat ends its text (``flushed``: its words are all registered)
    # whatever the engine turn is doing, even before it opens.
    interruptible: bool = True  # False: an interruption lets it speak on (pipecat's context)
    flushed: bool = False
    phase: ReplyPhase = ReplyPhase.WAITING  # changed by ``move`` only
    pending: list[str] = field(default_factory=list)  # text before the engine turn opened
    task: asyncio.Task | None = None
    opening: asyncio.Future | None = None  # the engine's start_turn, never cancelled midway
    turn: Any | None = None  # TurnStream (local) or its remote twin
    # Set when its task ends (in any phase): the next reply may open its engine turn.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    frames: int = 0  # frames read from the engine
    pushed: int = 0  # frames pushed downstream
    baseline_ns: int | None = None  # pipecat's word-time zero for this context
    start_ns: int | None = None  # playback start: the heard clock's zero
    held_words: list[tuple[str, float]] = field(default_factory=list)
    # The playout: runs of frames played back to back, as (clock ns the run starts, its first
    # frame). A new run starts where the audio ran out before the next frame came (the LLM or
    # the engine stalled): the device then plays that frame when it arrives.
    runs: list[tuple[int, int]] = field(default_factory=list)
    # Every unit released to pipecat, in order, at its engine time (and its spacing). Their
    # word frames pass the service in that order (``passed`` so far), then pipecat's assistant
    # aggregator takes them into the LLM context (``taken``: ``context_gate.ContextGate``).
    units: list[TimedWord] = field(default_factory=list)
    passed: int = 0
    # Word frames holding the first pieces of unit ``passed`` (pipecat split it at a sentence
    # end), with the whitespace the unit has before each: they pass as one frame.
    pieces: list[tuple[str, TTSTextFrame]] = field(default_factory=list)
    tail: str = ""  # the last sentence fed (pipecat's sentence mode)
    fed: str = ""  # the text handed to its engine turn (after pipecat's text transforms)
    taken: int = 0
    # Its text frames the sequencer queued: they pass in the order they were matched.
    match_order: MatchOrder = field(default_factory=MatchOrder)
    # An interruption decided what the reply keeps: none of its later word frames goes into
    # the LLM context (``InterruptionPlan.decide``).
    words_closed: bool = False
    last_release_ns: int = 0  # when its last released unit goes out (clock ns)
    # LLM text a word frame carried past its own unit (pipecat gives a sentence's trailing
    # emoji to the word before it): ``covered``.
    carries: Carries = field(default_factory=Carries)

    def move(self, phase: ReplyPhase) -> None:
        """Moves the reply to ``phase``; ``ReplyPhaseError`` if its life allows no such move
        (``phases.TRANSITIONS``)."""
        check_move(self.context_id, self.phase, phase)
        self.phase = phase

    @property
    def takes_text(self) -> bool:
        """Whether LLM text for it is still spoken (not once its text ended or it stopped)."""
        return self.phase in TAKES_TEXT and not self.flushed

    @property
    def started(self) -> bool:
        """Its engine turn is being opened or was: the replies before it stay as they are."""
        return self.phase in TURN_STARTED

    @property
    def closed(self) -> bool:
        """Its audio context has ended (or is ending)."""
        return self.phase in (ReplyPhase.CLOSED, ReplyPhase.DONE)

    @property
    def ready_to_close(self) -> bool:
        """Its audio context may end: read to the end, or failed, with pipecat's text ended
        (pipecat matches our word times to its text once that ended: words of a context that
        ends before are dropped), or failed with no audio; and none of its word times held."""
        ended = self.phase in (ReplyPhase.READ, ReplyPhase.FAILED) and self.flushed
        silent = self.phase is ReplyPhase.FAILED and self.frames == 0
        return (ended or silent) and not self.held_words

    def text_frames_due(self, frame: Frame) -> list[Frame]:
        """The text frames to push now for ``frame``, in the order pipecat's sequencer matched
        them (``MatchOrder.due``), less those that do not pass (``text_frame_passes``), a
        unit's word frames one (``word_frames``)."""
        out: list[Frame] = []
        for f in self.match_order.due(frame):
            if not self.text_frame_passes(f):
                continue
            out.extend(self.word_frames(f) if isinstance(f, TTSTextFrame) else [f])
        return out

    def text_frame_passes(self, frame: Frame) -> bool:
        """Whether a text frame of this reply goes on: no word (or progress) after its last
        word time (``SpokenWordsEnd``: pipecat's force-complete of text never timed, which was
        not spoken), nor once an interruption decided what it keeps; a sentence's announcement
        always."""
        if not isinstance(frame, (TTSTextFrame, AggregatedTextProgressFrame)):
            return True
        if self.phase is ReplyPhase.DONE or self.words_closed:
            logger.debug(f"not spoken, kept out of the context: {frame.text!r}")
            return False
        return True

    def next_text(self, text: str, seam: Callable[[str, str], str] | None = None) -> str:
        """``text`` as the reply's engine turn is fed it (kept in ``fed``). A sentence of
        pipecat's sentence mode comes after the earlier ones with the seam pipecat stripped,
        ``seam(last sentence, sentence)`` (``WrittenText.seam``): without one the model reads
        "here.Another" and the units merge across them."""
        if seam is not None:
            text, self.tail = seam(self.tail, text) + text, text or self.tail
        self.fed += text
        return text

    def word_frames(self, frame: TTSTextFrame) -> list[TTSTextFrame]:
        """The word frames to push for ``frame``, each with the spacing of the unit it was
        released as and tagged with that unit (``WORD_TAG``, for the context gate).

        pipecat's sequencer marks every later word of a sentence ``includes_inter_frame_spaces``
        once one of them was, so a mixed sentence would lose the spaces around its words;
        the frame's own unit says. A unit pipecat split in pieces (it matched its start to one
        sentence and the rest to the next) passes as one frame, the unit's text, once its last
        piece comes: one frame per unit keeps the units the context takes counted, and its
        spacing writable. A frame that is not (a piece of) the next unit (pipecat matched the
        words differently) keeps whether it is CJK text.
        """
        if not self.pieces:
            self.passed = self.carries.passed_over(self.units, self.passed, frame)
        unit = self.units[self.passed] if self.passed < len(self.units) else None
        done = "".join(ws + f.text for ws, f in self.pieces)
        rest = unit.text[len(done) :] if unit is not None and unit.text.startswith(done) else ""
        ws = rest[: len(rest) - len(rest.lstrip())]
        if frame.text and rest.lstrip() != frame.text and rest.lstrip().startswith(frame.text):
            self.pieces.append((ws, frame))  # more of the unit is on its way
            return []
        pieces, self.pieces = self.pieces, []
        # (or the frame holds the unit and words after it: pipecat matched across LLM tokens)
        whole = (
            unit is not None and not pieces and self.carries.opens(self.units, self.passed, frame)
        )
        if unit is not None:
            frame.metadata[WORD_TAG] = (self, self.passed)
            self.passed += 1
        if unit is not None and rest and (rest.lstrip() == frame.text or whole):
            if pieces:  # the LLM's text of the pieces, as they were spaced
                raw = "".join(w + (f.raw_text or f.text) for w, f in pieces)
                frame.raw_text = raw + ws + (frame.raw_text or frame.text)
                frame.text = unit.text
            frame.includes_inter_frame_spaces = unit.spaced
            self.carries.record(self.units, self.passed - 1, frame, self.fed)
            return [frame]
        logger.debug(f"word frame {frame.text!r} is not the unit released ({unit!r})")
        held = [f for _, f in pieces]
        for f in (*held, frame):
            f.includes_inter_frame_spaces = any(is_unit_char(ch) for ch in f.text)
        return [*held, frame]

    def covered(self, count: int) -> int:
        """The units the context holds once it took the first ``count`` units' word frames
        (``Carries.covered``)."""
        return self.carries.covered(self.units, count, self.fed)

    def play(self, start_ns: int) -> None:
        """Playback starts at ``start_ns``: the frames pushed so far play from there."""
        self.start_ns = start_ns
        self.runs = [(start_ns, 0)]

    def frame_pushed(self, earliest_ns: int) -> None:
        """Frame ``pushed - 1`` was just pushed; it cannot play before ``earliest_ns`` (now,
        plus the output latency of a device that had run dry)."""
        if not self.runs:
            return  # not playing yet: it plays in the first run
        if earliest_ns > self.end_ns(self.pushed - 1):
            self.runs.append((earliest_ns, self.pushed - 1))

    def end_ns(self, frames: int | None = None) -> int:
        """When the first ``frames`` frames (default: all pushed) have played."""
        frames = self.pushed if frames is None else frames
        start, first = self.runs[-1]
        for run in reversed(self.runs):
            if run[1] <= max(frames - 1, 0):
                start, first = run
                break
        return start + (frames - first) * FRAME_NS

    def time_ns(self, seconds: float, earliest_ns: int) -> int:
        """Clock time at which the reply's audio reaches ``seconds``. Audio not pushed yet
        (made, on its way through pipecat) plays right after what was pushed, or from
        ``earliest_ns`` if that has run out by then."""
        frame = int(seconds / FRAME_SECONDS)
        if frame >= self.pushed:
            base = max(self.end_ns(), earliest_ns)
            return base + round((seconds - self.pushed * FRAME_SECONDS) * 1e9)
        start, first = next(r for r in reversed(self.runs) if r[1] <= frame)
        return start + round((seconds - first * FRAME_SECONDS) * 1e9)

    def release_ns(self, seconds: float, earliest_ns: int) -> int:
        """When the unit at ``seconds`` is released: once the frame its time falls in has
        finished playing, i.e. once ``floor(seconds / F) + 1`` frames have played (the mapping
        ``heard_frames`` counts with). Captions thus lag the audio by less than one frame."""
        frames = int(seconds / FRAME_SECONDS) + 1
        if frames <= self.pushed:
            return self.end_ns(frames)
        return self.time_ns(frames * FRAME_SECONDS, earliest_ns)

    def unit_frame(self, index: int) -> int | None:
        """The frame unit ``index`` is spoken in (None: no such unit was released)."""
        return int(self.units[index][1] / FRAME_SECONDS) if index < len(self.units) else None

    def heard_frames(self, now_ns: int) -> int:
        """Frames of this reply played by ``now_ns`` on the heard clock."""
        heard = 0
        for i, (start, first) in enumerate(self.runs):
            if start > now_ns:
                break
            last = self.runs[i + 1][1] if i + 1 < len(self.runs) else self.pushed
            heard = first + min(last - first, (now_ns - start) // FRAME_NS)
        return max(0, min(self.pushed, heard))


class HeardClock:
    """When the replies' audio plays (pipeline clock, ns), so word frames come out as heard.

    A reply's playback starts when the transport reports the bot speaking (plus the output
    latency), or right after the audio already playing; until then its word times are held.
    pipecat times a context's words from its first audio push, or from its last word if
    later; mirrored in ``last_word_pts``.

    Args:
        output_latency_ns: playback delay after the transport reports the bot speaking.
        now: the pipeline clock (ns).
        release_words: hands word times to pipecat (``TTSService.add_word_timestamps``), with
            whether they carry their own spacing (``includes_inter_frame_spaces``).
        close_reply: called when a reply's playback starts (its held words are queued).
    """

    def __init__(
        self,
        output_latency_ns: int,
        *,
        now: Callable[[], int],
        release_words: Callable[[list[tuple[str, float]], str, bool | None], Awaitable[None]],
        close_reply: Callable[[Reply], Awaitable[None]],
    ) -> None:
        self._output_latency_ns = output_latency_ns
        self._now = now
        self._release_words = release_words
        self._close_reply = close_reply
        self.bot_speaking = False
        self.playback_reported = False  # an output transport downstream reports playback
        self.playback_end_ns = 0  # when the audio pushed so far ends playing
        self.last_word_pts = 0

    async def add_words(self, reply: Reply, words: Any) -> None:
        """Queues word times on the heard clock (held until the reply's playback start), each
        released once its frame has played in the playout (``Reply.release_ns``)."""
        if not words:
            return
        if reply.start_ns is None:
            reply.held_words.extend(words)
            return
        earliest = self._now() + self._latency_ns()
        # pipecat releases a word at baseline + t'; t' puts it where its frame has played.
        # Units of one frame go out RELEASE_STEP_NS apart, so word times strictly increase;
        # none is released before its frame has played.
        base, timed = reply.baseline_ns, []
        for w in words:
            at = max(reply.release_ns(w[1], earliest), reply.last_release_ns + RELEASE_STEP_NS)
            reply.last_release_ns = at
            timed.append(TimedWord(w[0], (at - base) / 1e9, is_spaced(w)))
        self.last_word_pts = max(self.last_word_pts, reply.baseline_ns + round(timed[-1][1] * 1e9))
        reply.units.extend(TimedWord(w[0], w[1], is_spaced(w)) for w in words)
        # One call per run of equal spacing: pipecat takes one flag per call.
        for spaced, run in itertools.groupby(timed, key=is_spaced):
            await self._release_words(list(run), reply.context_id, True if spaced else None)

    async def audio_pushed(self, reply: Reply, frames: int) -> None:
        """pipecat pushes an audio frame of the reply completing ``frames`` engine frames
        (``resampling.engine_frames``: none for the resampler's tail, unless it held a whole
        frame's audio)."""
        for _ in range(frames):
            await self._frame_pushed(reply)

    async def _frame_pushed(self, reply: Reply) -> None:
        """The reply's next frame was pushed: its first fixes the word-time baseline and,
        where the transport is already playing or reports nothing, the playback start; a
        frame that comes after the audio ran out starts a new run of the playout."""
        reply.pushed += 1
        now = self._now()
        if reply.baseline_ns is None:
            reply.baseline_ns = max(self.last_word_pts, now)
            if self.bot_speaking:  # it plays after the audio already queued
                await self._start_playback(reply, max(reply.baseline_ns, self.playback_end_ns))
            elif not self.playback_reported:  # no transport says when it plays
                await self._start_playback(reply, reply.baseline_ns)
        else:
            reply.frame_pushed(now + self._latency_ns())
        if reply.start_ns is not None:
            self.playback_end_ns = max(self.playback_end_ns, reply.end_ns())

    def _latency_ns(self) -> int:
        """How long after its push a frame plays when the device has run dry."""
        return self._output_latency_ns if self.playback_reported else 0

    async def bot_started_speaking(self, replies: list[Reply]) -> None:
        """The transport reports playback: pushed replies waiting for it start playing."""
        now = self._now()
        # Only an output transport found downstream makes replies wait for this frame: one
        # seen without it (a nested pipeline, frames injected by a test) may never come
        # again for the next reply, which would then never start (nor end).
        self.bot_speaking = True
        for reply in replies:
            if reply.baseline_ns is not None and reply.start_ns is None:
                start = max(reply.baseline_ns, now + self._output_latency_ns)
                await self._start_playback(reply, start)
                self.playback_end_ns = max(self.playback_end_ns, reply.end_ns())

    async def _start_playback(self, reply: Reply, start_ns: int) -> None:
        reply.play(start_ns)
        held, reply.held_words = reply.held_words, []
        await self.add_words(reply, held)
        await self._close_reply(reply)

    def stamp_boundary(self, frame: Frame) -> None:
        """Gives a reply's boundary frame, or text not spoken (``stamped_in_order``), without a
        PTS one just after the last word released. The output transport passes frames without
        a PTS at once and holds word frames until their PTS; a word comes out once its frame
        has played, so the last words of the reply before (and pipecat's end frame, stamped
        with the last of them) are still held when the next reply's start passes: the
        aggregator would close that reply's message before its last words and file the next
        reply's words under no message (or a skipped reply's text inside the one before).
        Stamped alike, they wait behind those words and keep their order (the transport's
        clock queue breaks ties by arrival); frames due already pass at once."""
        if not frame.pts and self.last_word_pts and stamped_in_order(frame):
            frame.pts = self.last_word_pts + 1

    def restart(self) -> None:
        """pipecat restarts its word clock after an interruption; so does the heard clock."""
        self.last_word_pts = 0
        self.playback_end_ns = 0


def output_transport_downstream(processor: FrameProcessor) -> bool:
    """Whether an output transport (which reports playback) follows ``processor``.

    Otherwise a reply plays from its first audio push, or after the audio already playing
    while a BotStartedSpeakingFrame says the bot is speaking."""
    return find_downstream(processor, BaseOutputTransport) is not None


def find_downstream(processor: FrameProcessor, kind: type[FrameProcessor]) -> Any | None:
    """The first processor of type ``kind`` after ``processor`` (None: none)."""
    node, hops = processor.next, 0
    while node is not None and hops < 256:
        if isinstance(node, kind):
            return node
        node, hops = node.next, hops + 1
    return None
