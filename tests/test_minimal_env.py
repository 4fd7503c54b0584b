"""The GPU path runs on a curated box: torch, numpy, safetensors, transformers, pytest, no network.

Such a box lacks loguru, soxr, soundfile, pipecat, fastapi, ... The model, codec and engine must
import there, ``tests/gpu`` must collect (and skip without CUDA), and ``scripts/gpu_bench.sh``
must run without a venv or an install. These tests build that environment from this one: a venv
(no pip) whose site-packages holds links to only the allowed distributions and what they
require, so a missing module is missing exactly as it would be there (``find_spec`` is None,
its metadata and pytest plugins are absent), and run the real commands in it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import posixpath
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from moss_pipecat._log import StdlibLogger
from moss_pipecat.engine.device_costs import RUN_NEEDS

REPO = Path(__file__).resolve().parent.parent
ALLOWED = ("torch", "numpy", "safetensors", "transformers", "pytest")
OPTIONAL = ("loguru", "soxr", "soundfile", "pipecat", "fastapi", "websockets", "moss_pipecat")


def _closure(roots: tuple[str, ...]) -> dict[str, md.Distribution]:
    """The installed distributions ``roots`` need, transitively (no extras)."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    env = {"extra": ""}
    todo, seen = [canonicalize_name(r) for r in roots], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        dist = installed.get(name)
        if dist is None:
            assert name not in map(canonicalize_name, roots), f"{name} is not installed"
            continue  # a requirement for another platform or Python, not installed here
        seen[name] = dist
        for spec in dist.requires or ():
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(canonicalize_name(req.name))
    return seen


def _prefixes(files: set[str]) -> set[str]:
    """Every file and every folder above one (relative POSIX paths, as strings: the venv holds
    ~50k files, too many to hash as ``Path`` objects in a test's setup)."""
    out = set(files)
    for f in files:
        cut = f.rfind("/")
        while cut > 0 and f[:cut] not in out:  # a folder seen before has its parents in too
            out.add(f[:cut])
            cut = f.rfind("/", 0, cut)
    return out


def _link(src_root: Path, dst_root: Path, rel: str, allowed: set, others: set) -> None:
    """Links ``rel`` whole if no other distribution has files below it, else goes one level down.

    ``allowed`` and ``others``: the paths (files and folders) of the allowed distributions and
    of the rest.
    """
    src, dst = src_root / rel, dst_root / rel
    if not src.exists() or dst.exists():
        return
    if src.is_dir() and rel in others:
        dst.mkdir(parents=True)
        for child in src.iterdir():
            if f"{rel}/{child.name}" in allowed:
                _link(src_root, dst_root, f"{rel}/{child.name}", allowed, others)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)


@pytest.fixture(scope="module")
def minimal_python(tmp_path_factory) -> Path:
    """A python whose importable world is torch, numpy, safetensors, transformers and pytest."""
    venv = tmp_path_factory.mktemp("minimal") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    keep = _closure(ALLOWED)

    def files(dists) -> set[str]:
        out = set()
        for d in dists:
            if Path(d.locate_file("")).resolve() != purelib.resolve():
                continue  # an editable install's metadata lives elsewhere
            names = (posixpath.normpath(f) for f in map(str, d.files or ()))
            out |= {f for f in names if not f.startswith("..")}
        return out

    allowed = _prefixes(files(keep.values()))
    others = _prefixes(
        files(d for d in md.distributions() if canonicalize_name(d.metadata["Name"]) not in keep)
    )
    for top in sorted({p.split("/", 1)[0] for p in allowed}):
        _link(purelib, site, top, allowed, others)
    return venv / "bin" / "python"


