"""Headless evaluation: WAV utterances through the full agent in real time → WAVs + JSON report.

    python -m agents.evaluate                      # offline profile, agents/eval/scenario.json
    python -m agents.evaluate --profile local --out out/eval_gpu   # real models (GPU)

Per turn the report has the STT text, the LLM text, the spoken text (``TTSTextFrame``s, i.e. the
words the listener heard), TTFB per service, time to first audio (from the end of the user's
speech and from the VAD's stop), interruptions, and the bot's reply as played (a WAV). It also
lists the MOSS conversation history (audio frames per turn) at the end, before the pipeline
stops, so a barge-in's rollback is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.workers.runner import WorkerRunner

from agents.config import REPO, AgentConfig, add_agent_arguments, load_config
from agents.headless import HeadlessTransport, Utterance
from agents.pipeline import AgentPipeline, build_agent
from agents.services import SharedModels, load_shared_models

SCENARIO = REPO / "agents" / "eval" / "scenario.json"
NOISE_NOTE = (
    "TTS = tiny random-weight MOSS fixture model: the bot's audio is NOISE-LIKE by design "
    "(it proves the pipeline end to end; it does not speak)."
)


@dataclass
class Event:
    t: float
    kind: str
    data: Any = None


class ConversationObserver(BaseObserver):
    """Records the conversation's events (monotonic time) from the frames the services push."""

    def __init__(self) -> None:
        super().__init__()
        self.agent: AgentPipeline | None = None
        self.events: list[Event] = []
        self._seen: set[int] = set()

    def _add(self, kind: str, data: Any = None) -> None:
        self.events.append(Event(time.monotonic(), kind, data))

    async def on_push_frame(self, data: FramePushed) -> None:
        f, src, dst = data.frame, data.source, data.destination
        a = self.agent
        if a is None:
            return
        if isinstance(f, InterruptionFrame):
            if dst is a.tts:  # the barge-in reaches the TTS (queued: handled a moment later)
                self._add("interruption")
            elif src is a.tts and data.direction == FrameDirection.DOWNSTREAM:
                # the TTS handled it (its replies stopped) and passes it on: from here no audio
                # of a stopped reply may follow
                self._add("interruption_passed")
            return
        if f.id in self._seen:
            return
        if isinstance(f, TranscriptionFrame) and src is a.stt:
            self._add("transcript", f.text.strip())
        elif isinstance(f, LLMFullResponseStartFrame) and src is a.llm:
            self._add("llm_start")
        elif isinstance(f, LLMTextFrame) and src is a.llm:
            self._add("llm_text", f.text)
        elif isinstance(f, LLMFullResponseEndFrame) and src is a.llm:
            self._add("llm_end")
        elif isinstance(f, TTSTextFrame) and src is a.tts:
            self._add("spoken", (f.context_id, f.text))
        elif isinstance(f, TTSAudioRawFrame) and src is a.tts:
            self._add("tts_audio", f.context_id)
        elif isinstance(f, UserStartedSpeakingFrame):
            self._add("user_started")
        elif isinstance(f, UserStoppedSpeakingFrame):
            self._add("user_stopped")
        elif isinstance(f, VADUserStoppedSpeakingFrame):
            self._add("vad_stopped")
        elif isinstance(f, MetricsFrame):
            for m in f.data:
                if isinstance(m, TTFBMetricsData | ProcessingMetricsData) and m.value > 0:
                    kind = "ttfb" if isinstance(m, TTFBMetricsData) else "processing"
                    self._add(kind, (m.processor, m.value))
        else:
            return
        self._seen.add(f.id)


def load_scenario(path: Path = SCENARIO) -> list[Utterance]:
    """Utterances from a scenario JSON: ``[{"wav", "text", "barge_in_s"?, "gap_s"?}]``."""
    items = json.loads(Path(path).read_text())
    return [
        Utterance(
            wav=(Path(path).parent / u["wav"]).resolve(),
            text=u.get("text", ""),
            barge_in_s=u.get("barge_in_s"),
            gap_s=u.get("gap_s", 0.6),
        )
        for u in items
    ]


def audio_frames_per_turn(snapshot: dict) -> list[dict]:
    """Each MOSS history turn: its role, text tokens and the audio frames it holds."""
    return [
        {"role": r, "text_tokens": n, "audio_frames": f}
        for (r, n), f in zip(snapshot["turns"], snapshot["turn_frames"], strict=True)
    ]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1e3 * x, 1)


