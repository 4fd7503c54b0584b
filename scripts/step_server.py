"""gpu_bench.sh's ``--one-interpreter`` mode: one interpreter imports torch and the package once,
then every step runs in a child process forked from it.

A step is still a process of its own (its state, its log, its time limit, its exit status, as
``timeout LIMIT python SCRIPT ARGS`` gives), only without paying the imports again (~4 s a step
on a CPU). Fork before CUDA is initialised only: the parent never touches the device, and
gpu_bench.sh uses this mode for the CPU dry run.

Requests come on stdin, each as NUL-terminated fields: the time limit in seconds (0: none), the
log file, the argument count, then the arguments after ``python`` (``SCRIPT ARGS`` or ``-m MODULE
ARGS``). The log gets stdout and stderr both; a log field ``OUT|ERR`` (``|`` is in no log path
here) sends stderr to a file of its own, as ``python ARGS >OUT 2>ERR`` does (tests/
test_benchmarks.py reads the JSON on stdout apart from the log). The reply, on stdout, is one
line per request: the step's exit status (124/137 when it ran past its limit, as ``timeout
--kill-after=15`` reports). ``ready`` is printed once the imports are done; EOF on stdin ends
the server.
"""

from __future__ import annotations

import atexit
import os
import runpy
import select
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KILL_AFTER_S = 15.0  # after SIGTERM at the limit, as gpu_bench.sh's `timeout --kill-after=15`


def preload() -> None:
    """What every step imports first: torch, the package's core, the benchmarks' shared code."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _common  # noqa: F401
        import _setup  # noqa: F401
        import torch
        import torch._dynamo  # noqa: F401 (most steps import it: ~2 s each)

        import moss_pipecat.codec.graphs
        import moss_pipecat.engine.engine
        import moss_pipecat.model.graphs  # noqa: F401
    finally:
        sys.path.pop(0)  # each step sets its own sys.path[0], as `python` does


def fields(fd: int) -> Iterator[str]:
    """NUL-terminated fields read from ``fd`` until EOF."""
    buf = b""
    while chunk := os.read(fd, 65536):
        buf += chunk
        *done, buf = buf.split(b"\0")
        yield from (f.decode() for f in done)


def run_child(log: str, argv: list[str]) -> None:
    """In the forked child: the step as ``python ARGV`` would run it, output into ``log``."""
    os.setsid()  # its own process group: a kill at the limit takes what it started too
    out_path, _, err_path = log.partition("|")
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if err_path else out
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in {out, err, null}:
        os.close(fd)
    rc = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, str(Path(argv[0]).resolve().parent))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            rc = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except BaseException:
        traceback.print_exc()
        rc = 1
    try:
        atexit._run_exitfuncs()  # what the interpreter runs when a `python` process ends
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def wait(pid: int, limit: float) -> int:
    """The child's exit status; past ``limit`` seconds (0: none) its group gets SIGTERM, and
    SIGKILL ``KILL_AFTER_S`` later: then 124 (ended after SIGTERM) or 137 (killed)."""
    rc = None
    if limit > 0:
        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], limit)[0]:
                rc = 124
                os.killpg(pid, signal.SIGTERM)
                if not select.select([pidfd], [], [], KILL_AFTER_S)[0]:
                    rc = 137
                    os.killpg(pid, signal.SIGKILL)
        finally:
            os.close(pidfd)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if rc is not None:
        return rc
    return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it


def serve() -> None:
    preload()
    os.write(1, b"ready\n")
    requests = fields(0)
    for limit in requests:
        log = next(requests)
        argv = [next(requests) for _ in range(int(next(requests)))]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(log, argv)
        os.write(1, f"{wait(pid, float(limit))}\n".encode())


if __name__ == "__main__":
    serve()
