"""A call that loses its server (issue #24): what the client's journal costs, and how soon the
next reply speaks once a server is reachable again.

A call runs against an in-process engine server: every 10 s of call a user turn (4 s of speech
as codes, a transcript) and a reply (6 s, 75 frames), i.e. 750 frames a minute. Then its server
goes away and a new one (a fresh engine) starts on the same port; from the moment it accepts
connections, the next reply is timed to its first audio (reconnect, hello, ``restore`` of the
journal, prefill of the whole history, first frame). The same loss without a journal (the
conversation starts afresh) is the baseline. The journal's cost: its size in memory, the bytes
of the ``history`` deltas on the wire and the client CPU spent taking them, per minute of call;
and what keeping the reply in flight costs (the text ids that come with its frames in
``turn.words``, the journal's copy of its frames): bytes on the wire per second of audio, beside
the audio's own, and the client CPU.

A call whose connection drops while its server lives on resumes there: the history that follows
the ``ready`` is what changed since the journal's last delta (``hello.history_at``), or the full
one (a journal that names no copy, forced here with ``Journal.unsync``). ``resume`` reports both:
the history's wire bytes and the time from the drop to the next reply's first audio.

A long call's restore without generating all of it: ``--replay-minutes`` repeats the real call's
journal turns (valid records, whatever their order) up to that length before the loss, so the
new server restores that much history (the timing is what is measured; the rows of such a
history were never on the lost server).

    python benchmarks/bench_restore.py                     # tiny fixture model, CPU
    python benchmarks/bench_restore.py --minutes 2 --repeats 5 --out results/restore.json
    python benchmarks/bench_restore.py --replay-minutes 30 --max-context 32768 --repeats 2 \
        --frame-timeout 120   # a 30-minute restore's prefill on a loaded 2-core box: > 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import emit, environment, fixtures_root

from moss_pipecat import protocol as P
from moss_pipecat.client import RemoteEngine
from moss_pipecat.client.journal import Journal
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.factory import load_tiny_engine
from moss_pipecat.model import SamplingParams
from moss_pipecat.server import EngineServer, ServerConfig
from moss_pipecat.speech.frames import FRAME_SECONDS

USER_FRAMES, BOT_FRAMES = 50, 75  # 4 s of user speech, 6 s of reply: 10 s of call
REPLY = "Sure, I can help with that; let me look it up and tell you what I find right away."


class JournalMeter:
    """Wraps ``Journal.apply`` (for every session): deltas, their wire bytes, client CPU."""

    def __init__(self) -> None:
        self.deltas = self.wire_bytes = 0
        self.cpu_s = 0.0
        self._apply = Journal.apply
        meter = self

        def apply(journal: Journal, msg) -> None:
            t0 = time.thread_time()
            meter._apply(journal, msg)
            meter.cpu_s += time.thread_time() - t0
            meter.deltas += 1
            meter.wire_bytes += len(msg.to_json())

        Journal.apply = apply

    def reset(self) -> None:
        self.deltas = self.wire_bytes = 0
        self.cpu_s = 0.0


class InflightMeter:
    """Wraps the journal's in-flight hooks: the wire bytes of ``turn.words``'s text fields (a
    message sent for them alone counts whole), the audio frames and their bytes, client CPU."""

    def __init__(self) -> None:
        self.text_bytes = self.frames = self.audio_bytes = 0
        self.cpu_s = 0.0
        self._text, self._frame = Journal.turn_text, Journal.turn_frame
        meter = self

        def turn_text(journal: Journal, msg) -> None:
            t0 = time.thread_time()
            meter._text(journal, msg)
            meter.cpu_s += time.thread_time() - t0
            if msg.text_ids:  # less the message it would be without them (none: no words)
                spaced = {"spaced": msg.spaced} if msg.spaced else {}
                plain = P.TurnWords(turn_id=msg.turn_id, index=msg.index, words=msg.words, **spaced)
                meter.text_bytes += len(msg.to_json()) - (len(plain.to_json()) if msg.words else 0)

        def turn_frame(journal: Journal, turn_id: int, index: int, codes) -> None:
            t0 = time.thread_time()
            meter._frame(journal, turn_id, index, codes)
            meter.cpu_s += time.thread_time() - t0
            meter.frames += 1

        Journal.turn_text, Journal.turn_frame = turn_text, turn_frame

    def report(self, audio_frame_bytes: int) -> dict:
        seconds = self.frames * FRAME_SECONDS
        return {
            "text_wire_bytes_per_audio_second": self.text_bytes / seconds,
            "audio_wire_bytes_per_audio_second": self.frames * audio_frame_bytes / seconds,
            "client_cpu_ms_per_audio_minute": 1e3 * self.cpu_s / seconds * 60,
            "frames": self.frames,
        }


async def speak(session, text: str, frames: int, at_first=None) -> float | None:
    """One reply; returns when its first frame came (perf_counter), calling ``at_first`` then."""
    turn = await session.start_turn(max_frames=frames, min_frames=frames)
    turn.push_text(text)
    turn.end_text()
    first = None
    async for _ in turn:
        if first is None:
            first = time.perf_counter()
            if at_first is not None:
                at_first()
    return first


async def call(
    session, seconds: float, gen: torch.Generator, text_ids: tuple[int, int], audio: dict
) -> None:
    for _ in range(max(1, round(seconds / 10))):
        codes = torch.randint(
            0, audio["audio_pad"], (USER_FRAMES, audio["channels"]), generator=gen
        )
        ids = torch.randint(*text_ids, (10,), generator=gen).tolist()
        await session.add_user_turn(ids, codes)
        await speak(session, REPLY, BOT_FRAMES)


async def resumes(session, meter: JournalMeter, repeats: int) -> dict:
    """The call's connection dropped ``repeats`` times per kind (its server keeps it): the
    wire bytes of the history after each resumed ``ready`` (delta, or full where the journal
    names no copy), and drop -> the next reply's first audio."""
    out = {}
    for kind in ("delta", "full"):
        sizes, times, copies = [], [], session.journal.copies
        for _ in range(repeats):
            if kind == "full":
                session.journal.unsync()
            meter.reset()
            dropped = time.perf_counter()
            session._link.ws.transport.abort()  # the connection only (a benchmark's liberty)
            # (the history deltas up to the first audio: the resume's, not the reply's own)
            first = await speak(
                session, "Where were we?", 4, lambda into=sizes: into.append(meter.wire_bytes)
            )
            times.append(first - dropped)
        assert session.resumed and (session.journal.copies > copies) == (kind == "full")
        out[kind] = {
            "history_wire_bytes_median": statistics.median(sizes),
            "drop_to_first_audio_ms_median": 1e3 * statistics.median(times),
            "samples_ms": [1e3 * t for t in times],
        }
    return out


