"""Where a reply's words enter the LLM context, and the one count of those that did.

pipecat's assistant aggregator (``LLMAssistantAggregator``) writes the word frames it takes into
the LLM context, and an interruption makes it commit them as the assistant's message. So what
it has taken of a reply when the service passes an interruption on is exactly what that
message holds, provided no later word frame of the reply gets in: those still on their way
may be dropped by pipecat's queues, or reach the aggregator behind the interruption (pipecat
then writes them into the next message). The gate makes that so:

- it counts the units of each reply the aggregator has taken (``Reply.taken``), on the
  aggregator's ``on_before_process_frame`` event: pipecat runs it in the aggregator's own task
  right before the aggregator handles the frame, with nothing awaited in between;
- once an interruption has decided what a reply keeps (``Reply.words_closed``), the gate
  clears ``append_to_context`` on every word frame of that reply the aggregator takes after.

An interruption keeps in MOSS's history the units taken (``InterruptionPlan.decide``,
``Interrupt.heard_units``): the LLM context and the history hold the same units by
construction, however late or early pipecat delivers the frames. Without an assistant
aggregator downstream there is no context to follow (``attached`` is False).
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pipecat.frames.frames import Frame, TTSTextFrame
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator
from pipecat.processors.frame_processor import FrameProcessor

from moss_pipecat.service.reply import WORD_TAG, find_downstream


class ContextGate:
    """The service's view of the assistant aggregator downstream (see the module docstring)."""

    def __init__(self) -> None:
        self._aggregator: LLMAssistantAggregator | None = None

    @property
    def attached(self) -> bool:
        """Whether an assistant aggregator downstream counts the words taken."""
        return self._aggregator is not None

    def attach(self, service: FrameProcessor) -> None:
        """Watches the first assistant aggregator after ``service`` (none: nothing to do)."""
        self.detach()
        self._aggregator = find_downstream(service, LLMAssistantAggregator)
        if self._aggregator is not None:
            self._aggregator.add_event_handler("on_before_process_frame", self._before_process)

    def detach(self) -> None:
        if self._aggregator is not None:
            self._aggregator.remove_event_handler("on_before_process_frame", self._before_process)
            self._aggregator = None

    def _before_process(self, _aggregator: Any, frame: Frame) -> None:
        """The aggregator is about to take ``frame`` (a plain function: pipecat runs it inline)."""
        tag = frame.metadata.get(WORD_TAG) if isinstance(frame, TTSTextFrame) else None
        if tag is None:
            return
        reply, index = tag
        if reply.words_closed:
            frame.append_to_context = False
            logger.debug(f"{reply.context_id}: {frame.text!r} came after the cut, kept out")
        else:
            reply.taken = max(reply.taken, index + 1)