def _env(python: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "MOSS_FIXTURES")}
    # One thread: the tiny models gain nothing from more, and CI shares two cores.
    env |= {"PYTHON": str(python), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return env | extra


def test_core_imports_without_optional_deps(minimal_python, tmp_path):
    code = f"import importlib.util as u; print([m for m in {OPTIONAL!r} if u.find_spec(m)])"
    proc = subprocess.run(
        [str(minimal_python), "-c", code],
        cwd=tmp_path,  # not the repository: the package is not on sys.path
        env=_env(minimal_python),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "[]", proc.stderr  # nothing optional is importable
    # The script's own check imports the model, codec and engine from the checkout.
    proc, summary = _bench(minimal_python, tmp_path / "gpu", "--env-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["package"] == str(REPO / "moss_pipecat")
    assert summary["logger"] == "stdlib" and "core_import_error" not in summary
    assert summary["steps"] == [] and json.loads(proc.stdout) == summary


def _bench(python: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``gpu_bench.sh --device cpu --tiny`` with ``python`` as the machine's python."""
    from tests.conftest import fixtures_root

    script = REPO / "scripts" / "gpu_bench.sh"
    proc = subprocess.run(
        ["bash", str(script), "--device", "cpu", "--tiny", "--out", str(out), *args],
        cwd=out.parent,
        env=_env(python, MOSS_FIXTURES=str(fixtures_root())),
        capture_output=True,
        text=True,
        timeout=900,  # a guard against hangs: the whole dry run takes ~1 min on 2 idle cores
    )
    summary = json.loads((out / "summary.json").read_text())
    return proc, summary


def test_gpu_bench_dry_run_in_minimal_env(minimal_python, tmp_path):
    """Every step the GPU run has, tiny and on the CPU: tests/gpu collects and skips, every
    benchmark writes its JSON, with only the allowed packages and no install. ``--wheels``
    without pip: the wheels are unzipped onto PYTHONPATH. The steps fork from one interpreter
    (``--one-interpreter``: the imports once, not once a step); a step as its own python
    process is the next test's."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "mossprobe", "VALUE = 42\n")
    out = tmp_path / "gpu"
    proc, summary = _bench(minimal_python, out, "--wheels", str(wheels), "--one-interpreter")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no venv, no install" in proc.stderr
    assert "one interpreter: steps fork from" in proc.stderr
    assert summary["logger"] == "stdlib" and summary["package"] == str(REPO / "moss_pipecat")
    assert summary["wheels"] == ["mossprobe"] and summary["importable"]["mossprobe"]
    venv = REPO / ".venv"  # absent where the suite runs from another venv (check_floors.sh)
    assert not venv.exists() or not venv.samefile(Path(summary["executable"]).parent.parent)
    assert summary["importable"] == {
        "loguru": False,
        "soxr": False,
        "soundfile": False,
        "pipecat": False,
        "huggingface_hub": True,  # transformers needs it
        "mossprobe": True,
    }
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps)[:13] == [
        "tests", "step", "step_fused", "step_attn", "step_kv", "codec", "codec_fused",
        "codec_attn", "prefill", "engine", "traffic", "traffic_after", "traffic_new",
    ]  # fmt: skip
    assert list(steps)[-2:] == ["capacity", "prefill_graphs"]
    assert summary["failed"] == []
    for name, step in steps.items():
        if step["status"] == "skipped":  # a benchmark not written yet
            assert step["args"] == "script not present" and not (REPO / step["script"]).exists()
            continue
        assert step["status"] == "ok", name
        if name != "tests":
            assert json.loads((out / step["json"]).read_text()), name
    # the kernels not yet measured, each asked for by its own step only
    kinds = [n for n in steps if n.startswith(("step", "traffic"))]
    env = {n: json.loads((out / steps[n]["json"]).read_text())["env"] for n in kinds}
    assert env["step_kv"]["kv_write_kernel"] == "triton"
    assert env["traffic_new"]["kv_write_kernel"] == env["traffic_new"]["attention_kernel"]
    assert env["traffic_after"]["kv_write_kernel"] == "formula"
    assert env["step_attn"]["kv_write_kernel"] == "formula"
    assert env["step_attn"]["attention_kernel"] == "triton"
    junit = ElementTree.parse(out / "tests.xml").getroot()
    suite = junit if junit.tag == "testsuite" else junit.find("testsuite")
    assert int(suite.get("tests")) > 0 and suite.get("tests") == suite.get("skipped")
    assert int(suite.get("errors")) == 0 and int(suite.get("failures")) == 0


def _wheel(folder: Path, module: str, source: str) -> Path:
    """A minimal pure-Python wheel providing ``module``."""
    name, version = module, "0.1"
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = {
        f"{module}.py": source.encode(),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": wheel.encode(),
    }
    record = []
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, data in entries.items():
            z.writestr(path, data)
        z.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return whl


def test_gpu_bench_wheels_with_pip_and_a_failing_step(tmp_path):
    """``--wheels`` where the python has pip (``pip install --no-index --no-deps --target``);
    one broken step is recorded, the next still runs, and the exit status says so."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "mossprobe", "VALUE = 42\n")
    out = tmp_path / "gpu"
    # --dtype reaches the codec benchmark (which rejects it), not the memory one.
    args = ("--wheels", str(wheels), "--only", "codec,memory", "--dtype", "nope")
    proc, summary = _bench(Path(sys.executable), out, *args)
    assert proc.returncode == 1
    assert summary["wheels"] == ["mossprobe"] and summary["importable"]["mossprobe"]
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("codec", "failed"),
        ("memory", "ok"),
    ]
    assert summary["failed"] == ["codec"] and "FAILED: codec" in proc.stderr
    assert "invalid choice" in (out / "codec.log").read_text()
    assert json.loads((out / "memory.json").read_text())["kv_bytes_per_position"] > 0


def test_a_traffic_step_brings_the_runs_its_cost_table_reads(tmp_path):
    """``--plan``: the steps a call would run. A traffic step that reads this run's cost table
    (``--cost-table``) brings, under ``--only``, a step for each ``RUN_NEEDS`` group that no
    step before it writes and ``--out`` lacks (a one-shot GPU call asking for the traffic
    alone failed at its end for want of ``prefill.json``); ``--skip`` still wins. The script's
    groups are the cost table's."""
    script, out = REPO / "scripts" / "gpu_bench.sh", tmp_path / "gpu"

    def plan(*args: str) -> list[str]:
        cmd = ["bash", str(script), "--device", "cpu", "--out", str(out), *args, "--plan"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    fused = ["step_fused", "codec_fused"]
    assert plan("--only", "traffic_after") == [*fused, "prefill", "engine", "traffic_after"]
    plain = plan("--only", "step,codec,traffic_new")
    assert plain == ["step", "codec", "prefill", "engine", "traffic_new"]
    skipped = plan("--only", "traffic_after", "--skip", "prefill")
    assert skipped == [*fused, "engine", "traffic_after"]
    assert plan("--only", "traffic") == ["traffic"]  # the plain traffic reads no table
    for name in ("prefill", "capacity"):  # an earlier call's, in --out
        (out / f"{name}.json").write_text("{}")
    assert plan("--only", "traffic_after,traffic_new") == [*fused, "traffic_after", "traffic_new"]
    assert "prefill" in plan() and plan("--skip", "prefill").count("prefill") == 0
    groups = script.read_text().split("COST_TABLE_NEEDS=(", 1)[1].split(")", 1)[0]
    groups = {frozenset(g.split()) for g in groups.strip('"').split('" "')}
    assert groups == {frozenset(g) for g in RUN_NEEDS}


def test_step_server_runs_each_step_as_python_would(tmp_path):
    """``scripts/step_server.py`` (``gpu_bench.sh --one-interpreter``) runs each request in a
    child forked after the imports, as ``python ARGS`` would: arguments, ``sys.path[0]``, exit
    status, output into the step's log, no state left from the step before; a step past its
    limit is stopped and reported as ``timeout`` does (124)."""
    steps = {
        "mark": "import moss_pipecat, sys\nmoss_pipecat.MARK = 1\nprint(sys.argv[1:])\n",
        "fresh": "import moss_pipecat, sys\nprint(sys.path[0])\n"
        "sys.exit(3 if hasattr(moss_pipecat, 'MARK') else 0)\n",
        "status": "raise SystemExit(5)\n",
        "message": "raise SystemExit('bad input')\n",
        "boom": "raise RuntimeError('boom')\n",
        "hang": "import threading\nprint('waiting', flush=True)\nthreading.Event().wait()\n",
    }
    requests, limits = [], {"hang": "1"}
    for name, source in steps.items():
        (tmp_path / f"{name}.py").write_text(source)
        argv = [str(tmp_path / f"{name}.py"), "a b", "c"]
        requests.append((name, [limits.get(name, "0"), str(tmp_path / f"{name}.log"), *argv]))
    requests.append(("module", ["0", str(tmp_path / "module.log"), "-m", "platform", "--terse"]))
    # ``OUT|ERR``: stderr into a file of its own, as ``python ARGS >OUT 2>ERR``.
    (tmp_path / "split.py").write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    split = f"{tmp_path / 'split.log'}|{tmp_path / 'split.err'}"
    requests.append(("split", ["0", split, str(tmp_path / "split.py")]))
    payload = b"".join(
        b"".join(f.encode() + b"\0" for f in (*fields[:2], str(len(fields) - 2), *fields[2:]))
        for _, fields in requests
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "step_server.py")],
        input=payload,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    replies = proc.stdout.decode().split()
    assert replies[0] == "ready"
    assert dict(zip([n for n, _ in requests], map(int, replies[1:]), strict=True)) == {
        "mark": 0,
        "fresh": 0,  # the mark was the other child's
        "status": 5,
        "message": 1,
        "boom": 1,
        "hang": 124,
        "module": 0,
        "split": 0,
    }
    log = {name: (tmp_path / f"{name}.log").read_text() for name, _ in requests}
    assert log["mark"] == "['a b', 'c']\n"
    assert log["fresh"] == f"{tmp_path}\n"
    assert log["status"] == "" and log["message"] == "bad input\n"
    assert "RuntimeError: boom" in log["boom"] and log["hang"] == "waiting\n"
    assert log["module"].strip() == platform.platform(terse=True)
    assert (log["split"], (tmp_path / "split.err").read_text()) == ("out\n", "err\n")


# ---- the stand-in logger and the soxr error, in process --------------------------------------


def test_stdlib_logger_takes_loguru_calls(caplog):
    log = StdlibLogger("moss_pipecat.test")
    with caplog.at_level(logging.DEBUG, logger="moss_pipecat.test"):
        log.debug("plain {braces} kept without args")
        log.info("session {} moved to {pool}", 3, pool="8K")
        log.opt(depth=0).warning("careful")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("tick {} failed", 7)
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert msgs == [
        ("DEBUG", "plain {braces} kept without args"),
        ("INFO", "session 3 moved to 8K"),
        ("WARNING", "careful"),
        ("ERROR", "tick 7 failed"),
    ]
    assert caplog.records[-1].exc_info[0] is RuntimeError
    assert all(r.filename == Path(__file__).name for r in caplog.records)


def test_resample_without_soxr_says_what_is_missing(monkeypatch):
    from moss_pipecat.codec.audio import resample

    monkeypatch.setitem(sys.modules, "soxr", None)  # import soxr -> ModuleNotFoundError
    wav = torch.zeros(1, 480)
    assert resample(wav, 24000, 24000) is wav  # same rate: soxr never needed
    with pytest.raises(ModuleNotFoundError, match="pip install soxr"):
        resample(wav, 16000, 24000)
