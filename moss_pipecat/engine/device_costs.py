"""What each device call costs on a measured GPU: a cost table read from ``gpu_bench.sh``.

Two users: ``EngineConfig.cost_table`` seeds a real engine's cost model with it (so a fresh
engine paces and admits from its first tick instead of admitting everyone until it has
learned), and the simulated device (``moss_pipecat.testing.simulated_device``) advances its
virtual clock by it.

``DeviceCosts`` holds, per call kind, (size, seconds) points (size: the batch of a decode step,
first frame or codec call; the rows of a prefill call) and interpolates linearly between them
(past the last point: along the last two points' slope). ``from_gpu_bench`` reads the JSON
that ``scripts/gpu_bench.sh`` writes (one folder per run, e.g.
``benchmarks/results/h200-2026-11-26``); ``load`` takes that folder or a table saved with
``save``.

How the table comes from the benchmarks (each a median on the GPU):

* decode: ``step.json``, the graphed decode step by batch.
* codec: ``codec.json``, the graphed one-frame streaming decode by batch.
  With ``fused``: ``step_fused.json`` and ``codec_fused.json`` (the same benchmarks through the
  fused ops), where the run has them; the one-session TTFA then from ``engine_fused.json``
  where it has that. A run with only one of the two (plain or fused) gives it either way; one
  lacking a benchmark is refused, naming it (``RUN_NEEDS``).
* first_frame: not measured on its own; taken as the decode step of the same batch (a first
  frame runs the local transformer and sampling, a decode step that plus one backbone row, so
  this is an upper bound).
* prefill: a fixed cost per call plus a cost per row. Per row: the slope of ``prefill.json``
  (one session, 20 vs 80 turn rows at each history length; median of the non-negative slopes).
  Fixed: what the engine's one-session turn start (``capacity.json`` probe of 1 session, else
  ``engine.json``) leaves after its decode and codec calls, less its rows.
"""

from __future__ import annotations

import bisect
import json
import statistics
from pathlib import Path

from moss_pipecat.engine.costs import CostModel

KINDS = ("prefill", "first_frame", "decode", "codec")
# Rows a benchmark turn prefills after the warm-up round: header (3) + 12 text rows (the
# system block's 5 rows come from the prefix cache).
BENCH_TURN_ROWS = 15
# The gpu_bench.sh steps (each writes NAME.json) a cost table reads: one of each group, the
# fused figures where the run has them. ``scripts/gpu_bench.sh`` adds a missing group's first
# step ahead of a traffic step that reads the table (``--only``), so it lists them too.
RUN_NEEDS = (
    ("step", "step_fused"),
    ("codec", "codec_fused"),
    ("prefill",),
    ("engine", "engine_fused", "capacity"),
)


