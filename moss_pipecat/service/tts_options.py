"""The ``TTSService`` arguments a MOSS service runs with: its defaults, and the ones it cannot
honour refused with a clear error (instead of pipecat's "got multiple values for keyword
argument", or a reply that never ends)."""

from __future__ import annotations

from typing import Any

from pipecat.services.tts_service import TextAggregationMode

# pipecat's idle end of a reply's audio context: a safety net only, not a pause in the text.
REPLY_IDLE_TIMEOUT_S = 60.0

# What the service is built on, whatever the caller passes: word frames follow playback (the
# LLM context keeps what was heard, from the engine's word times), and pipecat opens each
# reply's audio context with its TTSStartedFrame.
FIXED = {
    "push_text_frames": (
        False,
        "word frames come from the engine's word times as the audio plays, so the LLM "
        "context keeps what was heard",
    ),
    "push_start_frame": (True, "pipecat opens each reply's audio context"),
}


def tts_service_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``TTSService.__init__``, with the service's defaults and fixed values.

    Token streaming unless the caller chose a mode (``text_aggregation_mode``, or pipecat's
    deprecated ``aggregate_sentences``); every reply ends its audio context itself, so
    pipecat's idle end (3 s without text or audio by default, which would cut a reply whose LLM
    text pauses that long in two) only backs that up; ``pause_frame_processing`` as pipecat has
    it (every reply's audio context ends, so a pause always ends).

    Raises:
        ValueError: an argument the service cannot honour (see ``FIXED``), or token streaming
            with ``reuse_context_id_within_turn=False`` (each token would be its own reply).
    """
    out = dict(kwargs)
    for name, (value, why) in FIXED.items():
        if name in out and out[name] != value:
            raise ValueError(f"MOSS TTS services run with {name}={value}: {why}")
        out[name] = value
    if out.get("text_aggregation_mode") is None and out.get("aggregate_sentences") is None:
        out["text_aggregation_mode"] = TextAggregationMode.TOKEN
    out.setdefault("stop_frame_timeout_s", REPLY_IDLE_TIMEOUT_S)
    out.setdefault("pause_frame_processing", False)
    if streams_tokens(out) and out.get("reuse_context_id_within_turn") is False:
        raise ValueError(
            "MOSS TTS services stream tokens into one engine turn per reply: token streaming "
            "needs reuse_context_id_within_turn=True (or use TextAggregationMode.SENTENCE)"
        )
    return out


def streams_tokens(kwargs: dict[str, Any]) -> bool:
    """Whether the service runs with these (completed) arguments streams LLM tokens (else
    pipecat hands it whole sentences)."""
    mode = kwargs.get("text_aggregation_mode")
    return mode == TextAggregationMode.TOKEN or (mode is None and not kwargs["aggregate_sentences"])
