"""Issue 6 targets at B=1, H=32, D=64, T=131072, bf16: SDPA vs fast HyperAttention, fwd (both modes), causal fwd+bwd,
LSH kernel variants, per-kernel profile of the causal forward and forward+backward, errors on 256 rows."""
import os, sys, json, time
sys.path.insert(0, os.getcwd())
import torch
from torch.profiler import profile, ProfilerActivity
from benchmarks.measure import time_ms
import fast.hyper_attention as fh
import zoo.hyper_attention as zh
dev = torch.device("cuda")
B, H, D = 1, 32, 64
T = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
sdpa = torch.nn.functional.scaled_dot_product_attention
g = torch.Generator(device=dev).manual_seed(0)
q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3))
do = torch.randn_like(q)
proj = zh.lsh_projections(D, 8, seed=0, device=dev)
rec = {}


def t(name, step, reps=10):
    ms, n = time_ms(step, dev, reps=reps, warmup=2, max_case_s=8)
    rec[name] = ms
    print(f"{name}: {ms:.3f} ms ({n} reps)", flush=True)
    return ms


def fwd(fn):
    def step():
        with torch.no_grad():
            fn(q, k, v)
    return step


def fwdbwd(fn):
    xs = [x.detach().requires_grad_() for x in (q, k, v)]
    def step():
        fn(*xs).backward(do)
    return step


hyper = lambda causal: (lambda q, k, v: fh.hyper_attention_chunk(q, k, v, proj=proj, causal=causal))
flash = lambda causal: (lambda q, k, v: sdpa(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=causal).transpose(1, 2))
# LSH variants first (cheap)
qh = q.transpose(1, 2)
for tiles in ((32, 2, True), (16, 1, True), (64, 2, True)):
    fh.LSH_TILES = tiles
    t(f"lsh {tiles}", lambda: fh._lsh_codes(qh, proj.float()), reps=20)
best = min((rec[f"lsh {x}"], x) for x in ((32, 2, True), (16, 1, True), (64, 2, True)))[1]
fh.LSH_TILES = best
print("lsh tiles chosen", best, flush=True)
t("hyper noncausal fwd", fwd(hyper(False)))
t("hyper causal fwd", fwd(hyper(True)))
t0 = time.time(); fwdbwd(hyper(True))(); torch.cuda.synchronize(); print("first causal fwdbwd", time.time() - t0)
t("hyper causal fwdbwd", fwdbwd(hyper(True)), reps=5)
t("hyper noncausal fwdbwd", fwdbwd(hyper(False)), reps=5)
t("sdpa noncausal fwd", fwd(flash(False)), reps=5)
t("sdpa causal fwd", fwd(flash(True)), reps=5)
t("sdpa causal fwdbwd", fwdbwd(flash(True)), reps=3)
for a, b_ in (("noncausal fwd",) * 2, ("causal fwd",) * 2, ("causal fwdbwd",) * 2):
    print(f"speed-up {a}: {rec['sdpa ' + a] / rec['hyper ' + a]:.1f}x")
rows = torch.randperm(T, device=dev, generator=g)[:256]
for causal in (False, True):
    ref = fh._exact_rows(q, k, v, rows, causal)
    with torch.no_grad():
        o = hyper(causal)(q, k, v)
    got = torch.stack([o[0, rows, 0], o[0, rows, H - 1]]).double()
    rec[f"err causal={causal}"] = ((got - ref).norm() / ref.norm()).item()
    print(f"rel err causal={causal}: {rec[f'err causal={causal}']:.4g}")
for name, step, n in (("causal fwd", fwd(hyper(True)), 3), ("causal fwdbwd", fwdbwd(hyper(True)), 2)):
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    print(f"\n=== profile {name} (per call)")
    for e in sorted(p.key_averages(), key=lambda e: -e.device_time_total)[:12]:
        print(f"  {e.device_time_total / 1e3 / n:9.3f} ms  x{e.count // n:4d}  {e.key[:100]}")
out = os.environ.get("OUT")
if out:
    json.dump(dict(rec, T=T, B=B, H=H, D=D, lsh_tiles=best), open(os.path.join(out, "results", "hyper_bench.json"), "w"), indent=1)
