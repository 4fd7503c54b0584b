"""The agent pipeline: transport → STT → user aggregator (Silero VAD) → LLM → MOSS TTS → out.

pipecat 1.x runs the VAD inside the user context aggregator; it broadcasts VAD frames upstream
too, which is what segments Whisper's input. Interruptions are on (the VAD turn-start strategy
interrupts the bot when the user starts speaking). Input audio passes through to the TTS, which
keeps the user's speech and transcript in MOSS's acoustic history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_stop import (
    SpeechTimeoutUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from agents.config import AgentConfig
from agents.services import SharedModels, make_llm, make_stt, make_tts
from moss_pipecat.service import MossTTSService


@dataclass
class AgentPipeline:
    """A built agent: its pipeline worker plus handles that tests and evaluations inspect."""

    worker: PipelineWorker
    context: LLMContext
    stt: Any
    llm: Any
    tts: MossTTSService


def turn_strategies(config: AgentConfig) -> UserTurnStrategies:
    """End of the user's turn: Smart Turn v3 (bundled ONNX) or VAD silence + a short timeout."""
    if config.smart_turn:
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

        stop = [TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3())]
    else:
        stop = [SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)]
    return UserTurnStrategies(stop=stop)


def build_agent(
    transport: BaseTransport,
    config: AgentConfig,
    models: SharedModels,
    *,
    audio_in_sample_rate: int = 16000,
    audio_out_sample_rate: int = 24000,
    observers: Sequence[Any] = (),
    idle_timeout_secs: float | None = 300,
) -> AgentPipeline:
    """Builds the pipeline and its worker for one session (one conversation)."""
    context = LLMContext()
    vad = SileroVADAnalyzer(params=VADParams(stop_secs=config.vad_stop_secs))
    user_agg, assistant_agg = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=vad, user_turn_strategies=turn_strategies(config)
        ),
    )
    stt = make_stt(config)
    llm = make_llm(config, models)
    tts = make_tts(config, models, context)
    pipeline = Pipeline(
        [transport.input(), stt, user_agg, llm, tts, transport.output(), assistant_agg]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=audio_in_sample_rate,
            audio_out_sample_rate=audio_out_sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=list(observers),
        idle_timeout_secs=idle_timeout_secs,
    )
    return AgentPipeline(worker=worker, context=context, stt=stt, llm=llm, tts=tts)
