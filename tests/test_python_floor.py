"""The Python floor is pyproject's ``requires-python``: no lower than the pinned pipecat's (a
user on an older Python gets pip's "requires a different Python", not a resolver error about
pipecat-ai), stated alike in the README, and checked by ``scripts/bootstrap.sh`` before it
installs anything."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = (REPO / "pyproject.toml").read_text()
FLOOR = re.search(r'^requires-python = ">=([0-9.]+)"', PYPROJECT, re.M)[1]


def test_every_python_we_allow_is_one_the_pinned_pipecat_allows():
    ours = SpecifierSet(f">={FLOOR}")
    theirs = SpecifierSet(metadata("pipecat-ai")["Requires-Python"])
    allowed = [f"3.{minor}" for minor in range(6, 30) if f"3.{minor}" in ours]
    assert allowed and all(v in theirs for v in allowed), (str(theirs), allowed)
    assert sys.version_info[:2] >= tuple(int(n) for n in FLOOR.split("."))


def test_the_readme_and_the_linter_state_the_same_floor():
    readme = (REPO / "README.md").read_text()
    assert f"Python ≥ {FLOOR}" in readme
    assert not re.search(r"Python ≥ 3\.(\d+)", readme.replace(f"Python ≥ {FLOOR}", ""))
    target = re.search(r'^target-version = "py(\d)(\d+)"', PYPROJECT, re.M)
    assert f"{target[1]}.{target[2]}" == FLOOR


def test_bootstrap_refuses_a_python_below_the_floor_before_installing(tmp_path):
    """A pyproject whose floor is above this Python: the bootstrap says so and creates no venv
    (the same script, the floor read from the file it would install from)."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    above = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
    raised = re.sub(r'^requires-python = ">=[0-9.]+"', f'requires-python = ">={above}"', PYPROJECT,
                    flags=re.M)  # fmt: skip
    (tmp_path / "pyproject.toml").write_text(raised)
    run = subprocess.run(
        ["bash", "scripts/bootstrap.sh"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert f"moss-pipecat needs Python >= {above}" in run.stderr
    assert not (tmp_path / ".venv").exists()
