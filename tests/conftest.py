"""Shared pytest fixtures: where the conformance fixtures live.

The root is ``$MOSS_FIXTURES`` or ``../shared/fixtures/moss_tiny`` beside the repository, so the
same parity tests run against any fixture set with the same layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moss_pipecat.engine import gc_policy
from moss_pipecat.engine.factory import tiny_fixtures_dir

REPO = Path(__file__).resolve().parent.parent

# A teardown left without a time limit by its test's own (pytest-timeout times a test once).
pytest_plugins = ["tests.teardown_limit"]

# Without a GPU the fused ops' Triton kernels run in Triton's interpreter. triton.jit reads this
# when a kernel is defined, so it must be set before any test imports model.triton_kernels
# (the engine registers them as soon as one is built with triton installed).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# ---- running in parallel (pytest-xdist, as scripts/test.sh does) ------------------------------

# Work units for the workers: a test module is one unit (its module fixtures, engines and
# servers, are built once); the agent tests, which play audio in real time through bot
# processes, are one unit together, so no two of them compete for the CPU with each other.
REALTIME_UNIT = "tests/agents/"
# The Ray Serve modules are one unit too: one worker, one local Ray cluster and one app for
# both (tests/server/conftest.py's ray_cluster, ray_moss_app) rather than two clusters
# competing for the cores. In this order: test_ray runs on the app's first two replicas, before
# test_drain_ray kills one and redeploys (every replica start costs tens of seconds).
RAY_UNIT = "tests/server/ray"
RAY_MODULES = ("tests/server/test_ray.py", "tests/server/test_drain_ray.py")
# Units known to take the longest start first, so none of them begins last and runs alone while
# the other workers are idle (a longest-first schedule: the run ends on short units). The
# real-time unit leads (its bots want the CPU: see BATCH_NICENESS), then the Ray unit, which
# mostly waits for replica processes and so overlaps the compute-bound units best. The rest by
# wall time, longest first, as measured per unit in a whole run on 2 cores (each beside three
# others: a timeline of every test's start and end): the fixture-set unit (~225 s: two pytest
# runs in subprocesses), then 120 s down to ~15 s; shorter units follow in file order. Before,
# the fixture-set unit and test_trailing_marks (68 s, most of it real-time playback) started
# last and the run ended on them alone (~60 s of idle cores).
LONGEST_FIRST = (
    REALTIME_UNIT,
    RAY_UNIT,
    "tests/test_fixture_sets.py",
    "tests/test_minimal_env.py",
    "tests/service/test_world_replies.py",
    "tests/service/test_barge_in.py",
    "tests/engine/test_prefix_cache.py",
    "tests/engine/test_sessions.py",
    "tests/service/test_trailing_marks.py",
    "tests/service/test_pipecat_contract.py",
    "tests/server/test_random_faults.py",
    "tests/server/test_contract_surface.py",
    "tests/engine/test_random_interleavings.py",
    "tests/service/test_context_race.py",
    "tests/server/test_parity.py",
    "tests/server/test_remote_cjk.py",
    "tests/server/test_remote_back_to_back.py",
    "tests/service/test_back_to_back.py",
    "tests/model/test_graphs.py",
    "tests/engine/test_seeded_sampling.py",
    "tests/server/test_faults.py",
    "tests/server/test_contract_both_services.py",
    "tests/service/test_random_conversations.py",
    "tests/test_benchmarks.py",
    "tests/service/test_cjk_replies.py",
    "tests/model/test_fused_triton.py",
    "tests/service/test_moss_tts_service.py",
    "tests/server/test_inflight_cut.py",
    "tests/server/test_random_kills.py",
    "tests/server/test_drain.py",
    "tests/server/test_cut_unreachable.py",
    "tests/server/test_remote_word_order.py",
    "tests/server/test_restore_service.py",
    "tests/engine/test_stand_in_rules.py",
    "tests/server/test_restore_inflight.py",
    "tests/engine/test_kv_pools.py",
    "tests/server/test_random_partitions.py",
    "tests/model/test_capturable.py",
    "tests/engine/test_text.py",
    "tests/test_wheel.py",
    "tests/server/test_stale_copy.py",
    "tests/codec/test_codec_triton.py",
    "tests/server/test_random_blips.py",
    "tests/server/test_remote_service.py",
    "tests/service/test_written.py",
    "tests/model/test_kernel_compile.py",
)


def work_unit(nodeid: str) -> str:
    """The unit a test is scheduled with: its module, the real-time unit or the Ray unit."""
    if nodeid.startswith(REALTIME_UNIT):
        return REALTIME_UNIT
    module = nodeid.split("::", 1)[0]
    return RAY_UNIT if module in RAY_MODULES else module


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> tuple[int, int]:
        unit = work_unit(item.nodeid)
        first = LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)
        module = item.nodeid.split("::", 1)[0]
        return first, RAY_MODULES.index(module) if module in RAY_MODULES else 0

    items.sort(key=rank)  # stable: the order inside a unit is kept


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown without xdist
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep LONGEST_FIRST (xdist sorts by test count)
    return ByWorkUnit(config, log)


# What a work unit set up for itself alone ends with the unit, not with the session: the Ray
# cluster's daemons poll at ~15 % of a core while idle (8.7 s of CPU a minute, measured), so
# kept to the end of the session they took ~1 min of CPU from the units after them.
_UNIT_ENDS: dict[str, list] = {}


def end_with_unit(unit: str, stop) -> None:
    """Runs ``stop()`` once the last test of ``unit`` in this process is torn down (the
    session fixture that registered it still calls it at the session's end: ``stop`` must be
    idempotent). Stops run in the reverse order of registration, as fixture teardowns do."""
    _UNIT_ENDS.setdefault(unit, []).append(stop)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the item's own fixtures first
    unit = work_unit(item.nodeid)
    if nextitem is None or work_unit(nextitem.nodeid) != unit:
        for stop in reversed(_UNIT_ENDS.pop(unit, [])):
            stop()


# The real-time unit is handed out first. A worker yields the CPU (a higher nice value, for it
# and the processes it starts) once it runs anything else, so audio played in real time through
# bot processes keeps its pace beside the compute-bound tests (a starved bot misses VAD, STT and
# TTFA deadlines that a real deployment, where the call has the CPU, would meet).
BATCH_NICENESS = 10
_yielded_cpu = False


def pytest_runtest_setup(item) -> None:
    global _yielded_cpu
    if _yielded_cpu or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if work_unit(item.nodeid) != REALTIME_UNIT:
        os.nice(BATCH_NICENESS)
        _yielded_cpu = True


# One torch thread per test process: xdist workers share the cores, and the tiny models gain
# nothing from more. In one process (`-n 0`) it also avoids libgomp's spinning team, which this
# file cannot stop with OMP_WAIT_POLICY (torch is loaded before it runs): 62 s -> 6 s of CPU
# for the attention/parity/exact-call modules (docs/PERFORMANCE.md, "OpenMP's wait policy").
torch.set_num_threads(1)
# The same for the processes the tests start (servers, bots, examples, benchmark steps), which
# read it as torch loads: a second intra-op thread made the tiny engine's frame cost ~35 % more
# CPU, and more wall time too (28 -> 38 ms a frame on 2 cores, OMP_WAIT_POLICY passive), while
# the other workers wanted the cores. A value set for the run is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def engine_gc_policy_for_the_session():
    """The engines' GC policy (``engine.gc_policy``) held for the test process's whole session,
    as a server that keeps an engine holds it. Tests start and stop engines by the hundred:
    without this, each first start after a last shutdown collects everything the process
    tracks (the policy's full collection before its freeze), ~20 % of the CPU of the modules
    that make an engine per test (py-spy of the contract modules). The policy itself, first
    start and last shutdown included: tests/engine/test_gc_policy.py, in a fresh interpreter."""
    gc_policy.engine_started()
    yield
    gc_policy.engine_stopped()


def fixtures_root() -> Path:
    root = tiny_fixtures_dir().resolve()
    if not (root / "realtime").is_dir() or not (root / "codec").is_dir():
        pytest.fail(f"fixture root {root} lacks realtime/ and codec/ (set MOSS_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return fixtures_root()


@pytest.fixture(scope="session")
def realtime_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "realtime"


@pytest.fixture(scope="session")
def codec_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "codec"


@pytest.fixture(scope="session")
def realtime_golden(realtime_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(realtime_dir / "golden.safetensors")


@pytest.fixture(scope="session")
def realtime_meta(realtime_dir: Path) -> dict:
    return json.loads((realtime_dir / "golden.json").read_text())


@pytest.fixture(scope="session")
def codec_golden(codec_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(codec_dir / "golden.safetensors")


@pytest.fixture(scope="session")
def codec_meta(codec_dir: Path) -> dict:
    return json.loads((codec_dir / "golden.json").read_text())


@pytest.fixture(scope="session")
def codec_rate(codec_dir: Path) -> int:
    """The fixture codec's sample rate: a pipeline at it resamples nothing."""
    return int(json.loads((codec_dir / "config.json").read_text())["sampling_rate"])


@pytest.fixture(scope="session")
def make_fixture_set(tmp_path_factory):
    """Factory: ``make_fixture_set(FixtureSpec(...)) -> Path`` writes a conforming fixture set
    (``moss_pipecat.testing.fixtures``: other seeds, shapes, ids, voice or not, EOS points) once
    per spec and session, for tests that check the suite against sets other than the default."""
    from moss_pipecat.testing import make_fixture_set as make

    made: dict[str, Path] = {}

    def factory(spec) -> Path:
        key = repr(spec)
        if key not in made:
            out = tmp_path_factory.mktemp(f"fixtures_seed{spec.seed}")
            make(spec, out)
            made[key] = out
        return made[key]

    return factory


@pytest.fixture(scope="session")
def long_rows(realtime_golden) -> torch.Tensor:
    """[N >= 128, 17] real conversation rows: the set's ``session.rows``, repeated as often as
    needed (a set's conversation may be shorter than the lengths a test slices)."""
    rows = realtime_golden["session.rows"]
    return rows.repeat(-(-128 // rows.shape[0]), 1)


@pytest.fixture(scope="session")
def voice_codes(realtime_golden, realtime_meta) -> torch.Tensor:
    """A reference voice [R, rvq] for tests that need one: the set's golden voice prompt, or,
    in a set without one (``conversation.ref_frames`` 0), seeded random codes of its codebooks."""
    if "session.ref_codes" in realtime_golden:
        return realtime_golden["session.ref_codes"]
    audio = realtime_meta["audio"]
    shape = (5, audio["channels"])
    return torch.randint(0, audio["audio_pad"], shape, generator=torch.Generator().manual_seed(1))


# ---- engine fixtures (tiny model, id-level text) ---------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(realtime_dir):
    from moss_pipecat.model import MossTTSRealtime

    return MossTTSRealtime.from_pretrained(realtime_dir)


@pytest.fixture(scope="session")
def tiny_codec(codec_dir):
    from moss_pipecat.codec import MossAudioCodec

    return MossAudioCodec.from_pretrained(codec_dir)


@pytest.fixture(scope="session")
def golden_layout(realtime_meta):
    from moss_pipecat.engine.text import layout_from_golden

    return layout_from_golden(realtime_meta)


@pytest.fixture
def make_engine(tiny_model, realtime_meta):
    """Factory for started engines on the tiny model; every engine is shut down after the test."""
    from moss_pipecat.engine.config import EngineConfig
    from moss_pipecat.engine.factory import tiny_engine

    engines = []

    def make(codec=None, tokenizer=None, text_id_map=None, **config):
        config.setdefault("lookahead_s", None)
        config.setdefault("max_context", 1024)
        config.setdefault("context_budget", 900)
        config.setdefault("turn_reserve", 100)
        engine = tiny_engine(
            tiny_model,
            realtime_meta,
            codec=codec,
            config=EngineConfig(**config),
            tokenizer=tokenizer,
            text_id_map=text_id_map,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()
