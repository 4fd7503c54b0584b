"""A time limit on the teardown of a test whose own limit already fired (a pytest plugin;
``tests/conftest.py`` registers it).

pytest-timeout times each test once, setup, call and teardown together: when the call runs out
its time, the teardown after it has no limit. The teardown of a module's last test also closes
the module's event loop, and closing it cancels every task left and waits for them: a pipecat
pipeline left running by the timed-out call waits for its ``CancelFrame`` to reach the
pipeline's end, which the cancelled processors never pass on, so the session hung there until
CI's own limit (seen on a slow fixture set under load). With this, that teardown fails with
its traceback after ``teardown_timeout`` seconds (an ini option, default
``TEARDOWN_LIMIT_S``) and the run goes on. A test whose limit has not fired
keeps its own timer through its teardown (nothing here runs then).
"""

from __future__ import annotations

import signal
import threading

import pytest

# Enough for any teardown the suite has (stopping servers, the Ray cluster, engine threads).
TEARDOWN_LIMIT_S = 120.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "teardown_timeout",
        "seconds a teardown may run once its test's own time limit fired",
        default=str(TEARDOWN_LIMIT_S),
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    if (
        not item.config.pluginmanager.hasplugin("timeout")  # (the GPU box's pytest has none)
        or item.config.getini("timeout_method") != "signal"
        or threading.current_thread() is not threading.main_thread()
        or signal.getitimer(signal.ITIMER_REAL)[0] > 0  # the test's own timer still runs
    ):
        return (yield)

    limit = float(item.config.getini("teardown_timeout"))

    def hung(signum, frame):
        pytest.fail(
            f"teardown still running after {limit:g} s, once the test's own time limit had fired"
        )

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
