"""Performer (FAVOR+) causal forward: the serial walk vs the chunk-parallel two-launch path, on the GPU (< 60 s).

    python benchmarks/results/h100-2026-11-23/run24-perf_sweep.py        (from the repository root)

B = 4, T = 8192, H = 16, D = 64, M = 256, bf16, causal, no grad. One line per variant: the whole op
(fast.performer.performer_chunk), the per-kernel times (torch.profiler, per call) and the output's
relative RMS error against the zoo in float64 at B = 1, T = 1024 (same switches).
"""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import fast.performer as fp  # noqa: E402
import zoo.performer as zp  # noqa: E402
from benchmarks.measure import time_ms  # noqa: E402

t_start = time.time()
dev = torch.device("cuda")
B, T, H, D, M = 4, 8192, 16, 64, 256
g = torch.Generator(device=dev).manual_seed(0)
omega = torch.stack([zp.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3))
tm = lambda f, reps=10: time_ms(f, dev, reps=reps, warmup=2, max_case_s=3.0)[0]
print(torch.cuda.get_device_name(), flush=True)

# accuracy problem: B = 1, T = 1024, same dims; the zoo chunk form in float64 is the reference
qs, ks, vs = (x[:1, :1024].contiguous() for x in (q, k, v))
with torch.no_grad():
    ref = zp.performer_chunk(qs.double(), ks.double(), vs.double(), omega.double(), causal=True)[0]
rel = lambda x: ((x.double() - ref).norm() / ref.norm()).item()

SWITCHES = ("CHUNK_PARALLEL", "PARALLEL_BT", "WALK_TILE", "OUT_TILE", "HALF_RECORDS", "FEATURE_DOTS_16")
DEFAULT = {n: getattr(fp, n) for n in SWITCHES}
VARIANTS = [
    ("serial (CHUNK_PARALLEL off)", dict(DEFAULT, CHUNK_PARALLEL=False)),
    ("parallel default", DEFAULT),
    ("FEATURE_DOTS_16 off", dict(DEFAULT, FEATURE_DOTS_16=False)),
    ("HALF_RECORDS on", dict(DEFAULT, HALF_RECORDS=True)),
    ("out (16, 4, 2)", dict(DEFAULT, OUT_TILE=(16, 4, 2))),
    ("out (32, 8, 2)", dict(DEFAULT, OUT_TILE=(32, 8, 2))),
    ("walk (64, 4, 2)", dict(DEFAULT, WALK_TILE=(64, 4, 2))),
]


def setv(cfg):
    for n, x in cfg.items():
        setattr(fp, n, x)


def kernel_times(op, calls=3):
    """{short kernel name: ms per call} from torch.profiler (every kernel of the op)."""
    op()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            op()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if "performer" in e.key and us:
            out[e.key.replace("_performer_", "").replace("_kernel", "")] = us / 1e3 / calls
    return out


with torch.no_grad():
    for name, cfg in VARIANTS:
        setv(cfg)
        try:
            op = lambda: fp.performer_chunk(q, k, v, omega)
            err = rel(fp.performer_chunk(qs, ks, vs, omega)[0])
            ms = tm(op)
            per = ", ".join(f"{n} {t:.3f}" for n, t in sorted(kernel_times(op).items()))
            print(f"{name:30s}: op {ms:7.3f} ms | kernels {per} | rel RMS vs zoo f64 (T=1024) {err:.2e}", flush=True)
        except Exception as e:
            print(f"{name:30s}: failed {type(e).__name__}: {str(e)[:160]}", flush=True)
    setv(DEFAULT)
print(f"total {time.time() - t_start:.1f} s")
