"""Host work per tick: the CPU time the engine's own Python spends per tick, by session count.

On a GPU the engine thread waits on the device once per tick (twice without codec overlap);
whatever it does between those waits (scheduling, per-session bookkeeping, building the step
rows and sampling settings, recording frames, word times, putting chunks into channels, ending
turns) is not hidden behind the device unless pipelined, so it adds to every tick. This
measures it on the CPU with the real engine core and scheduler driven on a simulated device
(``moss_pipecat.testing.simulated_device``: the real-size model config on ``meta``, rvq 16 and
the real vocabulary, no weights; a ``VirtualClock`` advanced by a GPU run's cost table), tick
by tick on this thread (``core.execute`` and ``core.tick`` as the engine thread runs them).

Scenarios per session count N:

* ``steady``: every session decodes (all its text arrived ahead, lookahead unlimited so every
  session steps every tick, as in the capacity benchmark); no turn starts or ends.
* ``turns``: the same, with turns ending and starting: each turn is ``--turn-frames`` frames,
  the first turns staggered so about N / turn_frames turns end and start (prefill, first
  frame) each tick; a new turn starts as soon as the last one ended (its StartTurn/EndText
  commands are engine-thread work too, counted as ``commands``).

Time is ``time.thread_time`` of this thread (CPU, not wall: the box may be shared), split by
phase with explicit timers on the scheduler's methods (exclusive: a phase's own time, not its
callees'). The simulated runner's own calls (making fake frames and PCM, which a real runner
would not do) are timed apart as ``sim_runner`` and left out of ``engine_ms``. Channels are
the engine's own (``events.Channel``), created in an event loop running on another thread, as
the server's and the pipecat service's are (``--channels sync``: plain queues). A real
``ModelRunner`` also builds its inputs on the host (sampling tensors, noise keys, history rows,
PCM bytes): ``runner_inputs_ms`` times those pieces at each N on the CPU, apart (on a GPU they
are that Python plus a few small copies). The garbage collector's time is inside
``engine_ms`` (it runs in whichever phase allocates) and also counted apart: ``gc_ms_mean``,
and the full collections with their longest pause (``--gc-freeze``: after ``gc.freeze()``).

    python benchmarks/bench_host_work.py                       # N = 1 8 32 64 128 256 400
    python benchmarks/bench_host_work.py --sessions 32 300 --profile 300

These are CPU figures of the host's Python, not GPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import queue
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager

import torch
from _common import REPO, emit, environment

from moss_pipecat.engine import EngineConfig, gc_policy
from moss_pipecat.engine.clock import VirtualClock
from moss_pipecat.engine.commands import CreateSession, EndText, PushText, StartTurn
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.engine.events import Channel, TurnSummary
from moss_pipecat.engine.runner import ModelRunner
from moss_pipecat.engine.state import Phase
from moss_pipecat.model import BatchSampling, SamplingParams
from moss_pipecat.model.sampling import NoiseKeys
from moss_pipecat.testing.simulated_device import SAMPLES_PER_FRAME, simulated_engine

COSTS = REPO / "benchmarks" / "results" / "h200-2026-11-26"
SCHEDULER_PHASES = {  # Scheduler method -> phase (exclusive time)
    "begin_prefill": "turn_start",
    "plan": "plan",
    "prefill_chunk": "prefill",
    "first_frames": "first_frame",
    "decode": "decode",
    "deliver": "deliver",
    "decode_pcm": "codec",
}
AUDIO_PHASES = {"host": "send", "finish": "finish"}  # AudioOut method -> phase
RUNNER_CALLS = (  # the simulated runner's calls: its own work, not the engine's
    "prefill",
    "first_frames",
    "decode",
    "pcm",
    "to_host",
    "sync",
    "pcm_bytes",
    "open_streams",
    "close_stream",
    "copy_history",
)
SIM_RUNNER = "sim_runner"


class GcTimer:
    """Thread CPU time in the garbage collector (it runs inside whatever phase allocates)."""

    def __init__(self) -> None:
        self.ns = 0
        self.full = 0  # full (generation 2) collections
        self.full_max_ns = 0  # the longest of them
        self._t = 0

    def __call__(self, phase: str, info: dict) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        now = time.thread_time_ns()
        if phase == "start":
            self._t = now
            return
        self.ns += now - self._t
        if info["generation"] == 2:
            self.full += 1
            self.full_max_ns = max(self.full_max_ns, now - self._t)


class PhaseTimer:
    """Thread CPU time by phase, exclusive: entering a phase stops its caller's clock."""

    def __init__(self) -> None:
        self.ns: Counter[str] = Counter()
        self._stack: list[str] = []
        self._t = 0

    def _switch(self) -> None:
        now = time.thread_time_ns()
        self.ns[self._stack[-1]] += now - self._t
        self._t = now

    @contextmanager
    def phase(self, name: str):
        if self._stack:
            self._switch()
        else:
            self._t = time.thread_time_ns()
        self._stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def wrap(self, obj: object, method: str, name: str) -> None:
        """Times ``obj.method`` as phase ``name`` (an instance attribute shadows the method)."""
        fn = getattr(obj, method)

        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        setattr(obj, method, timed)


