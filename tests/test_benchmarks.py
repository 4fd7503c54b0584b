"""Every benchmark script runs end to end on the tiny fixtures and prints well-formed JSON.

Only shapes and sanity are checked (speed is never asserted): this keeps the scripts users
run on their GPUs from rotting as the code under them changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
STEP_SERVER = REPO / "scripts" / "step_server.py"


class Benchmarks:
    """Runs the benchmark scripts as ``python SCRIPT ARGS`` would, in ``benchmarks/``: each run
    is a process of its own (its state, stdout, stderr, exit status), forked from one
    interpreter that imported torch and the package once (``scripts/step_server.py``, as
    ``gpu_bench.sh --one-interpreter``), not a fresh ``python`` paying the imports each time."""

    LIMIT_S = 300

    def __init__(self, fixtures: Path, logs: Path) -> None:
        env = {**os.environ, "MOSS_FIXTURES": str(fixtures), "CUDA_VISIBLE_DEVICES": ""}
        self.logs = logs
        self.runs = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(STEP_SERVER)],
            cwd=BENCH,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout.readline() == b"ready\n", "the step server did not start"

    def run(self, script: str, *args: str) -> dict:
        self.runs += 1
        out, err = self.logs / f"{self.runs}.out", self.logs / f"{self.runs}.err"
        argv = (
            [script, "--device", "cpu", *args] if script != "bench_memory.py" else [script, *args]
        )
        fields = [str(self.LIMIT_S), f"{out}|{err}", str(len(argv)), *argv]
        self.proc.stdin.write(b"".join(f.encode() + b"\0" for f in fields))
        self.proc.stdin.flush()
        rc = self.proc.stdout.readline().decode().strip()
        stderr = err.read_text()
        assert rc == "0", f"{script}: exit status {rc!r}\n{stderr[-3000:]}"
        result = json.loads(out.read_text())
        assert stderr.strip().splitlines()[-1]  # the one-line summary
        return result

    def close(self) -> None:
        self.proc.stdin.close()  # EOF: the server ends
        self.proc.wait(30)


@pytest.fixture(scope="module")
def bench(fixtures_dir, tmp_path_factory):
    benchmarks = Benchmarks(fixtures_dir, tmp_path_factory.mktemp("bench_runs"))
    yield benchmarks.run
    benchmarks.close()


def test_model_step(bench):
    out = bench(
        "bench_model_step.py",
        "--batch",
        "1",
        "3",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--context",
        "16",
    )
    assert [(r["mode"], r["batch"]) for r in out["results"]] == [
        ("eager", 1),
        ("eager", 3),
        ("graphed", 1),
        ("graphed", 3),
    ]
    assert all(r["median_ms"] > 0 for r in out["results"])
    # a GPU figure only where a GPU measured it
    assert [r.get("gpu_kernels_per_replay", 0) for r in out["results"]] == [0, 0, None, None]


def test_codec_decode(bench):
    out = bench("bench_codec_decode.py", "--batch", "1", "2", "--frames", "2")
    assert {(r["mode"], r["batch"]) for r in out["results"]} == {
        ("eager", 1),
        ("eager", 2),
        ("graphed", 1),
        ("graphed", 2),
    }
    assert all(r["state_mib_per_stream"] > 0 for r in out["results"])
    assert all(r.get("gpu_kernels_per_replay") is None for r in out["results"])


@pytest.mark.parametrize("graphed, fused", [("off", "off"), ("on", "off"), ("on", "on")])
def test_engine(bench, tmp_path, graphed, fused):
    out = bench(
        "bench_engine.py",
        "--sessions",
        "1",
        "2",
        "--frames",
        "6",
        "--graphed",
        graphed,
        "--fused",
        fused,
        "--kernel-cache-dir",
        str(tmp_path),
    )
    assert out["graphed_decode"] == (graphed == "on") and out["fused"] == (fused == "on")
    assert [r["sessions"] for r in out["results"]] == [1, 2]
    assert all(0 < r["frames_total"] <= r["sessions"] * 6 for r in out["results"])
    for r in out["results"]:
        assert_host_pauses(r)
    start = out["start_up"]  # what preparing the graphs cost, by phase
    if graphed == "off":
        assert start is None
        return
    assert set(start["phases"]) == {"decode", "prefill", "first_frame", "codec"}
    assert all(p["reserved_mib"] is None for p in start["phases"].values())  # no GPU here
    assert start["kernel_cache"]["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert start["kernel_cache_entries_added"] == 0  # the interpreter compiles nothing


def assert_host_pauses(r: dict) -> None:
    """A round's ``HostPauses`` fields: its ticks timed, GC collections by generation."""
    assert r["ticks_timed"] > 0
    assert 0 < r["tick_ms_p50"] <= r["tick_ms_p99"] <= r["tick_ms_max"]
    assert len(r["gc_collections"]) == len(r["gc_max_ms"]) == 3
    assert all(n >= 0 for n in r["gc_collections"])
    assert r["gc_full_collections"] == r["gc_collections"][2]
    assert r["gc_full_max_ms"] == r["gc_max_ms"][2]
    assert r["gc_ms_total"] >= max(r["gc_max_ms"])


