"""Run 53 (session 13): phase 3 of the fast HRC-LA forward with 32 queries a program (OUT_QUERIES) against 64,
at several phase-3 tiles; B 4, T 8192 and B 1, T 65536."""
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


def out_time(op, calls=3):
    op(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            op()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us and "chunk_out" in e.key:
            return us / 1e3 / calls


data = lambda B, T: [torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3)]
q1, k1, v1 = data(1, 1024)
VARIANTS = [(nq, tile) for tile in ((32, 4, 2), (16, 4, 2), (64, 4, 2), (32, 4, 3), (32, 8, 2)) for nq in (64, 32)]
with torch.no_grad():
    ref = zh.hrc_la_chunk(q1.double(), k1.double(), v1.double(), omega.double(), causal=True)[0]
    for nq in (64, 32):
        fh.OUT_QUERIES = nq
        o = fh.hrc_la_chunk(q1, k1, v1, omega)[0]
        print(f"OUT_QUERIES {nq}: rel RMS vs zoo f64 (T = 1024) {((o.double() - ref).norm() / ref.norm()).item():.3e}", flush=True)
    for B, T in ((4, 8192), (1, 65536)):
        q, k, v = data(B, T)
        for nq, tile in (VARIANTS if B == 4 else VARIANTS[:4]):
            fh.OUT_QUERIES, fh.OUT_TILE = nq, tile
            op = lambda: fh.hrc_la_chunk(q, k, v, omega)
            try:
                print(f"B {B} T {T} queries {nq} out {tile}: op {tm(op):.3f} ms | phase 3 {out_time(op):.3f}", flush=True)
            except Exception as e:
                print(f"B {B} T {T} queries {nq} out {tile}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
        fh.OUT_QUERIES, fh.OUT_TILE = 64, (32, 4, 2)
        del q, k, v