def words_text(ids: list[int]) -> tuple[str, list[int]]:
    """A text of one word per id, and each id's end character (as the tokenizer reports)."""
    text, ends = "", []
    for i, _ in enumerate(ids):
        text += f"w{i % 97} "  # about 4 characters a token, as an LLM's English tokens
        ends.append(len(text) - 1)
    return text, ends


class Loop:
    """An event loop on its own thread: the channels deliver through it, as a server's do."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.readers: set[asyncio.Task] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def channel(self) -> Channel:
        """A turn's channel, with a reader that takes its items as a caller would."""

        async def read(ch: Channel) -> None:
            while not isinstance(await ch.get(), TurnSummary):
                pass

        async def make() -> Channel:
            ch = Channel()
            task = asyncio.get_running_loop().create_task(read(ch))
            self.readers.add(task)
            task.add_done_callback(self.readers.discard)
            return ch

        return asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    def close(self) -> None:
        async def cancel() -> None:
            for task in list(self.readers):
                task.cancel()

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Bench:
    """One engine of N sessions on a simulated device, ticked on this thread."""

    def __init__(self, args, n: int, scenario: str, loop: Loop | None) -> None:
        self.args, self.n, self.scenario, self.loop = args, n, scenario, loop
        self.clock = VirtualClock()
        cfg = EngineConfig(
            max_sessions=n,
            max_context=4096,
            context_budget=3500,
            turn_reserve=500,
            lookahead_s=None,  # every session steps every tick: the device's worst case
            overlap_codec=args.overlap == "on",
        )
        self.engine = simulated_engine(DeviceCosts.load(args.costs), cfg, self.clock)
        self.core = self.engine.core
        self.vocab = min(self.engine.layout.im_start, self.engine.layout.text_pad)
        self.gen = torch.Generator().manual_seed(n)
        self.timer = PhaseTimer()
        for method, name in SCHEDULER_PHASES.items():
            self.timer.wrap(self.core.scheduler, method, name)
        # (an engine from before ``AudioOut`` has these on its scheduler: A/B runs)
        audio = getattr(self.core.scheduler, "audio", self.core.scheduler)
        for method, name in AUDIO_PHASES.items():
            self.timer.wrap(audio, method, name)
        for method in RUNNER_CALLS:
            self.timer.wrap(self.core.runner, method, SIM_RUNNER)
        self.turns_started = 0

    def _channel(self) -> Channel:
        return self.loop.channel() if self.loop is not None else Channel()

    def _drain(self) -> None:
        """Empties plain queues (their reader's work, not the engine's)."""
        if self.loop is not None:
            return
        for s in self.core.sessions.values():
            while s.turn is not None:
                try:
                    s.turn.channel.get_sync(timeout=0)
                except queue.Empty:
                    break

    def start(self, sid: str, frames: int | None) -> list[Callable[[], None]]:
        """The commands that start a turn (run later, timed as ``commands``)."""
        steady = frames is None
        n_text = self.args.steady_text if steady else self.args.turn_text
        ids = torch.randint(0, self.vocab, (n_text,), generator=self.gen).tolist()
        text, ends = words_text(ids)
        channel = self._channel()
        self.turns_started += 1
        # steady: text never ends (the frame cap stays the engine's), EOS masked; turns: exactly
        # ``frames`` frames.
        start = StartTurn(channel, max_frames=frames, min_frames=frames or 10**6)

        def run() -> None:
            turn_id = self.core.execute(sid, start)
            kind = PushText if steady else EndText
            self.core.execute(sid, kind(turn_id, tuple(ids), text, ends))

        return [run]

    def measure(self, prof: cProfile.Profile | None = None) -> dict:
        """Runs the ticks; ``prof`` profiles the measured ones."""
        args, core, timer, n = self.args, self.core, self.timer, self.n
        pending = []
        for i in range(n):
            sid = f"call-{i}"
            core.execute(sid, CreateSession(sampling=SamplingParams(), seed=i))
            # staggered first turns: about n / turn_frames end (and start again) per tick
            frames = None if self.scenario == "steady" else 1 + i % args.turn_frames
            pending += self.start(sid, frames)
        if args.gc_freeze:  # what start-up made (imports, model, engine) leaves the GC's scans
            gc.freeze()
        if args.gc_policy:  # the engine's own (``MossEngine.start``): freeze, young threshold
            gc_policy.engine_started()
        runner_ns, tick_ns, by_phase = [], [], Counter()
        gc_timer = GcTimer()
        gc.callbacks.append(gc_timer)
        gc_ns = 0
        starts = 0
        for k in range(args.warmup + args.ticks):
            measured = k >= args.warmup
            if prof is not None and k == args.warmup:
                prof.enable()
            timer.ns.clear()
            gc_timer.ns = 0
            t0 = time.thread_time_ns()
            with timer.phase("commands"):
                for run in pending:
                    run()
            starts_now, pending = len(pending), []
            with timer.phase("scheduling"):  # what no named phase claims
                core.tick()
            t1 = time.thread_time_ns()
            gc_tick = gc_timer.ns
            self._drain()
            if self.scenario == "turns":
                for sid, s in core.sessions.items():
                    if s.phase is Phase.IDLE:
                        pending += self.start(sid, args.turn_frames)
            if measured:
                starts += starts_now
                tick_ns.append(t1 - t0)
                runner_ns.append(timer.ns[SIM_RUNNER])
                by_phase.update(timer.ns)
                gc_ns += gc_tick
        gc.callbacks.remove(gc_timer)
        if args.gc_policy:
            gc_policy.engine_stopped()
        if prof is not None:
            prof.disable()
        steady_ok = all(s.phase is Phase.DECODE for s in core.sessions.values())
        engine_ms = [(t - r) / 1e6 for t, r in zip(tick_ns, runner_ns, strict=True)]
        per = args.ticks
        phases = {p: round(ns / per / 1e6, 4) for p, ns in by_phase.most_common()}
        out = {
            "sessions": n,
            "ticks": per,
            "turn_starts_per_tick": round(starts / per, 2),
            "engine_ms_median": round(statistics.median(engine_ms), 4),
            "engine_ms_mean": round(statistics.fmean(engine_ms), 4),
            "engine_ms_p90": round(sorted(engine_ms)[int(0.9 * (len(engine_ms) - 1))], 4),
            "engine_us_per_session": round(1e3 * statistics.fmean(engine_ms) / n, 2),
            "sim_runner_ms_mean": round(statistics.fmean(runner_ns) / 1e6, 4),
            "gc_ms_mean": round(gc_ns / per / 1e6, 4),  # inside engine_ms (GC pauses)
            "gc_full_collections": gc_timer.full,  # during the warm-up and measured ticks
            "gc_full_max_ms": round(gc_timer.full_max_ns / 1e6, 2),
            "phases_ms_per_tick": phases,
            "frames": core.stats["frames"],
            "virtual_tick_ms": round(1e3 * self.clock.now() / max(1, core.stats["ticks"]), 2),
        }
        if self.scenario == "steady":
            out["all_decoding"] = steady_ok
        return out


