"""The engine: many streaming MOSS conversations on one device, batched by one thread.

The public API is here; user code imports from ``moss_pipecat.engine``, not its modules::

    from moss_pipecat.engine import load_engine

    engine = load_engine("OpenMOSS-Team/MOSS-TTS-Realtime", "OpenMOSS-Team/MOSS-Audio-Tokenizer")
    session = engine.create_session()
"""

from moss_pipecat.engine.commands import (
    AddUserTurn,
    Close,
    Command,
    CreateSession,
    EndText,
    HistoryDelta,
    Interrupt,
    PushText,
    Reset,
    RestoreHistory,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
)
from moss_pipecat.engine.config import FRAME_SECONDS, EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.engine.factory import (
    DEFAULT_CODEC,
    DEFAULT_MODEL,
    TINY_ENGINE_CONFIG,
    load_engine,
    load_tiny_engine,
    tiny_fixtures_dir,
)
from moss_pipecat.engine.records import HistoryChange, HistoryCursor, TurnRecord
from moss_pipecat.engine.rows import DEFAULT_DELAY, RowLayout
from moss_pipecat.engine.session import Session, SyncSession, TurnStream

__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_DELAY",
    "DEFAULT_MODEL",
    "FRAME_SECONDS",
    "TINY_ENGINE_CONFIG",
    "AddUserTurn",
    "AudioChunk",
    "Close",
    "Command",
    "CreateSession",
    "EndText",
    "EngineConfig",
    "HistoryChange",
    "HistoryCursor",
    "HistoryDelta",
    "Interrupt",
    "MossEngine",
    "PushText",
    "Reset",
    "RestoreHistory",
    "RowLayout",
    "Session",
    "SetLimits",
    "SetSampling",
    "SetVoice",
    "Snapshot",
    "StartTurn",
    "SyncSession",
    "TurnRecord",
    "TurnStream",
    "TurnSummary",
    "load_engine",
    "load_tiny_engine",
    "tiny_fixtures_dir",
]
