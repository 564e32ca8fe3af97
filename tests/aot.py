"""Compile one Triton kernel for an H100 (sm_90) on a CPU: its stack bytes (register spills), its shared memory.

Imported by the AOT_SCRIPTs of the test files, which `strategies.run_aot_script` runs in a fresh
Python with Triton's interpreter off and tests/ on the path (`from aot import stack_bytes`).
A kernel that asks for more shared memory than H100_SHARED compiles here and fails only at its
launch on the GPU (OutOfResources): compile_for_h100(...).metadata.shared catches it on a CPU.
Triton ships ptxas and cuobjdump, so no GPU and no CUDA toolkit are needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

H100 = GPUTarget("cuda", 90, 32)
H100_SHARED = 232448  # bytes of shared memory one block may use on an H100 (Triton's OutOfResources bound)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def jit_function(kernel):
    """The `@triton.jit` function under any `@triton.autotune` / `@triton.heuristics` wrappers."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compile_for_h100(kernel, types: dict[str, str], consts: dict, num_warps: int, num_stages: int | None = None, *,
                     default: str | None = None, aligned: tuple[str, ...] = ()):
    """Compile `kernel` for sm_90 as the JIT would; Triton's compiled kernel (its .asm["cubin"],
    .metadata.shared: the dynamic shared memory a block asks for).

    types:   the Triton type ("*bf16", "i32", "fp32", "tensordesc<...>") of each argument not in
             `consts`, by name; `default` types those it leaves out (None: it must name them all).
    consts:  the constexpr arguments and their values.
    aligned: arguments besides the pointers (a size, a stride) marked divisible by 16; every
             pointer is, as the JIT specialises 16-byte-aligned pointers.
    The signature lists the arguments in the kernel's order. `num_stages=None`: Triton's default.
    """
    fn = jit_function(kernel)
    sig = {n: "constexpr" if n in consts else types[n] if default is None else types.get(n, default)
           for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*") or n in aligned}
    options = dict(num_warps=num_warps) if num_stages is None else dict(num_warps=num_warps, num_stages=num_stages)
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=H100, options=options)


def spill_bytes(compiled) -> int:
    """The STACK bytes cuobjdump reports for a compiled kernel (0: no register spills)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    return int(re.search(r"STACK:(\d+)", usage).group(1))


def stack_bytes(*args, **kwargs) -> int:
    """spill_bytes(compile_for_h100(*args, **kwargs))."""
    return spill_bytes(compile_for_h100(*args, **kwargs))


def random_features_shared(kernel, dt: str, K: int, V: int, M: int, R: int, BT: int, tile, half_records: bool,
                           **flags) -> int:
    """Shared memory of one of fast/hrc_la.py's or fast/performer.py's chunk kernels (their argument
    names: q, k, v, o, x in the input dtype `dt` ("fp32", "bf16"), the chunk records hs, the
    scalars s_u, eps, r_m, the sizes T, H, NT, SEG, NS) at a launcher's tile (BM, num_warps,
    num_stages) and chunk BT; R is a chunk record's length. Constants the kernel does not take are
    dropped."""
    BM, warps, stages = tile
    types = dict({n: "*" + dt for n in ("q", "k", "v", "o", "x")}, hs="*bf16" if half_records and dt != "fp32" else "*fp32",
                 s_u="fp32", eps="fp32", r_m="fp32", **{n: "i32" for n in ("T", "H", "NT", "SEG", "NS")})
    consts = dict(K=K, V=V, M=M, R=R, BT=BT, BK=triton.next_power_of_2(K), BV=triton.next_power_of_2(V), BM=BM,
                  DOT="tf32x3" if dt == "fp32" else "tf32", **flags)
    consts = {n: x for n, x in consts.items() if n in jit_function(kernel).arg_names}
    return compile_for_h100(kernel, types, consts, warps, stages, default="*fp32", aligned=("H",)).metadata.shared


def side_by_side(fn, jobs: dict) -> dict:
    """{name: fn(*args, **kwargs)} for jobs {name: (args, kwargs)}, on threads: Triton's compiler
    releases the GIL, so compiles overlap."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return dict(zip(jobs, pool.map(lambda job: fn(*job[0], **job[1]), jobs.values())))
