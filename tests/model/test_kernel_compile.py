"""The Triton kernels compiled for a GPU on this CPU (``moss_pipecat.testing.kernel_compile``).

The interpreter checks the kernels' numbers; the compiler check is what catches a kernel a GPU
would refuse before a GPU session spends its minutes on it. Here: the kernels not yet run on a
GPU (attention, one pass and split, bf16 with 16-bit ``tl.dot`` and float32; the cache-write
kernel) compile for sm_90 as the engine launches them, their registers and spills read from
the cubin, nothing run; a kernel the interpreter runs but the compiler refuses is reported;
Triton's driver and compile hook are left as they were (the one place the module touches
Triton's runtime). The whole model and codec: ``scripts/compile_kernels.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moss_pipecat.testing.kernel_compile import CompiledKernel

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))  # really compiled
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "tests.model.compile_cases"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_the_kernels_not_yet_on_a_gpu_compile_for_sm90_and_run_nothing(report):
    assert report["good_problems"] == []
    variants = {
        (k["name"], k["constants"].get("SPLIT"), k["constants"].get("IEEE")) for k in report["good"]
    }
    assert variants == {
        ("_attention_kernel", "False", "False"),  # bf16, one pass: 16-bit tl.dot, libdevice exp
        ("_attention_kernel", "True", "False"),  # bf16, the keys split across programs
        ("_combine_kernel", None, None),  # ... and combined
        ("_attention_kernel", "False", "True"),  # float32: exact products
        ("_norm_rope_write_kernel", None, None),
    }
    for k in report["good"]:
        assert k["registers"] and 0 < k["registers"] <= 255, k
        assert k["spilled"] == 0, k  # no register spilled to local memory at these sizes
    assert report["caches_untouched"]  # compiled, not launched: the caches stayed zeros


def test_a_kernel_the_interpreter_runs_but_the_compiler_refuses_is_reported(report):
    from tests.model import compile_cases

    if os.environ.get("TRITON_INTERPRET") == "1":  # this process: Triton's interpreter runs it
        x, out = torch.arange(16.0), torch.empty(16)
        compile_cases.calls_a_plain_function[(1,)](x, out)
        assert torch.equal(out, 2 * x)
    assert report["bad_failures"] == ["calls_a_plain_function"]
    assert len(report["bad_problems"]) == 1
    assert "Unsupported function" in report["bad_problems"][0]


def test_triton_is_left_as_it_was(report):
    assert report["hook_restored"]
    assert report["driver_after"] == ("active" if torch.cuda.is_available() else "none")


def _kernel(**changes) -> CompiledKernel:
    base = dict(name="k", arch=90, signature="k[]", constants={}, pointer_dtypes=(), num_warps=4)
    base |= dict(shared_bytes=0, registers=64, spilled_bytes=0, seconds=0.0)
    return CompiledKernel(**{**base, **changes})


def test_a_launch_the_gpu_would_refuse_is_a_problem():
    assert _kernel().problems() == []
    assert _kernel(shared_bytes=227 * 1024).problems() == []  # sm_90's opt-in maximum
    assert _kernel(shared_bytes=227 * 1024 + 1).problems()
    assert _kernel(arch=80, shared_bytes=200 * 1024).problems()  # over sm_80's 163 KB
    assert _kernel(registers=255, num_warps=8).problems() == []  # 255 x 256 < 64 K
    assert _kernel(registers=255, num_warps=16).problems()  # 255 x 512 > 64 K
