"""When a turn starts: once its text is one token past the delay (or has ended), so the
decode step of the tick that makes its first frame has its next text token and a reply whose
LLM streams slowly does not stall a tick after its first audio."""

from __future__ import annotations

from pathlib import Path

from moss_pipecat.engine import EngineConfig
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import CreateSession, PushText, StartTurn
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.engine.events import Channel
from moss_pipecat.engine.state import Phase
from moss_pipecat.testing.simulated_device import simulated_engine

H200 = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h200-2026-12-04"


def _engine():
    cfg = EngineConfig(max_context=512, context_budget=448, turn_reserve=64, lookahead_s=None)
    return simulated_engine(DeviceCosts.load(H200), cfg, VirtualClock())


def _started(tokens: int, done: bool) -> tuple[int, Phase]:
    """Frames made by the first tick after ``tokens`` text tokens arrived, and the phase."""
    engine = _engine()
    core, layout = engine.core, engine.layout
    core.execute("a", CreateSession(seed=0))
    turn = core.execute("a", StartTurn(Channel()))
    text_id = min(layout.im_start, layout.text_pad) - 1
    core.execute("a", PushText(turn, (text_id,) * tokens, done=done))
    frames = core.stats["frames"]
    core.tick()
    return core.stats["frames"] - frames, core.sessions["a"].phase


def test_a_turn_waits_for_one_token_past_the_delay_then_steps_in_its_first_tick():
    delay = _engine().layout.delay
    assert _started(delay, done=False) == (0, Phase.WAIT_TEXT)  # the next step's text not here
    assert _started(delay + 1, done=False) == (2, Phase.DECODE)  # first frame + a decode step
    assert _started(3, done=True)[0] == 2  # a short reply whose text ended starts at once
