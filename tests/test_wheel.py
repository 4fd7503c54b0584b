"""The package builds as a wheel that installs into a clean venv and runs the offline demo.

The wheel is built from a copy of the sources (pip builds in the source tree, so parallel
runs must not share one) without build isolation (offline: the build backend comes from this
venv). The clean venv has no pip and no access to the source tree; a ``.pth`` line puts this
venv's site-packages on its path for the dependencies. A plain path line does not run the
``.pth`` files inside that folder, so the editable install's finder stays off and
``moss_pipecat`` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from moss_pipecat.engine.factory import tiny_fixtures_dir

REPO = Path(__file__).resolve().parent.parent
# The version's one place (tomllib is 3.11+; the package supports 3.10).
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # No PYTHONPATH: the test command may put the source tree on it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "moss_pipecat", src / "moss_pipecat", ignore=ignore)
    shutil.copytree(REPO / "tests", src / "tests", ignore=ignore)  # must stay out of the wheel
    dist = tmp / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(dist),
            str(src),
        ],
        cwd=tmp,
    )
    (wheel,) = dist.glob("moss_pipecat-*.whl")
    return wheel


def _clean_venv(tmp: Path) -> tuple[Path, Path]:
    """A venv without pip whose site-packages sees this venv's as a plain path: (its python,
    its site-packages)."""
    root = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp)
    purelib = Path(site.stdout.strip())
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python, purelib


def test_the_wheel_installs_into_a_clean_venv_and_runs_the_demo(tmp_path):
    wheel = _build_wheel(tmp_path)
    version = VERSION
    assert wheel.name == f"moss_pipecat-{version}-py3-none-any.whl"

    # The package, its type marker and its metadata; no tests.
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"moss_pipecat-{version}.dist-info/"
    assert all(n.startswith(("moss_pipecat/", dist_info)) for n in names), names
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "moss_pipecat").rglob("*.py")}
    assert sources <= set(names)
    assert "moss_pipecat/py.typed" in names
    metadata = zipfile.ZipFile(wheel).read(dist_info + "METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert f"Version: {version}" in metadata

    python, purelib = _clean_venv(tmp_path)
    outside = tmp_path / "elsewhere"  # not the repository: nothing imports from the checkout
    outside.mkdir()
    # pip comes from this venv (through the path line) and installs into the clean one.
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], outside)

    where = _run(
        [
            str(python),
            "-I",
            "-c",
            "import json, moss_pipecat; "
            "print(json.dumps([moss_pipecat.__file__, moss_pipecat.__version__]))",
        ],
        outside,
    )
    module_file, module_version = json.loads(where.stdout)
    assert Path(module_file).is_relative_to(purelib)  # the wheel's copy, not the checkout
    assert module_version == version

    out = tmp_path / "demo"
    _run(
        [
            str(python),
            "-I",
            "-m",
            "moss_pipecat.demo",
            "--fixtures",
            str(tiny_fixtures_dir()),
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        outside,
        timeout=300,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["turns"]) == 3
    assert all(Path(t["file"]).is_file() and t["audio_frames"] > 0 for t in summary["turns"])