def build_report(
    config: AgentConfig,
    script: list[Utterance],
    transport: HeadlessTransport,
    observer: ConversationObserver,
    agent: AgentPipeline,
    history: list[dict],
    out_dir: Path,
    sample_rate: int,
) -> dict:
    """Splits the events into turns (one per utterance) and writes each bot reply as a WAV."""
    feed, segments, events = transport.feed_log, transport.bot.segments, observer.events
    names = {agent.stt.name: "stt", agent.llm.name: "llm", agent.tts.name: "tts"}
    turns = []
    for i, utt in enumerate(script):
        if i >= len(feed.started):
            break
        t0 = feed.started[i]
        t1 = feed.started[i + 1] if i + 1 < len(feed.started) else float("inf")
        speech_end = feed.speech_end[i]
        window = [e for e in events if t0 <= e.t < t1]
        replies = [s for s in segments if speech_end <= s.start < t1]
        # LLM replies started in this turn (text until their end).
        llm_texts, cur = [], None
        for e in events:
            if e.kind == "llm_start" and t0 <= e.t < t1:
                cur = []
                llm_texts.append(cur)
            elif e.kind == "llm_text" and cur is not None:
                cur.append(e.data)
            elif e.kind == "llm_end":
                cur = None
        llm_texts = ["".join(x).strip() for x in llm_texts]
        # The TTS contexts whose first audio came in this turn, and the words spoken in them.
        contexts = []
        for e in events:
            if e.kind == "tts_audio" and e.data not in contexts and t0 <= e.t < t1:
                contexts.append(e.data)
        first_ctx = {}
        for e in events:
            if e.kind == "tts_audio":
                first_ctx.setdefault(e.data, e.t)
        contexts = [c for c in contexts if t0 <= first_ctx[c] < t1]
        spoken = " ".join(
            e.data[1].strip() for e in events if e.kind == "spoken" and e.data[0] in contexts
        )
        interruptions = [e.t for e in window if e.kind == "interruption"]
        barge_ins = [
            t
            for t in interruptions
            if any(s.start <= t <= (s.end or float("inf")) for s in segments)
        ]
        first_audio = replies[0].start if replies else None
        # The VAD's last "stopped" before the reply (it may split one utterance in several).
        vad_stops = [
            e.t for e in window if e.kind == "vad_stopped" and e.t < (first_audio or float("inf"))
        ]
        vad_stop = vad_stops[-1] if vad_stops else None
        metrics: dict[str, list[float]] = {}
        for e in window:
            if e.kind in ("ttfb", "processing"):
                proc, value = e.data
                key = f"{names.get(proc, proc)}_{e.kind}_ms"
                metrics.setdefault(key, []).append(round(1e3 * value, 1))
        wav_path = None
        played = b"".join(bytes(s.pcm) for s in replies)
        if played:
            wav_path = out_dir / f"turn{i + 1}_bot.wav"
            sf.write(wav_path, np.frombuffer(played, np.int16), sample_rate, subtype="PCM_16")
        next_barge = i + 1 < len(script) and script[i + 1].barge_in_s is not None
        turns.append(
            {
                "turn": i + 1,
                "user_wav": str(utt.wav),
                "user_text": utt.text,
                "stt_text": " ".join(e.data for e in window if e.kind == "transcript"),
                "llm_text": " | ".join(t for t in llm_texts if t),
                "spoken_text": spoken,
                "llm_replies": len(llm_texts),
                "bot_replies_played": len(replies),
                "bot_audio_s": round(len(played) / 2 / sample_rate, 2),
                "bot_wav": str(wav_path) if wav_path else None,
                "ttfa_from_speech_end_ms": _ms(first_audio - speech_end if first_audio else None),
                "ttfa_from_vad_stop_ms": _ms(
                    first_audio - vad_stop if first_audio and vad_stop else None
                ),
                "ttfb_ms": metrics,
                "interruptions": len(interruptions),
                "barge_ins": len(barge_ins),
                "reply_interrupted_by_next_turn": bool(next_barge and replies),
                "cue_timed_out": i in feed.cue_timeouts,
            }
        )
    return {
        "agent": config.describe(),
        "note": NOISE_NOTE if config.uses_tiny_tts else None,
        "turns": turns,
        "moss_history": history,
        "summary": _summary(turns),
    }


