"""What starting an engine costs (``engine.start_up``): by phase, the buckets prepared, the
seconds, the device MiB (measured on CUDA only: None on a CPU), and the entries the kernel
caches gained; ``EngineConfig.kernel_cache_dir`` puts Triton's and inductor's caches in one
folder that outlives the process, so a second start finds its kernels there."""

from __future__ import annotations

import pytest

from moss_pipecat.engine.start_up import CACHE_ENV, cache_entries, kernel_cache_dirs

PHASES = {"decode", "prefill", "first_frame", "codec"}


@pytest.fixture(autouse=True)
def _environment_restored(monkeypatch, tiny_model, tiny_codec):
    for env in CACHE_ENV:  # whatever the test sets is undone after it
        monkeypatch.setenv(env, "")
    yield
    from moss_pipecat.model.kernels import use_fused

    for part in (tiny_model, tiny_codec):
        use_fused(part, False)


def test_the_kernel_cache_dir_holds_both_caches(make_engine, tmp_path):
    make_engine(graphed_decode=True, kernel_cache_dir=str(tmp_path / "kc"))
    dirs = kernel_cache_dirs()
    assert dirs == {env: tmp_path / "kc" / sub for env, sub in CACHE_ENV.items()}
    assert all(d.is_dir() for d in dirs.values())
    before = cache_entries()
    (dirs["TRITON_CACHE_DIR"] / "k").mkdir()
    (dirs["TRITON_CACHE_DIR"] / "k" / "kernel.json").write_text("{}")
    (dirs["TORCHINDUCTOR_CACHE_DIR"] / "graph").write_text("")
    assert cache_entries() == before + 2


def test_no_kernel_cache_dir_leaves_the_environment(make_engine):
    make_engine(graphed_decode=True)
    import os

    assert all(os.environ[env] == "" for env in CACHE_ENV)


@pytest.mark.parametrize("fused", [False, True])
def test_start_up_reports_each_phase_and_a_second_start_compiles_nothing(
    make_engine, tiny_codec, tmp_path, fused
):
    reports = []
    for _ in range(2):  # a second start, on the first one's caches
        engine = make_engine(
            codec=tiny_codec, graphed_decode=True, fused=fused, kernel_cache_dir=str(tmp_path)
        )
        assert engine.start_up is None  # nothing prepared yet
        n = engine.capture_graphs()
        reports.append(engine.start_up)
        engine.start()  # prepares nothing more: the report stays the capture's
        assert engine.capture_graphs() == n and engine.start_up is reports[-1]
        engine.shutdown()
    second = reports[1]
    for report in reports:
        assert set(report["phases"]) == PHASES
        assert sum(p["buckets"] for p in report["phases"].values()) == n
        for p in report["phases"].values():
            assert isinstance(p["buckets"], int) and p["buckets"] >= 1
            assert isinstance(p["seconds"], float) and p["seconds"] >= 0
            assert p["reserved_mib"] is None  # a CPU: no device memory figure is made up
        assert report["seconds"] == pytest.approx(
            sum(p["seconds"] for p in report["phases"].values())
        )
        assert report["kernel_cache"]["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
        assert isinstance(report["kernel_cache_entries_added"], int)
    assert second["kernel_cache_entries_added"] == 0
