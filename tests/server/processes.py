"""Engine servers as child processes (``moss-pipecat serve --tiny``), for the tests that kill,
restart or SIGTERM them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from ..engine_rules import SPEAKS
from .conftest import free_port


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


def speaking_server(fixtures_dir, tmp_path) -> ServerProcess:
    """A ``ServerProcess`` whose replies end soon after their text (``SPEAKS``' rules)."""
    extra = ("--eos-min-frames", str(SPEAKS["eos_min_frames"]), "--eos-after-text")
    return ServerProcess(fixtures_dir, tmp_path / "server.log", extra=extra)


class ServerProcess:
    """One server's port on loopback, served by a child process (``serve_process``): started,
    killed with ``kill -9`` and started again on the same port (a new process each time, all
    logging to ``log_path``), and stopped (``stop_all``) when the ``async with`` ends.

    ``procs`` are the processes in the order they started; the last one serves the port.
    """

    def __init__(
        self,
        fixtures_dir,
        log_path,
        max_sessions: int = 2,
        extra: tuple[str, ...] = (),
        stop_wait_s: float = 10,
    ) -> None:
        self.fixtures_dir, self.log_path = fixtures_dir, log_path
        self.max_sessions, self.extra, self.stop_wait_s = max_sessions, extra, stop_wait_s
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"  # /readyz, /metrics
        self.procs: list[subprocess.Popen] = []
        self._log = None

    def spawn(self) -> subprocess.Popen:
        """A new process for the port, not waited for (``ready`` waits)."""
        if self._log is None:
            self._log = open(self.log_path, "ab")  # appended: servers may share a log
        proc = serve_process(self.fixtures_dir, self.port, self._log, self.max_sessions, self.extra)
        self.procs.append(proc)
        return proc

    async def ready(self) -> None:
        """Until the newest process answers ``/readyz``."""
        await wait_ready(self.port, self.procs[-1])

    async def start(self) -> None:
        self.spawn()
        await self.ready()

    def kill(self) -> None:
        """``kill -9`` of the serving process: it keeps nothing, drains nothing."""
        self.procs[-1].kill()
        self.procs[-1].wait(10)

    async def restart(self) -> None:
        """``kill -9``, then a new process on the same port, ready."""
        self.kill()
        await self.start()

    def stop(self) -> None:
        stop_all(self.procs, self.stop_wait_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> ServerProcess:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()