async def lose_server(server: EngineServer, engine) -> EngineServer:
    """Stops ``server`` and starts one on its port over ``engine``; returns it once it
    accepts connections."""
    port = server.port
    await server.stop()
    return await EngineServer(engine, ServerConfig(host="127.0.0.1", port=port)).start()


async def run(args) -> dict:
    config = EngineConfig(
        max_sessions=4, max_context=args.max_context, context_budget=args.max_context - 600,
        turn_reserve=600, lookahead_s=None, max_turn_frames=300, eos_min_frames=0,
    )  # fmt: skip
    engines = [load_tiny_engine(args.fixtures, config=config) for _ in range(2)]
    meta = json.loads((Path(args.fixtures) / "realtime" / "golden.json").read_text())
    text_ids = tuple(meta["text_ids_drawn_from"])  # the fixture model's own text ids
    audio_ids = meta["audio"]  # its codebooks and audio code range
    meter, inflight = JournalMeter(), InflightMeter()
    gen = torch.Generator().manual_seed(0)
    server = await EngineServer(engines[0], ServerConfig(host="127.0.0.1", port=0)).start()
    out: dict = {"call_seconds": 60 * args.minutes, "frames_per_minute": 750}
    try:
        ttfa: dict[str, list[float]] = {"restored": [], "no_journal": []}
        for journal in (True, False):
            remote = RemoteEngine(
                server.url, journal=journal, reconnect_timeout=30, frame_timeout=args.frame_timeout
            )
            session = await remote.create_session(sampling=SamplingParams.greedy_decoding())
            meter.reset()
            await call(session, 60 * args.minutes, gen, text_ids, audio_ids)
            if journal:
                minutes = args.minutes
                out["journal"] = {
                    "bytes_in_memory_per_minute": session.journal.nbytes / minutes,
                    "history_deltas_per_minute": meter.deltas / minutes,
                    "wire_bytes_per_minute": meter.wire_bytes / minutes,
                    "client_cpu_ms_per_minute": 1e3 * meter.cpu_s / minutes,
                    "turns": len(session.journal.turns),
                    "history_rows": (await session.snapshot())["rows"].shape[0],
                }
                audio = session.audio  # a frame's message: header, codes, PCM
                frame_bytes = P.AUDIO_HEADER.size + 2 * audio.rvq + 2 * audio.frame_samples
                out["inflight"] = inflight.report(frame_bytes)
                out["resume"] = await resumes(session, meter, args.repeats)
                if args.replay_minutes:  # after the journal's own figures
                    copies = max(1, round(args.replay_minutes / args.minutes))
                    session.journal.turns = session.journal.turns * copies
                    out["replayed"] = {
                        "minutes": args.minutes * copies,
                        "turns": len(session.journal.turns),
                    }
            key = "restored" if journal else "no_journal"
            for r in range(args.repeats):
                server = await lose_server(server, engines[(r + 1) % 2])
                reachable = time.perf_counter()
                first = await speak(session, "Where were we?", 4)
                ttfa[key].append(first - reachable)
            out[f"reconnects_{key}"] = {
                "restored": session.restored,
                "history_lost": session.history_lost,
            }
            await session.close()
        for key, samples in ttfa.items():
            out[f"reachable_to_first_audio_ms_{key}"] = {
                "median": 1e3 * statistics.median(samples),
                "max": 1e3 * max(samples),
                "samples": [1e3 * s for s in samples],
            }
    finally:
        await server.stop()
        for engine in engines:
            engine.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fixtures", default=str(fixtures_root()))
    ap.add_argument("--device", default="cpu", choices=["cpu"])  # the tiny model on CPU
    ap.add_argument("--minutes", type=float, default=1.0, help="call length before the loss")
    ap.add_argument("--repeats", type=int, default=3, help="server losses timed")
    ap.add_argument("--max-context", type=int, default=4096)
    ap.add_argument(
        "--replay-minutes", type=float, default=None, help="restore this long a call (replayed)"
    )
    ap.add_argument(
        "--frame-timeout",
        type=float,
        default=30.0,
        help="the client's frame_timeout (its default: 30 s); a long restore's first frame on a "
        "loaded box can take longer",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = {
        "benchmark": "restore",
        "environment": environment(torch.device("cpu")),
        "params": vars(args),
        **asyncio.run(run(args)),
        "load_average_1_5_15min": os.getloadavg(),  # a shared box: what else ran beside it
    }
    j, r = result["journal"], result["resume"]
    restored = result["reachable_to_first_audio_ms_restored"]["median"]
    afresh = result["reachable_to_first_audio_ms_no_journal"]["median"]
    emit(
        result,
        args.out,
        f"restore: reachable -> first audio {restored:.0f} ms (no journal {afresh:.0f} ms); "
        f"journal {j['bytes_in_memory_per_minute'] / 1024:.1f} KiB/min in memory, "
        f"{j['wire_bytes_per_minute'] / 1024:.1f} KiB/min on the wire, "
        f"{j['client_cpu_ms_per_minute']:.1f} ms CPU/min; the reply in flight: "
        f"{result['inflight']['text_wire_bytes_per_audio_second']:.0f} B/s of audio on the wire; "
        f"a resume's history {r['delta']['history_wire_bytes_median'] / 1024:.1f} KiB "
        f"(full: {r['full']['history_wire_bytes_median'] / 1024:.1f} KiB)",
    )


if __name__ == "__main__":
    main()
