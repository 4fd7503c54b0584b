"""MossTTSService on an engine that refuses the call (overloaded): one clear ErrorFrame, the
pipeline goes on without audio, and pipecat gives the unusable service no more text."""

from __future__ import annotations

from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame
from pipecat.utils.errors import ErrorCategory

from moss_pipecat.errors import OverloadedError
from moss_pipecat.service import MossTTSService

from ..cost_tables import DEADLINE_S, write_cost_table
from .conftest import service_engine
from .test_moss_tts_service import reply, run


async def test_an_overload_refusal_is_one_error_frame(fixtures_dir, tmp_path):
    table = write_cost_table(tmp_path / "costs.json", decode_s=0.1)  # admits no one
    engine = service_engine(fixtures_dir, frame_deadline_s=DEADLINE_S, cost_table=table)
    try:
        tts = MossTTSService(engine=engine)
        down, up, _ = await run(tts, [*reply("Hello ", "there."), *reply("And ", "again.")])
    finally:
        engine.shutdown()
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1, [f.error for f in errors]
    error = errors[0]
    assert isinstance(error.exception, OverloadedError)
    assert error.category is ErrorCategory.RATE_LIMIT
    assert error.error.startswith("MOSS TTS: this call was refused: the engine is overloaded")
    assert not tts.is_usable and tts.session is None
    assert not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert engine.stats["refused_overload"] == 1
