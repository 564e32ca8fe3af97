"""Delta family (issue 3): where the gated and DeltaProduct ops spend their extra time, and step-2 tiles.
B=4, T=8192, H=16, K=V=128, bf16 (DeltaProduct: 4096 tokens x 2 micro-steps)."""
import os, sys, time
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
import zoo.gated_deltanet as zg, zoo.deltaproduct as zdp
dev = torch.device("cuda")
g0 = torch.Generator(device=dev).manual_seed(0)
B, T, H, D = 4, 8192, 16, 128
def mk(Tm, n=1, gated=False):
    q = torch.randn(B, Tm, H, D, device=dev, generator=g0).bfloat16()
    k = F.normalize(torch.randn(B, Tm * n, H, D, device=dev, generator=g0), dim=-1).bfloat16()
    v = torch.randn(B, Tm * n, H, D, device=dev, generator=g0).bfloat16()
    beta = torch.rand(B, Tm * n, H, device=dev, generator=g0).bfloat16()
    g = (-torch.rand(B, Tm, H, device=dev, generator=g0) * 0.1).bfloat16() if gated else None
    return q, k, v, g, beta
T_ = lambda f: time_ms(f, dev, reps=30, warmup=3, max_case_s=3.0)[0]
cases = {
    "delta": (lambda x: fd.delta_rule_chunk(x[0], x[1], x[2], x[4])[0], mk(T)),
    "gated": (lambda x: fg.gated_delta_rule_chunk(x[0], x[1], x[2], x[3], x[4])[0], mk(T, gated=True)),
    "dp2": (lambda x: fp.gated_delta_product_chunk(x[0], x[1], x[2], x[3], x[4], num_householder=2)[0],
            mk(T // 2, 2, gated=True)),
}
def fwd_fb(f, x):
    with torch.no_grad():
        a = T_(lambda: f(x))
    xs = [None if t is None else t.detach().requires_grad_() for t in x]
    do = torch.randn(B, x[0].shape[1], H, D, device=dev, generator=g0).bfloat16()
    def fb():
        f(xs).backward(do)
    return a, T_(fb)
SKIP_AB = os.environ.get("SKIP_AB") == "1"
print("== A. ops as they are (sync check where the op has one)", flush=True)
for name, (f, x) in (() if SKIP_AB else cases.items()):
    a, b = fwd_fb(f, x)
    print(f"{name:6s} fwd {a:.3f} ms  fwd+bwd {b:.3f} ms", flush=True)
print("== B. the g <= 0 check (a host sync): none, before the kernels (the old order), after (now)", flush=True)
real_g, real_dp = zg._check_log_decay, zdp._check_log_decay
zg._check_log_decay = zdp._check_log_decay = lambda g: None
for name in (() if SKIP_AB else ("gated", "dp2")):
    f, x = cases[name]
    a, b = fwd_fb(f, x)
    print(f"{name:6s} no check: fwd {a:.3f} ms  fwd+bwd {b:.3f} ms", flush=True)
    a, b = fwd_fb(lambda x: (real_g(x[3]), f(x))[1], x)
    print(f"{name:6s} check before the kernels: fwd {a:.3f} ms  fwd+bwd {b:.3f} ms", flush=True)
zg._check_log_decay, zdp._check_log_decay = real_g, real_dp
print("== C. host time of one call (tiny input B=1,T=64: launch-bound), us", flush=True)
for name, (f, x) in cases.items():
    n = 2 if name == "dp2" else 1
    xt = [None if t is None else t[:1, :(64 if i in (0, 3) else 64 * n)].contiguous() for i, t in enumerate(x)]
    for _ in range(5): f(xt)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(50): f(xt)
    t1 = time.perf_counter(); torch.cuda.synchronize()
    print(f"{name:6s} {1e6 * (t1 - t0) / 50:.0f} us a call (CPU side)", flush=True)
print("== D. per-kernel (torch.profiler, 10 calls fwd+bwd)", flush=True)
from torch.profiler import profile, ProfilerActivity
for name, (f, x) in cases.items():
    xs = [None if t is None else t.detach().requires_grad_() for t in x]
    do = torch.randn(B, x[0].shape[1], H, D, device=dev, generator=g0).bfloat16()
    for _ in range(2): f(xs).backward(do)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10): f(xs).backward(do)
        torch.cuda.synchronize()
    print(f"-- {name}", flush=True)
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:14]:
        print(f"   {e.key[:60]:60s} {e.device_time_total / 10 / 1000:.3f} ms/call  x{e.count // 10}", flush=True)
print("== E. step 2 (state walk + output) tiles: BV, warps, stages", flush=True)
q, k, v, _, beta = cases["delta"][1]; gate = cases["gated"][1][3]
s = D ** -0.5
real_tiles, real_ns = fd._tiles, fd.NUM_STAGES
for name, gg in (("delta", None), ("gated", gate)):
    w, u, A, _, gam = fd._chunk_wy_fwd(q, k, v, beta, gg, s, False, num_warps=4)
    ref = fd._chunk_state_fwd(q, k, w, u, gam, A, None, s, True, num_warps=4)[0]
    for bv in (16, 32, 64):
        for nw in (4, 8):
            for ns in (1, 2, 3):
                fd._tiles = lambda K, V, bv=bv: {**real_tiles(K, V), "BV": bv}
                fd.NUM_STAGES = ns
                try:
                    o = fd._chunk_state_fwd(q, k, w, u, gam, A, None, s, True, num_warps=nw)[0]
                    t2 = T_(lambda: fd._chunk_state_fwd(q, k, w, u, gam, A, None, s, True, num_warps=nw))
                    err = (o.float() - ref.float()).abs().max().item()
                    print(f"{name} step2 BV {bv} warps {nw} stages {ns}: {t2:.3f} ms (max diff {err:.1e})", flush=True)
                except Exception as e:
                    print(f"{name} step2 BV {bv} warps {nw} stages {ns}: failed {type(e).__name__} {str(e)[:120]}", flush=True)
    fd._tiles, fd.NUM_STAGES = real_tiles, real_ns
    t1 = T_(lambda: fd._chunk_wy_fwd(q, k, v, beta, gg, s, False, num_warps=4))
    print(f"{name} step1 at 4 warps: {t1:.3f} ms", flush=True)
