"""Shared hypothesis strategies, random inputs and the tolerance table for every method's tests.

Every method's test file draws its shapes from `shapes(...)`, pins the edge cases with
`edge_examples(...)`, makes values with `randn(...)` from a seed hypothesis draws (values are
not hypothesis arrays: shrinking stays fast), and compares with `assert_close(..., TOL[...])`,
which reports the relative RMS error (fla's metric) and the worst element, so a failure says how
far off it is.

The tolerance table is the one place where "equal" is defined. Each entry says why it is what
it is. Loosening an entry to make a failing test pass is a defect: find the cause instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, NamedTuple

import torch
from hypothesis import example, strategies as st


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------
class Shape(NamedTuple):
    """Sizes of one draw, in the zoo's [B, T, H, K] / [B, T, H, V] terms."""

    B: int
    T: int
    H: int
    K: int  # query/key head dim
    V: int  # value head dim


def shapes(
    *,
    max_B: int = 2,
    max_T: int = 80,
    max_H: int = 3,
    min_K: int = 1,
    max_K: int = 16,
    max_V: int = 16,
    equal_kv: bool = False,
    K_values: tuple[int, ...] | None = None,
) -> st.SearchStrategy[Shape]:
    """Small shapes, odd sizes included. `K_values` restricts K (e.g. Triton's tl.dot needs
    K >= 16 on a GPU; a kernel that pads may take any K)."""

    def build(B, T, H, K, V):
        return Shape(B, T, H, K, K if equal_kv else V)

    K = st.sampled_from(K_values) if K_values else st.integers(min_K, max_K)
    return st.builds(build, st.integers(1, max_B), st.integers(1, max_T), st.integers(1, max_H),
                     K, st.integers(1, max_V))


def edge_examples(*, chunk_size: int = 16, K: int = 5, V: int = 3, **fixed) -> Callable:
    """Decorator pinning the shapes every method must survive: T = 1, T = chunk ± 1, one head,
    odd head dims. `fixed` adds fixed values for the test's other arguments (e.g. seed=0)."""
    fixed.setdefault("seed", 0)
    edges = [
        Shape(1, 1, 1, K, V),
        Shape(2, chunk_size - 1, 1, K, V),
        Shape(1, chunk_size + 1, 2, K, V),
        Shape(1, 2 * chunk_size + 3, 3, K + 2, V + 4),
    ]

    def decorate(fn):
        for s in edges:
            fn = example(shape=s, **fixed)(fn)
        return fn

    return decorate


