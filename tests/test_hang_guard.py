"""A hung test fails with its traceback and the session goes on, rather than holding CI to its
limit: pytest-timeout with pyproject's settings (``timeout``, ``timeout_method``)."""

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


def test_every_test_has_a_time_limit(request):
    assert request.config.pluginmanager.hasplugin("timeout")
    assert 60 <= float(request.config.getini("timeout")) <= 600
    assert request.config.getini("timeout_method") == "signal"


def test_a_hung_test_fails_where_it_waits_and_the_next_one_runs(tmp_path):
    (tmp_path / "test_hangs.py").write_text(HANGS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=2"]
    run = subprocess.run(
        [*cmd, str(tmp_path / "test_hangs.py")], capture_output=True, text=True, timeout=120
    )
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "Timeout (>2.0s)" in out and "threading.Event().wait()" in out, out
    assert "1 failed, 1 passed" in out, out