def test_capacity(bench):
    def capacity(gap_ms: str) -> dict:
        args = ("--max-sessions", "3", "--frames", "4", "--gap-ms", gap_ms)
        return bench("bench_capacity.py", *args)

    # A generous gap limit: the search must grow to the cap and say so.
    out = capacity("100000")
    assert [p["sessions"] for p in out["probes"]] == [1, 2, 3]
    assert out["capacity_sessions"] == 3 and out["capped_by_max_sessions"]
    for p in out["probes"]:
        assert_host_pauses(p)
    # An impossible limit: nothing passes.
    out = capacity("0")
    assert out["capacity_sessions"] == 0 and out["at_capacity"] is None


def test_capacity_simulated(bench):
    # The repository's H200 cost table, tiny searches: seconds on a CPU, no model weights.
    h200 = BENCH / "results" / "h200-2026-11-26"
    args = ("--simulate", str(h200), "--frames", "6", "--max-sessions", "2", "--ramp-s", "1")
    args += ("--measure-s", "2", "--burst-running", "2", "--burst-calls", "2")
    out = bench("bench_capacity.py", *args, "--burst-watch-s", "1")
    assert out["simulated"] is True and "h200-2026-11-26" in out["costs"]
    assert list(out["settings"]) == ["before", "budget", "budget_overlap"]
    for r in out["settings"].values():
        for case in ("traffic", "all_at_once"):
            assert 0 <= r[case]["capacity_calls"] <= 2
            assert r[case]["probes"][0]["calls"] == 1
        assert r["traffic"]["probes"][0]["admitted"] == 1
        b = r["burst"]
        assert b["running"] == 2 and b["burst_admitted"] + b["burst_refused"] == 2


def test_host_work(bench):
    # The real scheduler on a simulated device (no weights): the engine's own CPU time per
    # tick, by phase, with the simulated runner's work apart.
    args = ("--sessions", "1", "3", "--ticks", "3", "--warmup", "2", "--steady-text", "30")
    out = bench("bench_host_work.py", *args, "--turn-frames", "2", "--profile", "3")
    assert out["gc_policy"] is False and out["gc_freeze"] is False
    assert list(out["scenarios"]) == ["steady", "turns"]
    for rows in out["scenarios"].values():
        assert [r["sessions"] for r in rows] == [1, 3]
        for r in rows:
            assert r["engine_ms_mean"] > 0 and r["sim_runner_ms_mean"] > 0
            assert "sim_runner" in r["phases_ms_per_tick"] and "decode" in r["phases_ms_per_tick"]
            assert r["frames"] > 0
    assert all(r["all_decoding"] for r in out["scenarios"]["steady"])
    assert all(r["turn_starts_per_tick"] == 0 for r in out["scenarios"]["steady"])
    assert out["scenarios"]["turns"][1]["turn_starts_per_tick"] > 0  # turns end and start
    assert "turn_start" in out["scenarios"]["turns"][1]["phases_ms_per_tick"]
    assert set(out["runner_inputs_ms"]) == {"1", "3"}
    assert out["profiles"]["3"]["steady"]["by_cumulative"]


def test_host_work_gc_objects(bench):
    # What the sessions add for the garbage collector to walk: counted by type, per session.
    args = ("--sessions", "2", "--ticks", "4", "--warmup", "1", "--turn-frames", "2")
    out = bench("bench_gc_objects.py", *args)
    (r,) = out["results"]
    assert r["sessions"] == 2 and r["turns_per_session_mean"] > 1  # turns ended and started
    assert r["objects"] > r["base_objects"] and r["per_session"] > 0
    assert r["full_ms"] > 0