chunk_sizes = st.sampled_from([16, 32, 64])  # powers of two; tl.dot needs >= 16
seeds = st.integers(0, 2**31 - 1)


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------
def randn(seed: int, *size: int, dtype=torch.float64, device="cpu", scale: float = 1.0) -> torch.Tensor:
    """Standard normal values from a private generator: the same seed gives the same tensor on
    any device and dtype (drawn in float64 on the CPU, then moved and cast)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*size, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def rand(seed: int, *size: int, low: float = 0.0, high: float = 1.0, dtype=torch.float64, device="cpu"):
    """Uniform values in [low, high) from a private generator (for beta, gates, ...)."""
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(*size, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def device() -> str:
    """Where fast kernels run in this session: CUDA if present, else the CPU (interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------------------------
# Tolerances
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tol:
    rel: float  # bound on ‖x − ref‖₂ / ‖ref‖₂
    worst: float  # bound on max|x − ref| / max|ref|: catches a few bad elements RMS would hide
    why: str


TOL: dict[str, Tol] = {
    # Two exact algorithms for the same function, both in float64: they differ only by the
    # order of additions. 1e-10 leaves room for T ~ 10^3 sums of O(1) terms (~1e-13 each).
    "f64": Tol(1e-10, 1e-9, "float64, same function, different summation order"),
    # A Triton kernel in fp32 under the interpreter (tl.dot is exact fp32 there) against the zoo
    # form in fp32: rounding of fp32 accumulations over T <= a few hundred.
    "f32-interpret": Tol(2e-5, 2e-4, "fp32 kernel vs fp32 torch, exact dots (interpreter)"),
    # The same on a GPU: Triton's fp32 tl.dot uses tf32 (10-bit mantissa) by default.
    "f32-gpu": Tol(3e-3, 3e-2, "fp32 inputs, tf32 tensor-core dots"),
    # Half-precision inputs on a GPU, fp32 accumulation inside, output rounded to the input
    # dtype; compared with the float64 reference on the same (rounded) inputs. fp16 has an
    # 11-bit mantissa (unit roundoff 4.9e-4); bf16 an 8-bit one (3.9e-3).
    "f16-gpu": Tol(5e-3, 5e-2, "fp16 inputs and output, fp32 accumulation"),
    "bf16-gpu": Tol(2e-2, 1e-1, "bf16 inputs and output, fp32 accumulation"),
}

# Gradients pass through one more matmul chain (and, for normalised forms, a division) than the
# output: they get twice the output's bound. Not more: a looser bound would hide a wrong term.
GRAD_FACTOR = 2.0


def tol_for(dtype: torch.dtype, device_type: str) -> Tol:
    """The tolerance for a fast kernel's output in `dtype` on `device_type`, against float64."""
    if dtype == torch.float64:
        return TOL["f64"]
    if dtype == torch.float32:
        return TOL["f32-gpu" if device_type == "cuda" else "f32-interpret"]
    if dtype == torch.float16:
        return TOL["f16-gpu"]
    if dtype == torch.bfloat16:
        return TOL["bf16-gpu"]
    raise ValueError(f"no tolerance for dtype {dtype}")


def grad_tol(t: Tol) -> Tol:
    return Tol(t.rel * GRAD_FACTOR, t.worst * GRAD_FACTOR, t.why + " (gradient)")


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_close(x: torch.Tensor, ref: torch.Tensor, tol: Tol, what: str = "") -> None:
    """Assert `x` equals `ref` within `tol`; NaN anywhere fails. The message names the tensor,
    the relative RMS error, the worst element and where it is."""
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != expected {tuple(ref.shape)}"
    x64, r64 = x.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(r64).any(), f"{what}: the reference holds NaN; the test inputs are wrong"
    assert not torch.isnan(x64).any(), f"{what}: NaN in the result"
    if r64.numel() == 0:
        return
    err = (x64 - r64).abs()
    scale = r64.abs().max().clamp_min(1e-300)
    rel = ((x64 - r64).norm() / r64.norm().clamp_min(1e-300)).item()
    worst = (err.max() / scale).item()
    where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    msg = (f"{what}: relative RMS error {rel:.3g} (bound {tol.rel:g}), worst element off by "
           f"{worst:.3g} of max|ref| (bound {tol.worst:g}) at {where}: got {x64[where].item():.6g}, "
           f"expected {r64[where].item():.6g} [{tol.why}]")
    # An all-zero reference: then any nonzero result is wrong at the scale of the data.
    if r64.norm() == 0:
        assert x64.abs().max() <= 1e-300, msg
        return
    assert rel <= tol.rel and worst <= tol.worst, msg


# ------------------------------------------------------------------------------------------------
# Gradients through random cotangents (fla's pattern)
# ------------------------------------------------------------------------------------------------
def grads(fn: Callable, inputs: dict[str, torch.Tensor], cotangents: list[torch.Tensor | None]):
    """Run `fn(**inputs)` (a tuple or a tensor), backpropagate Σ (out_i · cot_i) over every
    output with a cotangent, and return {name: grad} for every input that requires grad."""
    leaves = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in inputs.items()
              if isinstance(v, torch.Tensor)}
    args = {**inputs, **leaves}
    out = fn(**args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    loss = sum((o.double() * c.double()).sum() for o, c in zip(outs, cotangents)
               if c is not None and o is not None)
    loss.backward()
    return {k: v.grad for k, v in leaves.items() if v.requires_grad}


@functools.lru_cache(maxsize=None)
def has_cuda() -> bool:
    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# Compiling kernels for the H100 on a CPU
# ------------------------------------------------------------------------------------------------
def run_aot_script(script: str, timeout: float = 600) -> dict:
    """Run `script` in a fresh Python with Triton's interpreter off, so its `triton.compile(...,
    target=GPUTarget("cuda", 90, 32))` calls build real sm_90 code with the ptxas Triton ships,
    and return the JSON object the script prints last (e.g. stack bytes, i.e. register spills,
    per kernel). The interpreter never compiles: this catches what only the GPU compiler rejects,
    on a CPU. The script runs in the repository root with tests/ on its path, so it can
    `from aot import stack_bytes` (tests/aot.py: compile one kernel, count its spills). On a GPU it
    also isolates a case that may fault (random_features_cases.py's small head dims): a fault ends
    the child, not the CUDA context of the test worker. Skips when this Triton has no bundled ptxas."""
    import json
    import pathlib
    import subprocess
    import sys

    import pytest
    import triton

    if not (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # the default Triton 3.6 compiles with (3.9 warns)
    root = pathlib.Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "tests"), env.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