class DeviceCosts:
    """Seconds per call kind as piecewise-linear functions of size."""

    def __init__(self, points: dict[str, list[tuple[float, float]]], source: str = "") -> None:
        missing = [k for k in KINDS if not points.get(k)]
        if missing:
            raise ValueError(f"cost table lacks {missing}")
        self.points = {k: sorted((float(s), float(c)) for s, c in v) for k, v in points.items()}
        self.source = source

    def cost(self, kind: str, size: int) -> float:
        """Seconds a call of ``kind`` over ``size`` items takes (0 for an empty call)."""
        if size <= 0:
            return 0.0
        pts = self.points[kind]
        sizes = [s for s, _ in pts]
        i = bisect.bisect_left(sizes, size)
        if len(pts) == 1:
            return pts[0][1] * max(1.0, size / pts[0][0])
        if i == 0:
            return pts[0][1]
        lo, hi = (pts[-2], pts[-1]) if i == len(pts) else (pts[i - 1], pts[i])
        return lo[1] + (hi[1] - lo[1]) * (size - lo[0]) / (hi[0] - lo[0])

    def prime(self, model: CostModel) -> None:
        """Gives an engine's cost model this table (``CostModel.prime``), so it paces and
        admits from its first tick; its own measurements take over where it has run, and
        scale the table where it has not."""
        for kind, points in self.points.items():
            model.prime(kind, points)

    # ---- files ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, fused: bool = False) -> DeviceCosts:
        """A ``gpu_bench.sh`` output folder (``fused``: its fused step and codec figures where
        it has them), or a table written by ``save`` (as saved)."""
        path = Path(path)
        if path.is_dir():
            return cls.from_gpu_bench(path, fused)
        d = json.loads(path.read_text())
        return cls({k: [tuple(p) for p in v] for k, v in d["points"].items()}, d.get("source", ""))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"source": self.source, "points": self.points}, indent=1))

    @classmethod
    def from_gpu_bench(cls, folder: str | Path, fused: bool = False) -> DeviceCosts:
        """The cost table of one ``scripts/gpu_bench.sh`` run (see the module docstring)."""
        folder = Path(folder)
        lacking = [
            " or ".join(f"{n}.json" for n in group)
            for group in RUN_NEEDS
            if not any((folder / f"{n}.json").exists() for n in group)
        ]
        if lacking:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(lacking)}: a cost table needs the gpu_bench.sh "
                "steps of the same names in the same run (its --out)"
            )
        step_run = _run_of(folder, RUN_NEEDS[0], fused)
        codec_run = _run_of(folder, RUN_NEEDS[1], fused)

        def results(name: str) -> list[dict]:
            return json.loads((folder / f"{name}.json").read_text())["results"]

        def graphed(name: str) -> list[tuple[float, float]]:
            rows = [r for r in results(name) if r.get("mode") == "graphed"]
            return [(r["batch"], r["median_ms"] / 1e3) for r in rows]

        decode, codec = graphed(step_run), graphed(codec_run)
        table = cls({"decode": decode, "codec": codec, "first_frame": decode, "prefill": [(1, 0)]})
        by_history: dict[int, dict[int, float]] = {}
        for r in results("prefill"):
            by_history.setdefault(r["history"], {})[r["turn_rows"]] = r["prefill_ms"] / 1e3
        slopes = []
        for rows in by_history.values():
            (r0, c0), (r1, c1) = sorted(rows.items())[0], sorted(rows.items())[-1]
            if r1 > r0 and c1 >= c0:
                slopes.append((c1 - c0) / (r1 - r0))
        per_row = statistics.median(slopes) if slopes else 0.0
        one = _one_session_ttfa(folder, fused=step_run == "step_fused")
        fixed = one - table.cost("decode", 1) - table.cost("codec", 1) - BENCH_TURN_ROWS * per_row
        fixed = max(fixed, 0.0)
        table.points["prefill"] = [(1, fixed + per_row), (10_000, fixed + 10_000 * per_row)]
        gpu = json.loads((folder / f"{step_run}.json").read_text()).get("env", {}).get("gpu", "?")
        table.source = f"{folder.name} ({gpu}; {step_run}, {codec_run}), scripts/gpu_bench.sh"
        return table


def _one_session_ttfa(folder: Path, fused: bool) -> float:
    """Seconds from a lone turn's text to its first audio, steady state (``fused``: from
    ``engine_fused.json`` where the run has it)."""
    cap = folder / "capacity.json"
    if cap.exists():
        for p in json.loads(cap.read_text())["probes"]:
            if p["sessions"] == 1:
                return p["ttfa_ms_p50"] / 1e3
    engine = _run_of(folder, ("engine", "engine_fused"), fused)
    rows = json.loads((folder / f"{engine}.json").read_text())["results"] if engine else []
    for r in rows:
        if r["sessions"] == 1:
            return r["ttfa_ms_p50"] / 1e3
    raise ValueError(f"{folder}: no one-session TTFA in capacity.json or engine.json")


def _run_of(folder: Path, group: tuple[str, ...], fused: bool) -> str | None:
    """Which of a group's runs (``RUN_NEEDS``) the table reads: the first the folder has, the
    fused ones first where ``fused``, else the plain ones."""
    order = sorted(group, key=lambda name: name.endswith("_fused") != fused)
    return next((name for name in order if (folder / f"{name}.json").exists()), None)
