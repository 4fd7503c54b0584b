"""Every use of pipecat's private names in moss_pipecat, in one place.

pipecat's public API does not say whether a TTS context may be dropped by an interruption, which
context is playing, nor which one its current reply is spoken in, and gives no way to end a
context's pending sentence but the end of a reply; the service needs these, so they are here.
pipecat also asks its subclasses to use a few underscore names
(``_register_event_handler``/``_call_event_handler`` for events, ``_update_settings`` as the
settings hook "concrete services should override"); those are called or declared here too.
It also holds the one workaround for how pipecat's ``TTSService`` behaves inside (an
interruption while it ends: ``stop_through_interruptions``).
Nothing else in the package touches a pipecat private name (``tests/test_architecture.py``),
and ``check_pipecat`` (run by ``tests/service/test_pipecat_compat.py``) says, on a pipecat this
was not written for, which of these names is gone or changed shape.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from loguru import logger
from pipecat.services.tts_service import TTSContext, TTSService
from pipecat.utils.base_object import BaseObject
from pipecat.utils.context.audio_context_manager import AudioContextManager

# The pipecat releases this module was written for: the same range as pyproject's pin.
WRITTEN_FOR = (1, 14)  # pipecat-ai 1.14.x
PINNED = "pipecat-ai>=1.14,<1.15"
# pipecat's private hooks its subclasses override (the one other place a private name may
# appear: the method's definition and its ``super()`` call).
SUBCLASS_HOOKS = frozenset({"_update_settings"})


class PipecatCompatError(RuntimeError):
    """The installed pipecat is not the one ``pipecat_compat`` was written for."""


# ---- what the service reads of pipecat's TTSService ------------------------------------------
def context_interruptible(service: TTSService, context_id: str) -> bool:
    """Whether an interruption may drop the context (False: a ``TTSSpeakFrame`` spoken with
    ``interruptible=False``); pipecat's record of a context it is speaking."""
    context = service._tts_contexts.get(context_id)
    return context.interruptible if context is not None else True


def interruption_restarts_word_clock(service: TTSService) -> bool:
    """Whether an interruption now makes pipecat restart its word clock: the context playing is
    not one it keeps (the rule of ``TTSService._interrupt_audio_contexts``). Read before the
    interruption reaches pipecat."""
    preserved = {k for k, c in service._tts_contexts.items() if not c.interruptible}
    return service._audio_context_manager.playing_context_id not in preserved


def turn_context_id(service: TTSService) -> str | None:
    """The context pipecat speaks its current LLM reply or ``TTSSpeakFrame`` in (None: none);
    text in any other context (a bare ``AggregatedTextFrame``) has no end of turn coming."""
    return service._turn_context_id


async def end_pending_sentence(service: TTSService, context_id: str) -> None:
    """Ends the context's pending sentence in pipecat's streaming sequencer and queues what that
    releases, as pipecat does at the end of a reply (``TTSService._handle_llm_response_end``):
    the sentence's words can then be matched to their word times."""
    frames = await service._aggregated_frame_sequencer.finalize(context_id)
    await service._push_sequencer_frames(frames, context_id)


# ---- a pipecat 1.14 race the service works around --------------------------------------------
# How many times an end is retried after an interruption cancelled it: each try past the first
# waits one loop turn for the interruption to make the new audio-context task.
END_TRIES = 100


async def stop_through_interruptions(service: object, stop: Callable[[], Awaitable[None]]) -> None:
    """Runs ``stop`` (the service's ``TTSService.stop``) to its end through interruptions.

    ``TTSService.stop`` waits for the audio-context task to play what is queued; an
    ``InterruptionFrame`` arriving meanwhile (a caller talking over the goodbye before the
    ``EndFrame``) cancels that task and makes a new one (``_interrupt_audio_contexts``), so the
    ``CancelledError`` reaches ``stop`` and the ``EndFrame`` is lost: the pipeline never ends.
    A ``CancelledError`` that is not meant for this task (``cancelling() == 0``) is that: the end
    is tried again, against the new task. A cancel of this task itself is passed on."""
    for _ in range(END_TRIES):
        try:
            return await stop()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise
            logger.debug(f"{service}: an interruption cut its end short; ending again")
            await asyncio.sleep(0)
    # Still cut after every try: the EndFrame goes on rather than being lost (pipecat's cleanup
    # stops the audio-context task).
    logger.warning(f"{service}: interrupted {END_TRIES} times while ending; ending anyway")


