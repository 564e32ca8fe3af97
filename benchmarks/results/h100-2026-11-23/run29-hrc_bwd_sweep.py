"""HRC-LA causal backward, chunk-parallel (fast/hrc_la.py PARALLEL_BWD), on the GPU (< 90 s).

    python .scratch/hrc_bwd_sweep.py

B = 4, T = 8192, H = 16, D = 64, M = 256, bf16, causal. One line per variant: the forward alone,
then fwd+bwd (torch.autograd.grad of o against a fixed random cotangent) with PARALLEL_BWD on at the
default tiles and 3-5 tile variants, fixed Ω (no dΩ) and learnable Ω, and the serial backward once;
per-kernel times per call (torch.profiler key_averages; the walk runs twice in fwd+bwd: forward and
the backward's recompute, summed), then the gradients' relative RMS error against the zoo in float64
at B = 1, T = 1024 for the default (learnable Ω: dq, dk, dv, dΩ).
"""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import fast.hrc_la as fh  # noqa: E402
import zoo.hrc_la as zh  # noqa: E402
from benchmarks.measure import time_ms  # noqa: E402

t_start = time.time()
SMOKE = os.environ.get("TRITON_INTERPRET") == "1"  # a CPU smoke run of the script itself, tiny sizes
dev = torch.device("cpu" if SMOKE else "cuda")
B, T, H, D, M = (1, 80, 2, 16, 32) if SMOKE else (4, 8192, 16, 64, 256)
N_ERR = 80 if SMOKE else 1024
g = torch.Generator(device=dev).manual_seed(0)
omega = torch.stack([zh.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16().requires_grad_() for _ in range(3))
do = torch.randn(B, T, H, D, device=dev, generator=g).bfloat16()
omega_l = omega.clone().requires_grad_()
tm = lambda f, reps=10: time_ms(f, dev, reps=reps, warmup=2, max_case_s=3.0)[0]
print("cpu smoke" if SMOKE else torch.cuda.get_device_name(), flush=True)

SWITCHES = ("PARALLEL_BWD", "WALK_TILE", "DWALK_TILE", "BWD_TILE", "HALF_RECORDS", "FAST_TRIG", "DV_PER_TILE")
DEFAULT = {n: getattr(fh, n) for n in SWITCHES}


def setv(cfg):
    for n, x in cfg.items():
        setattr(fh, n, x)


def fwd_bwd(om, qq=q, kk=k, vv=v, dout=do):
    o = fh.hrc_la_chunk(qq, kk, vv, om)[0]
    leaves = (qq, kk, vv) + ((om,) if om.requires_grad else ())
    return torch.autograd.grad(o, leaves, dout)


def kernel_times(op, calls=2):
    """{short kernel name: ms per call} from torch.profiler."""
    op()
    if SMOKE:
        return {}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            op()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if "hrc_la" in e.key and us:
            out[e.key.replace("_hrc_la_chunk_", "").replace("_kernel", "")] = us / 1e3 / calls
    return out


def line(name, op, reps=10):
    if time.time() - t_start > 80 and not SMOKE:
        print(f"{name:34s}: skipped (time)", flush=True)
        return
    try:
        ms = tm(op, reps)
        per = ", ".join(f"{n} {t:.3f}" for n, t in sorted(kernel_times(op, 1 if ms > 20 else 2).items()))
        print(f"{name:34s}: {ms:7.3f} ms | kernels {per}", flush=True)
    except Exception as e:  # a tile the compiler refuses (out of shared memory, ...)
        print(f"{name:34s}: failed {type(e).__name__}: {str(e)[:160]}", flush=True)


with torch.no_grad():
    line("forward alone", lambda: fh.hrc_la_chunk(q, k, v, omega))
line("fwd+bwd default, fixed Ω", lambda: fwd_bwd(omega))
line("fwd+bwd default, learnable Ω", lambda: fwd_bwd(omega_l))

# the gradients' error against the zoo in float64 (B = 1, T = 1024, learnable Ω), default switches
qs, ks, vs, dos = (x[:1, :N_ERR].detach().contiguous() for x in (q, k, v, do))
leaves64 = [x.double().requires_grad_() for x in (qs, ks, vs, omega)]
ref = torch.autograd.grad(zh.hrc_la_chunk(*leaves64, causal=True)[0], leaves64, dos.double())
leaves = [x.clone().requires_grad_() for x in (qs, ks, vs)]
got = fwd_bwd(omega.clone().requires_grad_(), *leaves, dos)
err = ", ".join(f"d{n} {((a.double() - r).norm() / r.norm()).item():.2e}" for n, a, r in zip(("q", "k", "v", "Ω"), got, ref))
print(f"default vs zoo f64 (B=1, T={N_ERR}, learnable Ω): rel RMS {err}", flush=True)
setv(dict(DEFAULT, PARALLEL_BWD=False))
got = fwd_bwd(omega.clone().requires_grad_(), *leaves, dos)
err = ", ".join(f"d{n} {((a.double() - r).norm() / r.norm()).item():.2e}" for n, a, r in zip(("q", "k", "v", "Ω"), got, ref))
print(f"serial  vs zoo f64 (B=1, T={N_ERR}, learnable Ω): rel RMS {err}", flush=True)
line("fwd+bwd serial (PARALLEL_BWD off), learnable Ω", lambda: fwd_bwd(omega_l), reps=2)
setv(DEFAULT)
VARIANTS = [
    ("fwd+bwd BWD_TILE (16, 4, 1)", dict(DEFAULT, BWD_TILE=(16, 4, 1)), omega),
    ("fwd+bwd BWD_TILE (32, 8, 1)", dict(DEFAULT, BWD_TILE=(32, 8, 1)), omega),
    ("fwd+bwd BWD_TILE (16, 8, 2)", dict(DEFAULT, BWD_TILE=(16, 8, 2)), omega),
    ("fwd+bwd DV_PER_TILE, BWD (16, 4, 1)", dict(DEFAULT, DV_PER_TILE=True, BWD_TILE=(16, 4, 1)), omega),
    ("fwd+bwd DV_PER_TILE, BWD (16, 8, 1)", dict(DEFAULT, DV_PER_TILE=True), omega),
    ("fwd+bwd DWALK_TILE (16, 4, 2)", dict(DEFAULT, DWALK_TILE=(16, 4, 2)), omega),
    ("fwd+bwd HALF_RECORDS on", dict(DEFAULT, HALF_RECORDS=True), omega),
]
for name, cfg, om in VARIANTS:
    setv(cfg)
    line(name, lambda: fwd_bwd(om))
setv(DEFAULT)
print(f"sweep took {time.time() - t_start:.0f} s", flush=True)
