"""The Triton kernels compiled for a GPU on a machine without one.

Triton's interpreter (``TRITON_INTERPRET=1``) checks what a kernel computes, but not that it
compiles: it runs each program in numpy, so it accepts what the GPU compiler refuses (a
``tl.dot`` of shapes or dtypes the target lacks, an op with no lowering) and never reaches the
code a GPU runs instead of its own (libdevice's ``exp``/``log``, 16-bit ``tl.dot``). Triton's
compiler, ptxas included, runs on a CPU: given a target it lowers a kernel to a cubin, and
the cubin's resource use (registers, spills, shared memory) is known before any GPU loads it.

``compile_only(arch)`` makes every Triton kernel launched inside it compile for ``sm_<arch>``
and not run: Triton's active driver is swapped for one that claims a CUDA device of that
architecture, and the JIT's compile hook (``knobs.runtime.jit_cache_hook``, meant for
inspecting and skipping compiles) compiles each new specialization with ``triton.compile``
and tells the JIT it is handled, so nothing is launched. Callers run the ops' formulas for
the values (``run_formula_after``), so a whole model runs as usual while every kernel it
would launch on that GPU, with the arguments it would get, is compiled.

The one place this module touches Triton's runtime: ``triton.runtime.driver`` (its
``set_active``/``reset_active``, meant for this) and the hook; ``tests/model/
test_kernel_compile.py`` holds both to what they do here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

# Shared memory a block may use (bytes, opt-in maximum) and registers per multiprocessor,
# by compute capability: what a launch is refused beyond (CUDA C Programming Guide, table
# "Technical Specifications per Compute Capability").
SHARED_LIMIT = {
    80: 163 * 1024,
    86: 99 * 1024,
    89: 99 * 1024,
    90: 227 * 1024,
    100: 227 * 1024,
    120: 99 * 1024,
}
REGISTERS_PER_BLOCK = 64 * 1024


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """One specialization of one kernel, compiled for ``sm_<arch>``."""

    name: str
    arch: int
    signature: str  # the JIT's specialization: argument types, alignment, constants
    constants: dict[str, object]  # the constexpr arguments, by name
    pointer_dtypes: tuple[str, ...]  # the pointer arguments' element types, in order
    num_warps: int
    shared_bytes: int
    registers: int | None  # per thread, from the cubin (None: cuobjdump not found)
    spilled_bytes: int | None  # local memory per thread: registers spilled
    seconds: float

    def problems(self) -> list[str]:
        """What would make the launch fail on that GPU (empty: none)."""
        out = []
        limit = SHARED_LIMIT.get(self.arch)
        if limit is not None and self.shared_bytes > limit:
            out.append(f"{self.shared_bytes} B of shared memory > {limit} B on sm_{self.arch}")
        threads = 32 * self.num_warps
        if self.registers is not None and self.registers * threads > REGISTERS_PER_BLOCK:
            out.append(f"{self.registers} registers x {threads} threads > {REGISTERS_PER_BLOCK}")
        return out


@dataclasses.dataclass
class CompileFailure:
    name: str
    arch: int
    signature: str
    error: str


class _CompileOnlyDriver:
    """Triton's view of a CUDA device of architecture ``arch`` that runs nothing."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return self.arch  # one JIT cache per architecture: the JIT keys its caches by device

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@functools.cache
def _cuobjdump() -> str | None:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(tool) if tool.exists() else None


def resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local bytes) per thread of the cubin's kernel, from ``cuobjdump
    -res-usage`` (Triton's own copy); (None, None) where it cannot be read."""
    tool = _cuobjdump()
    if tool is None:
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, local = re.search(r"REG:(\d+)", text), re.search(r"LOCAL:(\d+)", text)
    return (int(regs[1]) if regs else None), (int(local[1]) if local else None)


class Compiler:
    """What ``compile_only`` compiled (``kernels``) and could not (``failures``)."""

    def __init__(self, arch: int) -> None:
        self.arch = arch
        self.kernels: dict[str, CompiledKernel] = {}
        self.failures: dict[str, CompileFailure] = {}

    def hook(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled) -> bool:
        """The JIT's compile hook: compiles the specialization once, returns True (handled:
        the JIT neither compiles it again nor launches it)."""
        import triton
        from triton.compiler import ASTSource

        name = fn.name
        signature = f"{name}{key}"
        if signature in self.kernels or signature in self.failures:
            return True
        options = {
            k: compile[k]
            for k in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion", "extern_libs")
            if compile.get(k) is not None
        }
        src = ASTSource(fn.jit_function, compile["signature"], compile["constants"],
                        compile["configs"][0])  # fmt: skip
        t0 = time.perf_counter()
        try:
            kernel = triton.compile(src, target=triton.backends.compiler.GPUTarget(
                "cuda", self.arch, 32), options=options)  # fmt: skip
        except Exception as e:  # the compiler's own error, whatever its type: the finding
            self.failures[signature] = CompileFailure(name, self.arch, signature, f"{e}"[-2000:])
            return True
        regs, local = resource_usage(kernel.asm["cubin"])
        names = fn.jit_function.arg_names
        types = compile["signature"]
        self.kernels[signature] = CompiledKernel(
            name=name,
            arch=self.arch,
            signature=signature,
            constants={names[path[0]]: v for path, v in compile["constants"].items()},
            pointer_dtypes=tuple(t[1:] for t in types.values() if str(t).startswith("*")),
            num_warps=kernel.metadata.num_warps,
            shared_bytes=kernel.metadata.shared,
            registers=regs,
            spilled_bytes=local,
            seconds=time.perf_counter() - t0,
        )
        return True

    def problems(self) -> list[str]:
        """Every failed compile and every launch that would be refused."""
        out = [f"{f.signature}: {f.error}" for f in self.failures.values()]
        for k in self.kernels.values():
            out += [f"{k.signature}: {p}" for p in k.problems()]
        return out


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[Compiler]:
    """Inside: every Triton kernel launch compiles its specialization for ``sm_<arch>`` (once)
    and runs nothing; the compiler's record is yielded. Not with ``TRITON_INTERPRET=1``."""
    from triton import knobs
    from triton.runtime import driver

    if knobs.runtime.interpret:
        raise RuntimeError("compile_only needs Triton's compiler, not its interpreter")
    compiler = Compiler(arch)
    before = knobs.runtime.jit_cache_hook
    driver.set_active(_CompileOnlyDriver(arch))
    knobs.runtime.jit_cache_hook = compiler.hook
    try:
        yield compiler
    finally:
        knobs.runtime.jit_cache_hook = before
        try:
            driver.reset_active()  # the machine's own driver
        except RuntimeError:  # none (no GPU here): no driver active, as before
            driver.set_active(None)


def run_formula_after(
    kernel: Callable, formula: Callable, calls: Counter[str] | None = None, name: str = ""
) -> Callable:
    """An op implementation that launches ``kernel`` (under ``compile_only``: compiled, not
    run, so it writes nothing) and returns what ``formula`` computes (and writes); counts its
    calls under ``name`` in ``calls``."""

    def impl(*args, **kwargs):
        if calls is not None:
            calls[name] += 1
        kernel(*args, **kwargs)
        return formula(*args, **kwargs)

    return impl


def every_kernel() -> dict[str, tuple[Callable, Callable]]:
    """Every fused op that has a Triton kernel, the kernels not yet on by default included:
    op name -> (op, kernel). Imports the kernels' modules (so ``triton``): under
    ``TRITON_INTERPRET=1`` they are defined for the interpreter."""
    from moss_pipecat.codec import kernels as codec_kernels
    from moss_pipecat.codec import triton_kernels as codec_triton
    from moss_pipecat.model import kernels, triton_attention, triton_kernels

    return {
        **triton_kernels.KERNELS,
        **triton_kernels.KV_WRITE_KERNELS,
        "moss::attention": (kernels.attention, triton_attention.attention_op),
        **codec_triton.KERNELS,
        "moss::codec_attention": (codec_kernels.attention, triton_attention.codec_attention_op),
    }


def formulas() -> dict[str, Callable]:
    """Every fused op's formula (what it runs without a kernel), by op name."""
    from moss_pipecat.codec.kernels import FORMULAS as CODEC_FORMULAS
    from moss_pipecat.model.fused_sampling import FORMULAS as SAMPLING_FORMULAS
    from moss_pipecat.model.kernels import FORMULAS

    return {**FORMULAS, **SAMPLING_FORMULAS, **CODEC_FORMULAS}


def register_compiling_on_cpu() -> Counter[str]:
    """Every op of ``every_kernel`` gets, as its CPU implementation, its kernel followed by its
    formula (``run_formula_after``): under ``compile_only`` the kernel compiles, the formula
    gives the values. For this process (a registration cannot be undone); returns the calls
    per op (every op at 0 so far)."""
    table, formula = every_kernel(), formulas()
    calls: Counter[str] = Counter({name: 0 for name in table})
    for name, (op, kernel) in table.items():
        op.register_kernel("cpu")(run_formula_after(kernel, formula[name], calls, name))
    return calls