def runner_inputs_ms(n: int, reps: int) -> float:
    """A real ModelRunner's per-call host inputs for n rows, on the CPU: sampling tensors,
    noise keys, history rows, window mask inputs, and the PCM rows' bytes (ms per tick)."""
    params = [SamplingParams()] * n
    pcm = torch.zeros(n, SAMPLES_PER_FRAME, dtype=torch.int16)
    t0 = time.thread_time_ns()
    for _ in range(reps):
        BatchSampling.from_params(params, "cpu", [True] * n)
        NoiseKeys.from_ints(list(range(n)), [7] * n, "cpu")
        torch.tensor(list(range(n)))
        torch.tensor([p.repetition_window for p in params])
        ModelRunner.pcm_bytes(pcm)
    return round((time.thread_time_ns() - t0) / reps / 1e6, 4)


def profile(args, n: int, scenario: str, loop: Loop | None, top: int) -> dict:
    """cProfile (thread CPU time) of the measured ticks at n: the top entries by cumulative and
    by own time (profiled, so each several times its unprofiled cost)."""
    bench = Bench(args, n, scenario, loop)
    prof = cProfile.Profile(time.thread_time)
    bench.measure(prof)
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (_, ncalls, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{file.rsplit('/', 2)[-1] if '/' in file else file}:{line}({fn})",
                "calls": ncalls,
                "tottime_ms_per_tick": round(1e3 * tt / args.ticks, 4),
                "cumtime_ms_per_tick": round(1e3 * ct / args.ticks, 4),
            }
        )
    rows.sort(key=lambda r: -r["cumtime_ms_per_tick"])
    by_own = sorted(rows, key=lambda r: -r["tottime_ms_per_tick"])[:top]
    return {"by_cumulative": rows[:top], "by_own_time": by_own}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256, 400])
    ap.add_argument("--ticks", type=int, default=40, help="measured ticks per N and scenario")
    ap.add_argument("--warmup", type=int, default=10, help="ticks before measuring")
    ap.add_argument("--scenarios", nargs="+", default=["steady", "turns"])
    ap.add_argument("--turn-frames", type=int, default=60, help="frames of a turn (turns)")
    ap.add_argument("--turn-text", type=int, default=16, help="text tokens of a turn (turns)")
    ap.add_argument("--steady-text", type=int, default=400, help="text tokens (steady)")
    ap.add_argument("--overlap", choices=("on", "off"), default="on", help="codec overlap")
    ap.add_argument("--channels", choices=("async", "sync"), default="async")
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the sessions are set up (full collections skip older objects)",
    )
    ap.add_argument("--gc-policy", action="store_true", help="the engine's GC policy (gc_policy)")
    ap.add_argument("--costs", default=str(COSTS), help="gpu_bench.sh folder (virtual clock)")
    ap.add_argument("--profile", type=int, nargs="*", default=[], help="cProfile at these N")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--device", choices=("cpu",), default="cpu", help="host work: CPU only")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()
    if args.steady_text <= args.warmup + args.ticks + 12:
        ap.error("--steady-text must outlast the ticks (the text must not run out)")
    torch.set_num_threads(1)  # the engine thread's own work; no OpenMP team beside it
    loop = Loop() if args.channels == "async" else None
    t0 = time.perf_counter()
    out = {
        "benchmark": "host_work",
        "what": "CPU time of the engine thread's own work per tick (thread_time), simulated "
        "device; not a GPU figure",
        "costs": str(args.costs),
        "overlap_codec": args.overlap == "on",
        "channels": args.channels,
        "gc_freeze": args.gc_freeze,
        "gc_policy": args.gc_policy,
        "ticks": args.ticks,
        "warmup": args.warmup,
        "turn_frames": args.turn_frames,
        "env": environment(torch.device("cpu")),
        "scenarios": {},
        "runner_inputs_ms": {},
        "profiles": {},
    }
    try:
        for scenario in args.scenarios:
            out["scenarios"][scenario] = [
                Bench(args, n, scenario, loop).measure() for n in args.sessions
            ]
        for n in args.sessions:
            out["runner_inputs_ms"][str(n)] = runner_inputs_ms(n, 20)
        for n in args.profile:
            out["profiles"][str(n)] = {
                s: profile(args, n, s, loop, args.profile_top) for s in args.scenarios
            }
    finally:
        if loop is not None:
            loop.close()
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    try:
        import os

        out["load_avg"] = os.getloadavg()
    except OSError:
        pass
    first = out["scenarios"][args.scenarios[0]]
    line = f"host work per tick ({args.scenarios[0]}, CPU ms, engine only): " + ", ".join(
        f"N={r['sessions']}: {r['engine_ms_mean']:.2f}" for r in first
    )
    emit(out, args.out, line)


if __name__ == "__main__":
    main()