# ---- pipecat's subclass API with underscore names --------------------------------------------
def register_event(obj: BaseObject, event_name: str) -> None:
    """Declares an event ``obj`` calls handlers for (``@obj.event_handler(event_name)``)."""
    obj._register_event_handler(event_name)


async def call_event(obj: BaseObject, event_name: str, *args: Any) -> None:
    """Calls the handlers registered for ``event_name`` on ``obj`` (with ``obj`` first)."""
    await obj._call_event_handler(event_name, *args)


# ---- the check -------------------------------------------------------------------------------
def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def _reads(func: Any) -> set[str]:
    """Attribute names ``func``'s source reads: the rule mirrored above must still be pipecat's."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


class _Probe(TTSService):
    """The smallest TTSService, to look at what a real one holds."""

    async def run_tts(self, text: str, context_id: str):  # pragma: no cover - never run
        yield None


def problems() -> list[str]:
    """What in the installed pipecat differs from what this module relies on (empty: none)."""
    found = []
    installed = _unsupported_version()
    if installed is not None:
        found.append(f"pipecat-ai {installed} is installed; written for {PINNED}")
    probe = _Probe(sample_rate=24000)
    contexts = getattr(probe, "_tts_contexts", None)
    if not isinstance(contexts, dict):
        found.append("TTSService()._tts_contexts is not a dict of context id -> TTSContext")
    if "interruptible" not in getattr(TTSContext, "__dataclass_fields__", {}):
        found.append("TTSContext has no 'interruptible' field")
    manager = getattr(probe, "_audio_context_manager", None)
    if not isinstance(manager, AudioContextManager) or not hasattr(manager, "playing_context_id"):
        found.append("TTSService()._audio_context_manager.playing_context_id is gone")
    rule = getattr(TTSService, "_interrupt_audio_contexts", None)
    if rule is None or not {"_tts_contexts", "interruptible", "playing_context_id"} <= _reads(rule):
        found.append(
            "TTSService._interrupt_audio_contexts no longer decides from _tts_contexts' "
            "'interruptible' and the playing context: re-check interruption_restarts_word_clock"
        )
    if "_turn_context_id" not in vars(probe):
        found.append("TTSService()._turn_context_id is gone")
    sequencer = getattr(probe, "_aggregated_frame_sequencer", None)
    finalize = getattr(sequencer, "finalize", None)
    if not inspect.iscoroutinefunction(finalize) or _params(finalize) != ["context_id"]:
        found.append("TTSService()._aggregated_frame_sequencer.finalize(context_id) is gone")
    push = getattr(TTSService, "_push_sequencer_frames", None)
    if push is None or _params(push) != ["self", "frames", "context_id"]:
        found.append("TTSService._push_sequencer_frames(frames, context_id) is gone")
    expected = {
        "_register_event_handler": ["self", "event_name", "sync"],
        "_call_event_handler": ["self", "event_name", "args", "kwargs"],
    }
    for name, params in expected.items():
        func = getattr(BaseObject, name, None)
        if func is None or _params(func) != params:
            found.append(f"BaseObject.{name} is gone or no longer takes {params}")
    for name in SUBCLASS_HOOKS:
        func = getattr(TTSService, name, None)
        if not inspect.iscoroutinefunction(func) or _params(func) != ["self", "delta"]:
            found.append(f"TTSService.{name} is gone or is no longer 'async def {name}(delta)'")
    return found


def check_pipecat() -> None:
    """Raises ``PipecatCompatError`` listing every difference ``problems`` finds."""
    found = problems()
    if found:
        raise PipecatCompatError(
            "moss_pipecat.service.pipecat_compat was written for "
            f"{PINNED} and relies on pipecat private names that changed:\n- " + "\n- ".join(found)
        )


def _unsupported_version() -> str | None:
    """The installed pipecat-ai's version if it is not one this module was written for."""
    installed = version("pipecat-ai")
    major_minor = tuple(int(p) for p in installed.split(".")[:2] if p.isdigit())
    return None if major_minor == WRITTEN_FOR else installed


def _warn_if_unsupported() -> None:
    installed = _unsupported_version()
    if installed is not None:
        logger.warning(
            f"moss_pipecat was written for {PINNED}; pipecat-ai {installed} is installed "
            "(interruptions may not keep what was heard: see moss_pipecat.service.pipecat_compat)"
        )


_warn_if_unsupported()
