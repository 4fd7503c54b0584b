"""OpenTelemetry in tests: an in-memory exporter on the process's tracer provider, and run_test
pipelines with pipecat's tracing on (fixtures, re-exported by the service and server conftests)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

CONVERSATION_ID = "conversation-under-test"


@pytest.fixture
def span_exporter():
    """Every span ended during the test. OpenTelemetry has one global provider per process
    (it can be set only once), so each test adds its own exporter to it."""
    # Imported here: only the tracing tests need opentelemetry's SDK (the dev extra has it).
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # later tests' spans no longer reach this exporter


@pytest.fixture
def traced_pipelines(monkeypatch):
    """pipecat's ``run_test`` with ``enable_tracing=True`` on its pipeline worker, as an app
    sets it on its ``PipelineTask``. run_test has no switch for it; its module's
    ``PipelineWorker`` is the one place it builds the worker (monkeypatch fails loudly if it
    is renamed)."""
    import pipecat.tests.utils as test_utils

    worker = functools.partial(
        test_utils.PipelineWorker, enable_tracing=True, conversation_id=CONVERSATION_ID
    )
    monkeypatch.setattr(test_utils, "PipelineWorker", worker)


def tts_spans(exporter: Any) -> list:
    """The TTS spans, oldest first."""
    spans = [s for s in exporter.get_finished_spans() if s.name == "tts"]
    return sorted(spans, key=lambda s: s.start_time)


def by_id(exporter: Any) -> dict:
    return {s.context.span_id: s for s in exporter.get_finished_spans()}
