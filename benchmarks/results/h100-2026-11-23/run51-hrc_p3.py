"""Run 51 (session 13): phase 3 of the fast HRC-LA forward: bf16 records fed to the read-out as stored
(HALF_RECORDS with record_operand), phase-3 stages; B 4, T 8192 and B 1, T 65536."""
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
q1, k1, v1 = data(1, 1024)
VARIANTS = [("default", {}), ("HALF_RECORDS", dict(HALF_RECORDS=True)), ("out (32, 4, 1)", dict(OUT_TILE=(32, 4, 1))),
            ("HALF_RECORDS, out (32, 4, 3)", dict(HALF_RECORDS=True, OUT_TILE=(32, 4, 3))),
            ("HALF_RECORDS, out (64, 4, 2)", dict(HALF_RECORDS=True, OUT_TILE=(64, 4, 2)))]
DEF = {n: getattr(fh, n) for n in ("HALF_RECORDS", "OUT_TILE")}
with torch.no_grad():
    ref = zh.hrc_la_chunk(q1.double(), k1.double(), v1.double(), omega.double(), causal=True)[0]
    for name, cfg in VARIANTS:
        for n, x in cfg.items():
            setattr(fh, n, x)
        o = fh.hrc_la_chunk(q1, k1, v1, omega)[0]
        print(f"{name}: rel RMS vs zoo f64 (T = 1024) {((o.double() - ref).norm() / ref.norm()).item():.3e}", flush=True)
        for n, x in DEF.items():
            setattr(fh, n, x)
    for B, T in ((4, 8192), (1, 65536)):
        q, k, v = data(B, T)
        for name, cfg in VARIANTS:
            for n, x in cfg.items():
                setattr(fh, n, x)
            op = lambda: fh.hrc_la_chunk(q, k, v, omega)
            print(f"B {B} T {T} {name}: op {tm(op):.3f} ms | {kernel_times(op)}", flush=True)
            for n, x in DEF.items():
                setattr(fh, n, x)
        del q, k, v
    if len(sys.argv) > 1:  # one forward for ncu
        q, k, v = data(4, 8192)
        for _ in range(2):
            fh.hrc_la_chunk(q, k, v, omega)
        torch.cuda.synchronize()