def _summary(turns: list[dict]) -> dict:
    ttfa = [t["ttfa_from_speech_end_ms"] for t in turns if t["ttfa_from_speech_end_ms"]]
    return {
        "turns": len(turns),
        "turns_with_reply_audio": sum(1 for t in turns if t["bot_audio_s"] > 0),
        "ttfa_from_speech_end_ms": {
            "mean": round(sum(ttfa) / len(ttfa), 1) if ttfa else None,
            "max": max(ttfa) if ttfa else None,
        },
        "barge_ins": sum(t["barge_ins"] for t in turns),
    }


@dataclass
class EvalRun:
    """An evaluation's report plus the raw material behind it (for tests)."""

    report: dict
    events: list[Event]
    transport: HeadlessTransport
    snapshot: dict | None


async def evaluate(
    config: AgentConfig,
    script: list[Utterance],
    out_dir: Path,
    models: SharedModels | None = None,
    *,
    timeout_s: float = 300.0,
) -> EvalRun:
    """Runs the scenario through the agent; writes WAVs + report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    own = models is None
    models = models or await asyncio.to_thread(load_shared_models, config)
    out_rate = 24000
    transport = HeadlessTransport(script, out_sample_rate=out_rate)
    observer = ConversationObserver()
    agent = build_agent(
        transport,
        config,
        models,
        audio_out_sample_rate=out_rate,
        observers=[observer],
        idle_timeout_secs=None,
    )
    observer.agent = agent
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(agent.worker)
    run = asyncio.create_task(runner.run())
    history: list[dict] = []
    snap = None
    try:
        done = asyncio.create_task(transport.finished.wait())
        await asyncio.wait({run, done}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            done.cancel()
            logger.error("evaluation did not finish in time")
        if agent.tts.session is not None:
            snap = await agent.tts.session.snapshot()
            history = audio_frames_per_turn(snap)
        await agent.worker.queue_frame(EndFrame())
        await asyncio.wait_for(run, 30)
    finally:
        if not run.done():
            await agent.worker.cancel()
        if own:
            await asyncio.to_thread(models.shutdown)
    report = build_report(config, script, transport, observer, agent, history, out_dir, out_rate)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return EvalRun(report, observer.events, transport, snap)


def summary_lines(report: dict) -> list[str]:
    """A short human-readable account of the run."""
    lines = [f"agent: {report['agent']}"]
    for t in report["turns"]:
        ttfa = t["ttfa_from_speech_end_ms"]
        lines += [
            f"turn {t['turn']}: user said   {t['user_text']!r}",
            f"        STT heard   {t['stt_text']!r}",
            f"        LLM replied {t['llm_text']!r}",
            f"        spoken      {t['spoken_text']!r}",
            f"        {t['bot_audio_s']} s of reply audio, first audio "
            f"{'-' if ttfa is None else f'{ttfa:.0f} ms'} after the user stopped"
            + (", interrupted by the next turn" if t["reply_interrupted_by_next_turn"] else "")
            + (f", barged in x{t['barge_ins']}" if t["barge_ins"] else ""),
        ]
    history = ", ".join(f"{h['role']}:{h['audio_frames']}" for h in report["moss_history"])
    lines.append(f"MOSS history (audio frames per turn): {history}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=SCENARIO, help="utterances JSON")
    ap.add_argument("--out", type=Path, default=Path("out/agent_eval"))
    ap.add_argument("-v", "--verbose", action="store_true", help="pipecat's debug log")
    add_agent_arguments(ap)
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO")
    config = load_config(args)
    report = asyncio.run(evaluate(config, load_scenario(args.scenario), args.out)).report
    print("\n".join(summary_lines(report)))
    if report["note"]:
        print(f"\nNOTE: {report['note']}")
    out = args.out.resolve()
    print(f"\nOutputs in {out}/:")
    print("  report.json       per-turn STT/LLM/spoken text, TTFB, time to first audio, barge-ins")
    for t in report["turns"]:
        if t["bot_wav"]:
            print(f"  {Path(t['bot_wav']).name:<17} the bot's reply to turn {t['turn']}, as played")


if __name__ == "__main__":
    main()
