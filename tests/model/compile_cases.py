"""Kernels compiled for sm_90 by ``testing.kernel_compile`` (run as a script, without Triton's
interpreter, by ``test_kernel_compile.py``; prints JSON), and a kernel the interpreter runs
that Triton's compiler refuses."""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl


def _twice(x):  # a plain function: the interpreter calls it, Triton's compiler refuses it
    return x * 2


@triton.jit
def calls_a_plain_function(x_ptr, out_ptr):
    r = tl.arange(0, 16)
    tl.store(out_ptr + r, _twice(tl.load(x_ptr + r)))


def launch_bad_kernel() -> None:
    calls_a_plain_function[(1,)](torch.randn(16), torch.empty(16))


def main() -> None:
    from triton import knobs
    from triton.runtime import driver

    from moss_pipecat.model import triton_attention, triton_kernels
    from moss_pipecat.testing.kernel_compile import compile_only

    report: dict = {}
    gen = torch.Generator().manual_seed(0)
    with compile_only(90) as good:
        for dtype, splits in ((torch.bfloat16, 1), (torch.bfloat16, 4), (torch.float32, 1)):
            # A decode step's attention at the real head size: 16 query heads over 8 kv heads.
            q = torch.randn(2, 16, 1, 128, generator=gen).to(dtype)
            k = torch.randn(2, 8, 256, 128, generator=gen).to(dtype)
            triton_attention.attention(q, k, k, torch.zeros(2, 1, 1, 256, dtype=dtype), splits)
        # The cache writes, into caches of zeros: compiled, not run, so they stay zeros.
        qkv = torch.randn(2, 1, 32, 128, generator=gen).to(torch.bfloat16)
        k_cache = torch.zeros(3, 8, 64, 128, dtype=torch.bfloat16)
        v_cache = torch.zeros_like(k_cache)
        cos, sin = torch.ones(1, 1, 1, 128), torch.zeros(1, 1, 1, 128)
        triton_kernels.norm_rope_write(
            qkv, torch.ones(24, 128, dtype=torch.bfloat16), cos, sin, 1e-6, k_cache, v_cache,
            torch.tensor([2, 0]), torch.tensor([[5], [9]]),
        )  # fmt: skip
        report["caches_untouched"] = bool(k_cache.eq(0).all() and v_cache.eq(0).all())
    report["good"] = [
        {"name": k.name, "constants": {n: repr(v) for n, v in k.constants.items()},
         "registers": k.registers, "spilled": k.spilled_bytes, "shared": k.shared_bytes}
        for k in good.kernels.values()
    ]  # fmt: skip
    report["good_problems"] = good.problems()
    with compile_only(90) as bad:
        launch_bad_kernel()
    report["bad_failures"] = [f.name for f in bad.failures.values()]
    report["bad_problems"] = bad.problems()
    report["hook_restored"] = knobs.runtime.jit_cache_hook is None
    try:
        driver.active  # noqa: B018 (no GPU here: no driver, as before)
        report["driver_after"] = "active"
    except RuntimeError:
        report["driver_after"] = "none"
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
