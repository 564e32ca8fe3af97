"""HRC-LA causal forward, serial walk vs chunk-parallel (fast/hrc_la.py), on the GPU (< 60 s).

    python .scratch/hrc_sweep.py

B = 4, T = 8192, H = 16, D = 64, M = 256, bf16, causal, no grad. Prints: the whole op and the
kernels alone (_launch_fwd) for both paths, the prefix max (running_scale) against the old
torch.cummax over T, the new output against the old (bf16 rounding), and per-kernel times from
torch.profiler. Also the K = 256 linear-attention forward and the K = 512 comparator (two K = 256
launches, normalize=False) for target (a).
"""
import os
import sys

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402

import fast.hrc_la as fh  # noqa: E402
import fast._random_features as rf  # noqa: E402
import zoo.hrc_la as zh  # noqa: E402
from benchmarks.measure import time_ms  # noqa: E402

dev = torch.device("cuda")
B, T, H, D, M = 4, 8192, 16, 64, 256
g = torch.Generator(device=dev).manual_seed(0)
q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3))
omega = torch.stack([zh.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
tm = lambda f, reps=10: time_ms(f, dev, reps=reps, warmup=2, max_case_s=5.0)[0]
print(torch.cuda.get_device_name(), "PARALLEL_BT", fh.PARALLEL_BT, "tiles", fh._parallel_tiles(D, D, M))

# the host's per-token numbers, as _run computes them
s_u = D ** -0.25
a = (0.5 * s_u * s_u) * torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32) ** 2
c0 = a.new_full((B, H), rf.EMPTY_SCALE)
c_old = torch.maximum(torch.cummax(a, 1).values, c0[:, None])
c = rf.running_scale(a, c0, True)
print(f"prefix max: torch.cummax over T {tm(lambda: torch.maximum(torch.cummax(a, 1).values, c0[:, None])):.3f} ms, "
      f"running_scale (last dim) {tm(lambda: rf.running_scale(a, c0, True)):.3f} ms, equal: {torch.equal(c, c_old)}")

rel = lambda x, r: ((x.double() - r.double()).norm() / r.double().norm()).item()
launch = lambda: fh._launch_fwd(q, k, v, omega, a, c, None, None, None, c0, s_u, True, False, 64)
op = lambda: fh.hrc_la_chunk(q, k, v, omega)
res = {}
with torch.no_grad():
    for par in (False, True):
        fh.CHUNK_PARALLEL = par
        name = "parallel" if par else "serial"
        res[name] = (op()[0], launch()[:3])
        print(f"{name:8s}: whole op {tm(op):.3f} ms, kernels (_launch_fwd) {tm(launch):.3f} ms")
    fh.CHUNK_PARALLEL = True

with torch.no_grad():  # the chunk-parallel path's chunk and record dtype (BT 128 spills in phase 3: not tried)
    for bt, half in ((32, False), (64, False), (64, True)):
        fh.PARALLEL_BT, fh.HALF_RECORDS = bt, half
        o_var = op()[0].float()
        print(f"parallel, PARALLEL_BT = {bt}, HALF_RECORDS = {half}: kernels {tm(launch):.3f} ms, "
              f"whole op {tm(op):.3f} ms, o vs serial rel RMS {rel(o_var, res['serial'][0].float()):.2e}")
    fh.PARALLEL_BT, fh.HALF_RECORDS = 64, False

o_new, o_old = res["parallel"][0].float(), res["serial"][0].float()
print(f"o new vs old: rel RMS {rel(o_new, o_old):.2e}, worst {((o_new - o_old).abs().max() / o_old.abs().max()).item():.2e}"
      " (bf16 output: ~4e-3 per element)")
for n, x, y in zip(("num", "den", "mass"), res["parallel"][1], res["serial"][1]):
    print(f"  {n}: rel RMS {rel(x, y):.2e}")
assert rel(o_new, o_old) < 2e-2, "new forward differs from the old beyond bf16 rounding"

# target (a): the linear attention on precomputed features
try:
    import fast.linear_attention as fla
    fq, fk = ([torch.rand(B, T, H, M, device=dev, generator=g).bfloat16() for _ in range(2)] for _ in range(2))
    with torch.no_grad():
        t1 = tm(lambda: fla.linear_attention_chunk(fq[0], fk[0], v, normalize=True))
        t2 = tm(lambda: (fla.linear_attention_chunk(fq[0], fk[0], v, normalize=False),
                         fla.linear_attention_chunk(fq[1], fk[1], v, normalize=False)))
        t_op = tm(op)
    print(f"linear K = 256 normalize=True {t1:.3f} ms; K = 512 as 2 x K = 256 normalize=False {t2:.3f} ms; "
          f"hrc / that = {t_op / t2:.2f}x (target <= 1.5x); target (b) at B = 4, T = 8192: <= ~1.9 ms")
except Exception as e:
    print("linear attention comparator failed:", type(e).__name__, e)

# per-kernel times
from torch.profiler import ProfilerActivity, profile  # noqa: E402
with torch.no_grad():
    for par in (False, True):
        fh.CHUNK_PARALLEL = par
        op()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                op()
            torch.cuda.synchronize()
        print(f"--- {'parallel' if par else 'serial'} (5 calls; per call = total / 5)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
fh.CHUNK_PARALLEL = True
