"""Run 54 (session 14): HRC-LA phase 3 (_hrc_la_chunk_out_kernel) under a register cap (Triton's
maxnreg launch option) for more blocks an SM: OUT_TILE x maxnreg, B 4 T 8192 and B 1 T 65536, H 16,
D 64, M 256, bf16. ptxas (Triton 3.6, sm_90): (32,4,2) 255 regs + 152 B spill; at 168: 600 B;
(16,4,2,168) 424; (16,8,2,128) 288; (32,8,2,128) 424; (32,4,2,128) 968."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch
from torch.profiler import ProfilerActivity, profile
import fast.hrc_la as fh
import zoo.hrc_la as zh
from benchmarks.measure import time_ms

dev = torch.device("cuda")
H, D, M = 16, 64, 256
g = torch.Generator(device=dev).manual_seed(0)
omega = torch.stack([zh.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
tm = lambda f, reps=20: time_ms(f, dev, reps=reps, warmup=3, max_case_s=4.0)[0]
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
real_launch = fh.launch
CAP = [None]
def capped(kern, grid, *a, **kw):
    if kern is fh._hrc_la_chunk_out_kernel and CAP[0]:
        kw = dict(kw, maxnreg=CAP[0])
    return real_launch(kern, grid, *a, **kw)
fh.launch = capped


def kernel_times(op, calls=3):
    op(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            op()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us and e.key.startswith("_hrc_la"):
            out[e.key.replace("_hrc_la_chunk_", "").replace("_kernel", "")] = us / 1e3 / calls
    return ", ".join(f"{n} {t:.3f}" for n, t in out.items())


data = lambda B, T: [torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3)]
VARIANTS = [((32, 4, 2), None), ((32, 4, 2), 168), ((16, 4, 2), 168), ((32, 4, 1), 168), ((16, 8, 2), 128),
            ((32, 8, 2), 128), ((32, 4, 2), 128)]
DEF = fh.OUT_TILE
with torch.no_grad():
    q1, k1, v1 = data(1, 1024)
    base = fh.hrc_la_chunk(q1, k1, v1, omega)[0]
    for B, T in ((4, 8192), (1, 65536)):
        q, k, v = data(B, T)
        for tile, cap in VARIANTS:
            fh.OUT_TILE, CAP[0] = tile, cap
            try:
                same = torch.equal(fh.hrc_la_chunk(q1, k1, v1, omega)[0], base) if tile[0] == DEF[0] else "other BM"
                op = lambda: fh.hrc_la_chunk(q, k, v, omega)
                print(f"B {B} T {T} out {tile} maxnreg {cap}: op {tm(op):.3f} ms | {kernel_times(op)} | same as default: {same}",
                      flush=True)
            except Exception as e:
                print(f"B {B} T {T} out {tile} maxnreg {cap}: FAILED {type(e).__name__}: {str(e)[:150]}", flush=True)
        fh.OUT_TILE, CAP[0] = DEF, None
        del q, k, v
