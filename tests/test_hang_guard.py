"""A hung test fails with its traceback and the session goes on, rather than holding CI to its
limit: pytest-timeout with pyproject's settings (``timeout``, ``timeout_method``), and
``tests/teardown_limit.py`` for the teardown after a test whose limit fired."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HANGS = """
import threading


def test_waits_for_nothing():
    threading.Event().wait()  # no bound: what a lost frame or socket looks like


def test_after_it():
    pass
"""


# A module's last test times out leaving a task that outlives every cancel (as a pipecat
# pipeline does once its processors are cancelled before its CancelFrame got through): closing
# the module's event loop waits for that task, in a teardown pytest-timeout no longer times.
HANGS_IN_TEARDOWN = """
import asyncio

import pytest


async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


@pytest.mark.asyncio(loop_scope="module")
async def test_leaves_a_task_that_never_ends():
    asyncio.get_running_loop().create_task(stubborn())
    await asyncio.Event().wait()
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_every_test_has_a_time_limit(request):
    assert request.config.pluginmanager.hasplugin("timeout")
    assert 60 <= float(request.config.getini("timeout")) <= 600
    assert request.config.getini("timeout_method") == "signal"


def test_a_hung_test_fails_where_it_waits_and_the_next_one_runs(tmp_path):
    (tmp_path / "test_hangs.py").write_text(HANGS)
    run = _pytest(tmp_path, "-o", "timeout=2", str(tmp_path / "test_hangs.py"))
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "Timeout (>2.0s)" in out and "threading.Event().wait()" in out, out
    assert "1 failed, 1 passed" in out, out


def test_a_teardown_hung_after_its_test_timed_out_fails_and_the_next_module_runs(tmp_path):
    (tmp_path / "conftest.py").write_text("pytest_plugins = ['tests.teardown_limit']\n")
    (tmp_path / "test_a_hangs.py").write_text(HANGS_IN_TEARDOWN)
    (tmp_path / "test_b_after.py").write_text("def test_after_it():\n    pass\n")
    run = _pytest(tmp_path, "-o", "timeout=2", "-o", "teardown_timeout=2", str(tmp_path))
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "Timeout (>2.0s)" in out, out
    assert "teardown still running after 2 s" in out, out
    assert "1 failed, 1 passed, 1 error" in out, out


def test_the_suite_limits_a_teardown_after_a_timeout(request):
    assert request.config.pluginmanager.has_plugin("tests.teardown_limit")
    assert 60 <= float(request.config.getini("teardown_timeout")) <= 600
