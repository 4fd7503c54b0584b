"""Runs ``python -m agents.bot`` as a subprocess on loopback for the transport tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs the agent with aioice's host-address discovery limited to 127.0.0.1 (it skips loopback
# by default), in the test's bot process only: WebRTC media stays on loopback.
LAUNCHER = """
import runpy, aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
runpy.run_module("agents.bot", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_bot(args: list[str], log: Path, fixtures: Path, start_timeout_s: float = 120):
    """Starts the offline agent on 127.0.0.1 (a free port); yields its base URL; stops it."""
    port = free_port()
    env = {
        **os.environ,
        "MOSS_AGENT_PROFILE": "offline",
        "MOSS_FIXTURES": str(fixtures),
        "LLM_MAX_TOKENS": "16",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-c", LAUNCHER, *args, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/moss/info", proc, log, start_timeout_s)
        yield url
    finally:
        stop(proc)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the bot exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the bot did not serve {url} within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT (uvicorn shuts down cleanly), then SIGKILL after a grace period."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
