"""Based causal forward on the GPU: the serial sweep (CHUNK_PARALLEL = False) against the chunk-parallel
path (state walk + read-out), whole op and per kernel, at issue 4's shape; then tile variants.
Run from the repo root: python .scratch/based_sweep.py   (< 60 s on an H100)."""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import torch
import triton

import fast.based as fb
from benchmarks.specs import BASED

start = time.perf_counter()
x = BASED.make_inputs(4, 8192, 16, 128, torch.bfloat16, "cuda", True, 0)
op = lambda: BASED.call(fb.based_chunk, x, True)  # noqa: E731
bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=80)  # noqa: E731


def per_kernel(fn, label):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and "based" in e.key:
            print(f"    {label} kernel {e.key[:40]:40s} {e.device_time / 1e3:.3f} ms (x{e.count // 5})")


fb.CHUNK_PARALLEL = False
o_old = op()
t_old = bench(op)
print(f"sweep (old)     whole op {t_old:.3f} ms")
per_kernel(op, "sweep")
fb.CHUNK_PARALLEL = True
o_new = op()
t_new = bench(op)
err = (o_new.float() - o_old.float()).abs().max().item()
rel = ((o_new.float() - o_old.float()).norm() / o_old.float().norm()).item()
print(f"parallel (rule) whole op {t_new:.3f} ms  (max |new - old| {err:.2e}, rel rms {rel:.2e}; "
      f"bf16 ulp at max|o| {o_old.float().abs().max().item() * 2 ** -8:.2e})  target 1.2 ms")
per_kernel(op, "parallel")

q, k, v = x["q"], x["k"], x["v"]
# (BT, BR, BV state, warps state, BV out, warps out); the rule first
VARIANTS = [
    (128, 32, 128, 4, 128, 8),
    (128, 32, 64, 4, 128, 8),
    (128, 32, 128, 8, 128, 8),
    (128, 32, 128, 4, 64, 8),
    (128, 32, 128, 4, 64, 4),
    (128, 16, 128, 4, 128, 8),
    (64, 32, 128, 4, 128, 8),
    (64, 32, 128, 4, 128, 4),
    (256, 32, 128, 8, 64, 8),
]
for tiles in VARIANTS:
    try:
        fn = lambda: fb._based_parallel_fwd(q, k, v, None, None, 16 ** -0.5, True, False, parallel_tiles=tiles)[0]  # noqa: E731
        e = (fn().float() - o_old.float()).abs().max().item()
        print(f"  variant (BT, BR, BV1, w1, BV3, w3) = {tiles}: {bench(fn):.3f} ms  (max |diff| vs sweep {e:.2e})")
    except Exception as ex:  # noqa: BLE001
        print(f"  variant {tiles} FAILED {type(ex).__name__}: {str(ex)[:200]}")
print(f"total {time.perf_counter() - start:.0f} s")