def test_prefill(bench):
    out = bench(
        "bench_prefill.py",
        "--history",
        "0",
        "40",
        "--turn-rows",
        "5",
        "--iters",
        "2",
        "--warmup",
        "1",
    )
    assert [(r["history"], r["turn_rows"]) for r in out["results"]] == [(0, 5), (40, 5)]
    assert all(r["codec_frame_ms"] > 0 and r["ttfa_ms"] > 0 for r in out["results"])
    # The TTFA parts run the engine's graphed steps (the prefill chunk in its bucket).
    assert out["graphed"] and all(r["prefill_path"] == "graphed" for r in out["results"])


def test_prefix_cache(bench):
    out = bench("bench_prefix_cache.py", "--iters", "2", "--warmup", "1")
    modes = {r["mode"]: r for r in out["results"]}
    assert list(modes) == ["off", "miss", "hit"]
    assert out["voice_frames"] == 125 and out["prefix_rows"] > 125
    # A hit prefills only the turn's rows; without the cache (or on a miss) the prefix too.
    assert modes["hit"]["prefill_rows_per_conversation"] == out["turn_rows"]
    for mode in ("off", "miss"):
        rows = modes[mode]["prefill_rows_per_conversation"]
        assert rows == out["prefix_rows"] + out["turn_rows"]
    assert modes["hit"]["prefix_hits"] == 2 and modes["miss"]["prefix_misses"] == 2
    assert modes["hit"]["prefix_misses"] == modes["miss"]["prefix_hits"] == 0
    assert modes["off"]["prefix_hits"] == modes["off"]["prefix_misses"] == 0
    assert all(r["ttfa_ms_p50"] > 0 and r["prefill_ms_p50"] > 0 for r in out["results"])


def test_memory(bench):
    out = bench("bench_memory.py", "--real-size")
    assert out["kv_bytes_per_position"] == 112 * 1024


def test_launches(bench):
    out = bench("bench_launches.py", "--sessions", "1", "2", "--ticks", "2")
    assert [r["sessions"] for r in out["results"]] == [1, 2]
    kernels = out["kernels"]  # inside the graphs: real size, bf16, on meta
    assert kernels["dtype"] == "bfloat16" and kernels["device"] == "meta"
    for step in ("decode_step", "decode_step_fused", "codec_frame", "codec_frame_fused"):
        assert kernels[step]["kernels"] == sum(kernels[step]["by_op"].values()) > 0
    assert kernels["decode_step_fused"]["kernels"] <= kernels["decode_step"]["kernels"]
    assert kernels["codec_frame_fused"]["kernels"] <= kernels["codec_frame"]["kernels"]
    for r in out["results"]:
        tick = r["decode_tick"]
        assert tick["per_tick_outside"] and tick["outside"] > 0 and tick["inside_graph"] > 0
        assert {"decode", "deliver", "codec"} <= set(tick["by_phase"])
        assert {"prefill", "first_frame", "decode", "codec"} <= set(r["first_tick"])
        assert r["prefill_chunk"]["graph_calls"] == 1  # the turns' prefill replays a bucket


def test_restore(bench):
    out = bench("bench_restore.py", "--minutes", "0.2", "--repeats", "1")
    assert out["reconnects_restored"] == {"restored": 1, "history_lost": 0}
    assert out["reconnects_no_journal"] == {"restored": 0, "history_lost": 1}
    journal = out["journal"]
    assert journal["turns"] == 2 and journal["bytes_in_memory_per_minute"] > 0
    assert journal["wire_bytes_per_minute"] > journal["bytes_in_memory_per_minute"]
    for key in ("restored", "no_journal"):
        assert out[f"reachable_to_first_audio_ms_{key}"]["median"] > 0
    delta, full = out["resume"]["delta"], out["resume"]["full"]  # (kinds checked in the run)
    assert 0 < delta["history_wire_bytes_median"] < full["history_wire_bytes_median"]


def test_openmp_wait(bench):
    # PASSIVE only: under libgomp's default policy each child's idle OpenMP threads spin, by
    # design of what this benchmark shows (~3x the CPU of a PASSIVE child, taken from the
    # suite's other workers).
    args = ("--rows", "300", "--repeats", "1", "--cases", "main", "thread")
    out = bench("bench_openmp_wait.py", *args, "--policies", "PASSIVE")
    cases = [(r["case"], r["policy"]) for r in out["results"]]
    assert cases == [("main", "PASSIVE"), ("thread", "PASSIVE")]
    for r in out["results"]:
        (run,) = r["runs"]
        assert run["cpu_s"] > 0 and run["wall_s"] > 0
        if r["case"] == "thread":  # the prefill's own thread beside the main one
            assert run["os_threads"] >= 2
