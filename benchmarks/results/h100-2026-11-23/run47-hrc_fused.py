"""Run 47 (session 13): fast HRC-LA forward with o = num / max(den, eps·n) divided in phase 3 (and
the mass computed before the frequency loop), against the code of 1dedd13 (.scratch/fast_old, the
same kernels with the division on the host), at the issue's two sizes; per-kernel times; walk tiles
at B = 1, T = 65536 (the walk's grid there is 8 tiles x 16 heads = 128 programs); phase-3 tiles."""
import os, sys
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), ".scratch"))
import torch
from torch.profiler import ProfilerActivity, profile
import fast.hrc_la as fh
import fast_old.hrc_la as fo
import zoo.hrc_la as zh
from benchmarks.measure import time_ms

dev = torch.device("cuda")
H, D, M = 16, 64, 256
g = torch.Generator(device=dev).manual_seed(0)
omega = torch.stack([zh.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
tm = lambda f, reps=20: time_ms(f, dev, reps=reps, warmup=3, max_case_s=4.0)[0]
print(torch.cuda.get_device_name(), torch.__version__, flush=True)


def kernel_times(op, calls=3):
    op(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            op()
        torch.cuda.synchronize()
    out, total = {}, 0.0
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us and e.key.startswith("_hrc_la"):
            out[e.key.replace("_hrc_la_chunk_", "").replace("_kernel", "")] = us / 1e3 / calls
        total += us / 1e3 / calls if us else 0.0
    out["all kernels"] = total
    return ", ".join(f"{n} {t:.3f}" for n, t in out.items())


def data(B, T):
    return [torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3)]

# accuracy: T = 1024 against the zoo in float64
q1, k1, v1 = data(1, 1024)
with torch.no_grad():
    ref = zh.hrc_la_chunk(q1.double(), k1.double(), v1.double(), omega.double(), causal=True)[0]
    for name, mod in (("old", fo), ("new", fh)):
        o = mod.hrc_la_chunk(q1, k1, v1, omega)[0]
        print(f"{name}: rel RMS vs zoo f64 (T = 1024) {((o.double() - ref).norm() / ref.norm()).item():.3e}", flush=True)

with torch.no_grad():
    for B, T in ((4, 8192), (1, 65536)):
        q, k, v = data(B, T)
        for name, mod in (("old (1dedd13)", fo), ("new", fh)):
            op = lambda: mod.hrc_la_chunk(q, k, v, omega)
            print(f"B {B} T {T} {name:14s}: op {tm(op):.3f} ms | {kernel_times(op)}", flush=True)
        del q, k, v


    SW = ("WALK_TILE", "OUT_TILE")
    DEF = {n: getattr(fh, n) for n in SW}
    for B, T, variants in ((1, 65536, [("walk", (16, 4, 2)), ("walk", (16, 2, 2)), ("walk", (64, 4, 2)), ("walk", (32, 4, 3)), ("walk", (32, 4, 1))]),
                           (4, 8192, [("out", (64, 4, 2)), ("out", (32, 8, 2)), ("out", (16, 4, 2)), ("out", (32, 4, 3)), ("out", (64, 8, 2))])):
        q, k, v = data(B, T)
        for which, tile in variants:
            setattr(fh, which.upper() + "_TILE", tile)
            try:
                op = lambda: fh.hrc_la_chunk(q, k, v, omega)
                print(f"B {B} T {T} {which} {tile}: op {tm(op):.3f} ms | {kernel_times(op)}", flush=True)
            except Exception as e:
                print(f"B {B} T {T} {which} {tile}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
            for n, x in DEF.items():
                setattr(fh, n, x)
        del q, k, v
