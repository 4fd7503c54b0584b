"""One OpenTelemetry span per MOSS reply, in pipecat's tracing (``enable_tracing=True``).

pipecat's TTS services get their spans from ``traced_tts``, which wraps ``run_tts`` and the
audio-context methods. A MOSS reply outlives ``run_tts`` (a background task speaks it) and keeps
playing after its last frame is queued, and an interruption may cut it until its playback ends,
so the span follows the reply instead: it opens with the reply's first text and ends when the
reply's playback ends on the heard clock (completed), when an interruption cuts it, or when it
fails. It carries pipecat's TTS attributes (``add_tts_span_attributes``: model, voice, settings;
``text``, ``metrics.character_count``, ``metrics.ttfb``, ``tts.interrupted``) plus MOSS's own:
``metrics.ttfa`` (until the reply's audio starts playing), ``moss.frames`` (80 ms frames the
engine made) and ``moss.heard_frames`` (those the user heard).

Off unless the pipeline enables tracing, and then nothing runs per reply; opentelemetry is only
imported where pipecat finds it installed (pipecat's ``tracing`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.utils.tracing.setup import is_tracing_available

from moss_pipecat.service.interruption import heard as heard_of
from moss_pipecat.service.reply import Reply

if is_tracing_available():
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
    from pipecat.utils.tracing.service_attributes import add_tts_span_attributes

SPAN_NAME = "tts"  # pipecat's name for a TTS span: dashboards group MOSS with other TTS services


@dataclass(eq=False)
class _ReplySpan:
    reply: Reply
    span: Any
    started_ns: int  # pipeline clock
    texts: list[str] = field(default_factory=list)
    ttfb_recorded: bool = False
    described: bool = False  # the service's attributes are on it
    synthesized: bool = False  # its TTSStoppedFrame went out: every frame was pushed


class ReplyTracer:
    """Opens, annotates and ends the span of each reply of one service.

    Args:
        service: the TTS service (its class name, settings and model go on each span; its
            pipeline clock is the heard clock's time base).
        attributes: the service's own attributes for a span, read as the reply's engine turn
            opens (or as the reply ends without one), e.g. the remote conversation.
    """

    def __init__(
        self,
        service: Any,
        *,
        attributes: Callable[[], dict[str, Any]],
    ) -> None:
        self._service = service
        self._attributes = attributes
        self._enabled = False
        self._trace_parent: Any | None = None  # pipecat's TracingContext (conversation, turn)
        self._open: dict[str, _ReplySpan] = {}  # by context id

    def configure(self, enabled: bool, tracing_context: Any | None) -> None:
        """The pipeline's tracing switch and context (``FrameProcessorSetup``)."""
        self._enabled = enabled and is_tracing_available()
        self._trace_parent = tracing_context

    @property
    def enabled(self) -> bool:
        return self._enabled

    # ---- the reply's life -------------------------------------------------------------------
    def reply_started(self, reply: Reply) -> None:
        """The reply's first text reached the service: its span opens (under pipecat's turn
        span, else its conversation span)."""
        if not self._enabled:
            return
        now = self._now()
        self._settle(now)
        try:
            span = trace.get_tracer("moss_pipecat").start_span(SPAN_NAME, context=self._parent())
            settings = self._service.settings
            add_tts_span_attributes(
                span=span,
                service_name=type(self._service).__name__,
                model=str(settings.model),
                voice_id=str(settings.voice or "default"),
                settings=settings,
                operation_name="tts",
            )
            span.set_attribute("tts.context_id", reply.context_id)
        except Exception as e:  # tracing must never break speech
            logger.warning(f"{self._service}: cannot open the reply's span: {e}")
            return
        self._open[reply.context_id] = _ReplySpan(reply, span, now)

    def turn_opened(self, reply: Reply) -> None:
        """The reply's engine turn is open: the service's attributes as they are now (e.g. the
        reconnects this turn needed)."""
        entry = self._open.get(reply.context_id)
        if entry is not None:
            self._describe(entry)

    def text_added(self, reply: Reply, text: str) -> None:
        entry = self._open.get(reply.context_id)
        if entry is not None and text:
            entry.texts.append(text)  # on the span as it ends: one join per reply, not per token

    def frame_pushed(self, frame: Frame) -> None:
        """The service pushes ``frame``: a reply's first audio is its TTFB (as pipecat's), its
        TTSStoppedFrame says every frame went out (it ends when they have played)."""
        if not self._open:
            return  # tracing off, or no reply open: nothing to look up
        entry = self._open.get(getattr(frame, "context_id", None) or "")
        if entry is None:
            return
        if isinstance(frame, TTSAudioRawFrame) and not entry.ttfb_recorded:
            entry.ttfb_recorded = True
            entry.span.set_attribute("metrics.ttfb", (self._now() - entry.started_ns) / 1e9)
        elif isinstance(frame, TTSStoppedFrame):
            entry.synthesized = True
            self._settle(self._now())

    def playback_stopped(self) -> None:
        """The transport reports the bot silent: replies that played out end."""
        if self._open:
            self._settle(self._now())

    def interrupted(self, replies: list[Reply], heard: dict[str, int]) -> None:
        """An interruption stops ``replies``: each keeps the frames ``heard`` gives it (by
        context id: the interruption's own answer, ``InterruptionPlan.decide``); a reply
        that had already played out completed."""
        for reply in replies:
            entry = self._open.get(reply.context_id)
            if entry is not None:
                kept = heard[reply.context_id]
                done = entry.synthesized and kept >= reply.pushed
                self._end(reply, interrupted=not done, heard=kept)

    def failed(self, reply: Reply, error: Exception | str) -> None:
        """The reply's engine turn failed (the server went away, the engine refused it)."""
        entry = self._open.get(reply.context_id)
        if entry is None:
            return
        entry.span.set_status(Status(StatusCode.ERROR, str(error)))
        if isinstance(error, BaseException):
            entry.span.record_exception(error)
        self._end(reply, interrupted=False, heard=reply.heard_frames(self._now()))

    def close(self, *, graceful: bool) -> None:
        """The pipeline ends: on an EndFrame the transport plays out what was pushed; on a
        cancel the replies stop where they are."""
        now = self._now()
        for entry in list(self._open.values()):
            reply = entry.reply
            if graceful and entry.synthesized:
                self._end(reply, interrupted=False, heard=reply.pushed, end_ns=_played_ns(reply))
            else:
                kept = heard_of(reply, now, context_counts=False).frames
                self.interrupted([reply], {reply.context_id: kept})

    # ---- helpers ----------------------------------------------------------------------------
    def _now(self) -> int:
        return self._service.get_clock().get_time()

    def _parent(self) -> Any | None:
        if self._trace_parent is None:
            return None
        return (
            self._trace_parent.get_turn_context() or self._trace_parent.get_conversation_context()
        )

    def _describe(self, entry: _ReplySpan) -> None:
        entry.described = True
        for key, value in self._attributes().items():
            entry.span.set_attribute(key, value)

    def _settle(self, now_ns: int) -> None:
        """Ends the spans of synthesized replies whose playback is over (at its end)."""
        for entry in list(self._open.values()):
            reply = entry.reply
            if not entry.synthesized:
                continue
            end = _played_ns(reply)
            if end is None or end <= now_ns:
                self._end(reply, interrupted=False, heard=reply.pushed, end_ns=end)

    def _end(
        self, reply: Reply, *, interrupted: bool, heard: int, end_ns: int | None = None
    ) -> None:
        entry = self._open.pop(reply.context_id)
        span = entry.span
        try:
            text = "".join(entry.texts)  # token pieces carry their own spaces
            span.set_attribute("text", text)
            span.set_attribute("metrics.character_count", len(text))
            span.set_attribute("tts.interrupted", interrupted)
            span.set_attribute("moss.frames", reply.frames)
            span.set_attribute("moss.heard_frames", heard)
            if reply.start_ns is not None:
                span.set_attribute("metrics.ttfa", (reply.start_ns - entry.started_ns) / 1e9)
            if not entry.described:
                self._describe(entry)
        finally:
            # The span's end in wall time: the heard clock runs on the pipeline clock.
            wall = None if end_ns is None else time.time_ns() + (end_ns - self._now())
            span.end(end_time=wall)


def _played_ns(reply: Reply) -> int | None:
    """When the reply's audio has played out (pipeline clock); None: it never played."""
    return reply.end_ns() if reply.start_ns is not None else None
