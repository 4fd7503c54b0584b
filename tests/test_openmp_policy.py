"""OpenMP's wait policy: importing the package before torch (as ``moss-pipecat serve`` and the
servers the tests start do: any ``moss_pipecat.*`` import runs the package's ``__init__``
first) makes the OpenMP runtime's idle threads sleep instead of spin, and leaves a policy the
user chose as it is (why: docs/PERFORMANCE.md, "OpenMP's wait policy"). Read back from the
runtime itself (``OMP_DISPLAY_ENV``) in a fresh interpreter: it reads the policy once, as
torch loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(
    "OpenMP" not in torch.__config__.parallel_info(), reason="torch built without OpenMP"
)


def runtime_settings(code: str, **env: str) -> dict[str, str]:
    """The OpenMP runtime's settings as it reports them once ``code`` has loaded torch."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(re.findall(r"(\w+)\s*=\s*'([^']*)'", proc.stderr))


def test_importing_the_package_first_makes_idle_threads_sleep():
    settings = runtime_settings("import moss_pipecat, torch")
    assert settings["OMP_WAIT_POLICY"] == "PASSIVE"
    # libgomp reports PASSIVE when the policy is unset too; its spin count tells them apart
    # (unset: 300000 pause loops before a thread sleeps; PASSIVE: none).
    if "GOMP_SPINCOUNT" in settings:
        assert settings["GOMP_SPINCOUNT"] == "0"


def test_a_policy_the_user_set_is_kept():
    settings = runtime_settings("import moss_pipecat, torch", OMP_WAIT_POLICY="ACTIVE")
    assert settings["OMP_WAIT_POLICY"] == "ACTIVE"
    if "GOMP_SPINCOUNT" in settings:
        assert settings["GOMP_SPINCOUNT"] != "0"
