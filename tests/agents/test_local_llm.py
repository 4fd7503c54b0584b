"""The in-process llama.cpp LLM service (SmolLM2-135M from its PyPI package) in pipelines."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from agents.local_llm import LlamaServer, LocalLlamaLLMService
from agents.offline_models import smollm2_gguf


@pytest.fixture(scope="module")
def server():
    return LlamaServer(smollm2_gguf(), n_ctx=1024)


def _context(question: str) -> LLMContext:
    return LLMContext(messages=[{"role": "user", "content": question}])


def _llm(server, **settings) -> LocalLlamaLLMService:
    return LocalLlamaLLMService(
        server=server,
        settings=LocalLlamaLLMService.Settings(
            system_instruction="Answer in one short sentence.", temperature=0.0, **settings
        ),
    )


async def test_streams_a_reply_with_ttfb(server):
    llm = _llm(server, max_tokens=24)
    down, _ = await run_test(
        Pipeline([llm]),
        frames_to_send=[LLMContextFrame(_context("What is the capital of France?"))],
        pipeline_params=PipelineParams(enable_metrics=True),
    )
    texts = [f.text for f in down if isinstance(f, LLMTextFrame)]
    assert len(texts) > 2  # streamed token by token
    assert "paris" in "".join(texts).lower()
    kinds = [
        type(f) for f in down if isinstance(f, LLMFullResponseStartFrame | LLMFullResponseEndFrame)
    ]
    assert kinds == [LLMFullResponseStartFrame, LLMFullResponseEndFrame]
    ttfb = [
        m
        for f in down
        if isinstance(f, MetricsFrame)
        for m in f.data
        if isinstance(m, TTFBMetricsData)
    ]
    assert any(m.value > 0 for m in ttfb)  # (the first one is the initial empty report)


async def test_interruption_stops_generation(server):
    llm = _llm(server, max_tokens=400)
    story = _context("Tell me a very long story about a dragon, with many details.")
    down, _ = await run_test(
        Pipeline([llm]),
        frames_to_send=[
            LLMContextFrame(story),
            SleepFrame(0.6),
            InterruptionFrame(),
            SleepFrame(1.0),
        ],
    )
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before = [f for f in down[:cut] if isinstance(f, LLMTextFrame)]
    after = [f for f in down[cut:] if isinstance(f, LLMTextFrame)]
    assert before, "no text before the interruption"
    assert not after, "text kept streaming after the interruption"
    # The model stopped too (its slot is free): a new request is answered at once.
    quick = _llm(server, max_tokens=8)
    down, _ = await run_test(
        Pipeline([quick]), frames_to_send=[LLMContextFrame(_context("Say hello."))]
    )
    assert [f for f in down if isinstance(f, LLMTextFrame)]


def test_missing_model_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        LlamaServer(tmp_path / "none.gguf")
    with pytest.raises(ValueError):
        LocalLlamaLLMService()
