"""Engine servers as child processes (``moss-pipecat serve --tiny``), for the tests that kill,
restart or SIGTERM them, and the small turn helper they share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def serve_process(
    fixtures_dir, port: int, log, max_sessions: int = 2, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    """A paced tiny server whose turns run to their max_frames, wherever EOS would be."""
    cmd = [sys.executable, "-m", "moss_pipecat.cli", "serve", "--tiny", str(fixtures_dir)]
    cmd += ["--port", str(port), "--lookahead", "0.5", "--max-sessions", str(max_sessions)]
    cmd += ["--eos-min-frames", "80", *extra]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def http_get(url: str) -> tuple[int, str]:
    """Status and body, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    # A hang guard, not a timing check: a server process starting on a loaded box (parallel
    # test workers, niced) takes tens of seconds to import and load.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server process died"
        try:
            status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail("the server did not become ready")


def stop_all(procs: list[subprocess.Popen], wait_s: float) -> None:
    """SIGTERM (a drain) for each process still running; SIGKILL past ``wait_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(wait_s)
            except subprocess.TimeoutExpired:
                p.kill()


async def read_chunks(turn, n: int) -> list:
    """The turn's first ``n`` chunks (fewer if it ends first), leaving the rest unread."""
    chunks = []
    async for chunk in turn:
        chunks.append(chunk)
        if len(chunks) == n:
            break
    return chunks
