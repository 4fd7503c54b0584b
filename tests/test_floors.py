"""pyproject's lower bounds: read once (``scripts/floors.py``, the constraints the floors run of
``scripts/check_floors.sh`` installs), and each one installable beside the pinned pipecat (a
floor below what pipecat-ai 1.14 itself requires is a promise pip cannot keep)."""

from __future__ import annotations

import importlib.util
import re
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("floors", REPO / "scripts" / "floors.py")
floors_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floors_module)


def test_floors_reads_each_bound_once_from_the_extras_users_install(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        """
[project]
name = "moss-pipecat"
dependencies = ["pipecat-ai>=1.14,<1.15", "Web_Sockets>=13.1", "numpy>=1.26", "loguru"]
[project.optional-dependencies]
dev = ["pytest>=8", "moss-pipecat[engine]"]
engine = ["torch>=2.6", "numpy>=1.26.4", "soxr~=1.0", "triton>=3.9,<3.10; sys_platform == 'linux'"]
serve = ["moss-pipecat[engine]", "pipecat-ai[websocket]>=1.14,<1.15", "uvicorn >= 0.52.1, <1"]
"""
    )
    got = floors_module.floors(pyproject, skip={"torch"})
    assert got == {
        "pipecat-ai": "1.14",
        "web-sockets": "13.1",  # PEP 503's spelling: pip matches it to Web_Sockets
        "numpy": "1.26.4",  # base and engine: the higher floor, which both allow
        "triton": "3.9",  # a marker does not hide the bound
        "uvicorn": "0.52.1",
    }  # no loguru, soxr (no >= bound), pytest (dev), torch (skipped), moss-pipecat (itself)


def test_the_repositorys_floors_are_pyprojects():
    got = floors_module.floors(REPO / "pyproject.toml", skip={"torch"})
    text = (REPO / "pyproject.toml").read_text()
    assert "torch" not in got and "moss-pipecat" not in got
    for name, version in got.items():
        spelled = name.replace("-", "[-_.]")
        assert re.search(rf'"{spelled}(\[[^\]]*\])?\s*>=\s*{re.escape(version)}\b', text, re.I)


def test_every_floor_is_one_the_pinned_pipecat_accepts():
    """pipecat-ai is pinned to 1.14.x: where it requires one of our dependencies, our floor
    must be a version it takes (else pip quietly installs a higher one, and the floor is
    never what anyone runs)."""
    got = floors_module.floors(REPO / "pyproject.toml", skip={"torch"})
    theirs = {}
    for line in requires("pipecat-ai") or []:
        req = Requirement(line)
        extra_only = req.marker is not None and "extra" in str(req.marker)
        if not extra_only or 'extra == "websocket"' in str(req.marker):  # serve's extra
            theirs[floors_module._normal(req.name)] = req.specifier
    shared = sorted(set(got) & set(theirs))
    assert {"numpy", "loguru", "websockets"} <= set(shared)
    bad = {n: (got[n], str(theirs[n])) for n in shared if Version(got[n]) not in theirs[n]}
    assert not bad, f"floors below pipecat-ai's own requirements: {bad}"
