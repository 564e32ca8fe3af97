"""First-call latency: the wall time of an implementation's very first call, compilation and
autotuning included, as a user meets it.

`python -m benchmarks.first_call --method m --impl i --B .. --T .. --H .. --D .. --dtype ..
--causal 1 --direction fwdbwd` runs in a fresh process that the harness starts with an empty
TRITON_CACHE_DIR and an empty TORCHINDUCTOR_CACHE_DIR, so nothing compiled earlier is reused.
Importing torch and the modules, making the inputs, starting CUDA and Triton's one-time driver
build (one trivial unrelated kernel) happen before the clock starts; the clock covers one forward (under no_grad for `fwd`) or one forward + backward, up to
the device synchronising. The last line of stdout is `FIRST_CALL {"first_call_s": ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MARK = "FIRST_CALL "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start_triton(device) -> None:
    """Launch one trivial Triton kernel, unrelated to the op: on its first use in an empty cache,
    Triton builds its own driver utilities with the C compiler (seconds), once per installation
    and shared by every Triton op. That is not the op's compilation, so it stays off the clock;
    the op's kernels and their launchers still compile from nothing."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _touch(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1)

    x = torch.zeros(1, device=device)
    _touch[(1,)](x)
    torch.cuda.synchronize(device)


def _run(args) -> float:
    import torch

    from benchmarks import impls, specs
    from benchmarks.measure import DTYPES

    spec = specs.all_specs()[args.method]
    device = torch.device(args.device)
    causal = bool(args.causal)
    fn = impls.build(spec, args.impl, device, causal, (args.B, args.T, args.H, args.D))
    x = spec.make_inputs(args.B, args.T, args.H, args.D, DTYPES[args.dtype], device, causal, args.seed)
    if args.direction == "fwdbwd":
        for name in spec.grad_inputs:
            x[name].requires_grad_(True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.ones(1, device=device).sum().item()  # start the CUDA context before the clock
        _start_triton(device)
    sync()
    t0 = time.perf_counter()
    if args.direction == "fwd":
        with torch.no_grad():
            o = fn(x, causal)
    else:
        o = fn(x, causal)
        o.backward(torch.ones_like(o))
    sync()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True)
    p.add_argument("--impl", required=True)
    for n in ("B", "T", "H", "D"):
        p.add_argument(f"--{n}", type=int, required=True)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--causal", type=int, default=1)
    p.add_argument("--direction", choices=("fwd", "fwdbwd"), default="fwd")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    s = _run(args)
    print(MARK + json.dumps({"first_call_s": s}), flush=True)


def measure(method: str, impl: str, shape, dtype: str, causal: bool, direction: str, device: str,
            timeout_s: float) -> tuple[float | None, str, bool]:
    """Run the module above in a fresh process with empty compile caches; (seconds, note, timed out)."""
    B, T, H, D = shape
    cmd = [sys.executable, "-m", "benchmarks.first_call", "--method", method, "--impl", impl,
           "--B", str(B), "--T", str(T), "--H", str(H), "--D", str(D), "--dtype", dtype,
           "--causal", str(int(causal)), "--direction", direction, "--device", device]
    with tempfile.TemporaryDirectory(prefix="bench-first-call-") as tmp:
        env = dict(os.environ)
        env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton")
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        try:
            r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"first call did not finish within {timeout_s:g} s", True
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])["first_call_s"], "", False
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"first-call process failed (rc {r.returncode}): {tail[:300]}", False


if __name__ == "__main__":
    main()
