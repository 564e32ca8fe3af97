"""Run 49 (session 13): fast HRC-LA forward, the stabiliser and o = num/den in the kernels, the split walk
(_launch_walk) for small B·H; walk tiles at the issue's two sizes; against 1dedd13 (.scratch/fast_old)."""
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


data = lambda B, T: [torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3)]
q1, k1, v1 = data(1, 1024)
with torch.no_grad():
    ref = zh.hrc_la_chunk(q1.double(), k1.double(), v1.double(), omega.double(), causal=True)[0]
    for ns in (1, 4):
        fh.WALK_SEGMENTS = ns
        o = fh.hrc_la_chunk(q1, k1, v1, omega)[0]
        print(f"WALK_SEGMENTS {ns}: rel RMS vs zoo f64 (T = 1024) {((o.double() - ref).norm() / ref.norm()).item():.3e}", flush=True)
    fh.WALK_SEGMENTS = None

DEF = fh.WALK_TILE
with torch.no_grad():
    for B, T in ((4, 8192), (1, 65536)):
        q, k, v = data(B, T)
        op = lambda: fo.hrc_la_chunk(q, k, v, omega)
        print(f"B {B} T {T} old (1dedd13): op {tm(op):.3f} ms | {kernel_times(op)}", flush=True)
        for tile in ((64, 4, 2), (32, 4, 2), (16, 4, 2), (64, 8, 2), (64, 4, 3)):
            for ns in ((None,) if B == 4 else (None, 1, 2, 8)):
                fh.WALK_TILE, fh.WALK_SEGMENTS = tile, ns
                try:
                    op = lambda: fh.hrc_la_chunk(q, k, v, omega)
                    print(f"B {B} T {T} walk {tile} segments {ns}: op {tm(op):.3f} ms | {kernel_times(op)}", flush=True)
                except Exception as e:
                    print(f"B {B} T {T} walk {tile} segments {ns}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
        fh.WALK_TILE, fh.WALK_SEGMENTS = DEF, None
        del q, k, v

q, k, v = (x.requires_grad_() for x in data(4, 8192))
do = torch.randn_like(v)
for name, mod in (("old (1dedd13)", fo), ("new", fh)):
    op = lambda: mod.hrc_la_chunk(q, k, v, omega)[0].backward(do)
    print(f"B 4 T 8192 fwd+bwd {name:14s}: {tm(op, reps=5):.3f} ms", flush=True)
