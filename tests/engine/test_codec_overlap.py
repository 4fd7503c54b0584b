"""EngineConfig.overlap_codec: the codec call of a tick runs beside the next tick's decode step
and its PCM comes to the host in that tick's one wait. The turns' chunks (codes, PCM, word
times) and summaries are exactly those of the engine without it (less, for an interrupted
turn, the one tick of audio still on its way out), and a decode tick waits on
the device once instead of twice (counted at the runner's one crossing, ``to_host``; on a CPU
the stream is a no-op but the schedule is the same)."""

from __future__ import annotations

import torch

from moss_pipecat.engine.commands import CreateSession, EndText, Interrupt, PushText, StartTurn
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.engine.events import AudioChunk, Channel
from moss_pipecat.model import SamplingParams
from moss_pipecat.testing.launches import start_turns

from .helpers import random_text


class _Log(Channel):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def put(self, item: object) -> None:
        if isinstance(item, AudioChunk):
            self.log.append(("chunk", item.turn_id, item.index, item.codes.tolist(), item.pcm,
                             item.words))  # fmt: skip
        else:
            s = item
            self.log.append(("end", s.turn_id, s.stop, s.audio_frames, s.heard_frames,
                             list(s.text_ids), s.spoken_text, s.words))  # fmt: skip


def _engine(model, layout, codec, overlap: bool, n: int = 3) -> MossEngine:
    config = EngineConfig(
        max_sessions=n, max_context=256, context_budget=200, turn_reserve=60, lookahead_s=None,
        overlap_codec=overlap,
    )  # fmt: skip
    return MossEngine(model, layout, codec=codec, config=config)  # driven here, not started


def _conversations(model, layout, codec, meta, overlap: bool) -> dict[str, list]:
    """Three sessions driven tick by tick with the same commands at the same ticks: a turn
    capped at 6 frames then a second one, a turn whose text streams in
    and may end on EOS, a turn interrupted mid-way."""
    engine = _engine(model, layout, codec, overlap)
    core, gen = engine.core, torch.Generator().manual_seed(3)

    logs: dict[str, list] = {sid: [] for sid in ("cap", "stream", "cut")}
    text = {sid: random_text(gen, meta, 20) for sid in logs}
    turns = {}
    with torch.inference_mode():
        for i, sid in enumerate(logs):
            core.execute(sid, CreateSession(None, SamplingParams(top_k=5), i))
        # EOS masked: the cap ends it, whatever a fixture set's random model would say.
        turns["cap"] = core.execute("cap", StartTurn(_Log(logs["cap"]), max_frames=6, min_frames=6))
        core.execute("cap", EndText(turns["cap"], tuple(text["cap"])))
        turns["stream"] = core.execute("stream", StartTurn(_Log(logs["stream"]), max_frames=14))
        turns["cut"] = core.execute("cut", StartTurn(_Log(logs["cut"]), min_frames=30))
        core.execute("cut", EndText(turns["cut"], tuple(text["cut"])))
        second = False
        for tick in range(24):
            if tick < 10:  # two tokens a tick, then the end
                ids = tuple(text["stream"][2 * tick : 2 * tick + 2])
                core.execute("stream", PushText(turns["stream"], ids, done=tick == 9))
            if tick == 8:
                core.execute("cut", Interrupt(3))
            if tick == 16:  # the first has ended (both ways), at the same tick either way
                assert logs["cap"][-1][:3] == ("end", 0, "max_frames")
                second = True
                turn = core.execute("cap", StartTurn(_Log(logs["cap"]), max_frames=4, min_frames=4))
                core.execute("cap", EndText(turn, tuple(text["stream"][:5])))
            core.tick()
    assert second and all(log[-1][0] == "end" for log in logs.values()), logs
    return logs


def test_overlap_gives_the_same_chunks_and_summaries(
    tiny_model, golden_layout, tiny_codec, realtime_meta
):
    off = _conversations(tiny_model, golden_layout, tiny_codec, realtime_meta, overlap=False)
    on = _conversations(tiny_model, golden_layout, tiny_codec, realtime_meta, overlap=True)
    assert on["cap"] == off["cap"] and on["stream"] == off["stream"]
    # The interruption comes while the last tick's frame is on its way out: that chunk is
    # never sent (made past what the caller reports heard); everything else is the same.
    chunks = [e for e in on["cut"] if e[0] == "chunk"]
    assert on["cut"][-1] == off["cut"][-1]  # the same summary (heard 3, same frames made)
    assert chunks == [e for e in off["cut"] if e[0] == "chunk"][: len(chunks)]
    assert len([e for e in off["cut"] if e[0] == "chunk"]) == len(chunks) + 1
    stops = [e[2] for log in on.values() for e in log if e[0] == "end"]
    assert stops.count("max_frames") >= 2 and "interrupted" in stops


def _host_waits(model, layout, codec, meta, overlap: bool) -> list[int]:
    engine = _engine(model, layout, codec, overlap)
    runner = engine.core.runner
    assert runner.codec_stream is None  # CPU: the stream is a no-op
    gen = torch.Generator().manual_seed(5)
    texts = [random_text(gen, meta, 16) for _ in range(3)]
    start_turns(engine, [SamplingParams()] * 3, texts, frames=8)
    waits = []
    with torch.inference_mode():
        for _ in range(4):
            before = runner.host_syncs
            engine.core.tick()
            waits.append(runner.host_syncs - before)
    return waits


def test_a_decode_tick_waits_on_the_device_once_with_overlap(
    tiny_model, golden_layout, tiny_codec, realtime_meta
):
    args = (tiny_model, golden_layout, tiny_codec, realtime_meta)
    # Tick 1: prefill, first frames, one step. Then decode ticks of all three sessions.
    # Without overlap each batch of frames waits, and so does its PCM.
    assert _host_waits(*args, overlap=False) == [4, 2, 2, 2]
    # With it: the first frames' wait, then one wait per tick that brings this tick's frames
    # and the last tick's PCM together.
    assert _host_waits(*args, overlap=True) == [2, 1, 1, 1]
