"""With the codec beside the next decode step (``overlap_codec``), a command for one call whose
reply's last audio is still on its way (a barge-in then) sends that call's audio at once and
leaves every other call's audio to go out at the next tick, as it would have: sending all of
it early made each other call's next chunk come two ticks after its last (every call's frame
gap doubled at each such barge-in)."""

from __future__ import annotations

from pathlib import Path

from moss_pipecat.engine import EngineConfig
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import CreateSession, Interrupt, PushText, StartTurn
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.engine.events import AudioChunk, TurnSummary
from moss_pipecat.testing.core_driver import Stamped
from moss_pipecat.testing.simulated_device import simulated_engine

H200 = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h200-2026-12-04"


def test_a_barge_in_as_a_reply_ends_sends_only_that_calls_audio_early():
    cfg = EngineConfig(
        max_context=512, context_budget=448, turn_reserve=64, lookahead_s=None, overlap_codec=True
    )
    engine = simulated_engine(DeviceCosts.load(H200), cfg, VirtualClock())
    core = engine.core
    got: dict[str, list[str]] = {"a": [], "b": []}
    text_id = min(engine.layout.im_start, engine.layout.text_pad) - 1
    for sid, frames in (("a", 3), ("b", 12)):
        core.execute(sid, CreateSession(seed=1))

        def on_item(item, sid=sid):
            kind = "audio" if isinstance(item, AudioChunk) else "end"
            got[sid].append(kind if isinstance(item, AudioChunk | TurnSummary) else "?")

        turn = core.execute(sid, StartTurn(Stamped(on_item), max_frames=frames))
        core.execute(sid, PushText(turn, (text_id,) * (engine.layout.delay + 6), done=True))
    while not core.scheduler.audio.ending("a"):
        assert core.tick() == 0
    before = {sid: list(items) for sid, items in got.items()}
    assert before["a"].count("audio") < 3 and before["b"]  # a's last audio is on its way
    core.execute("a", Interrupt(heard_frames=1))  # the caller heard one frame and cut in
    assert got["a"] == ["audio"] * 3 + ["end"]  # a's audio and its end, now, in order
    assert got["b"] == before["b"]  # b's pending chunk waits for the next tick, as before
    core.tick()
    assert len(got["b"]) == len(before["b"]) + 1  # one chunk a tick: b's pace kept
