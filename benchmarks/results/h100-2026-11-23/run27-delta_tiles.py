"""Delta family tiles per kernel (issue 3). argv: case (delta|gated|dp2), kernel key of fast.deltanet._tiles
(or 'ops'). Times the op (fwd for state_fwd, fwd+bwd otherwise; grads reset to None, g check off) under
each candidate (BV, warps, stages) and prints the max abs difference of o and every gradient from the
rule's defaults. B=4, T=8192, H=16, K=V=128, bf16 (dp2: 4096 tokens x 2 micro-steps)."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
import zoo.gated_deltanet as zg, zoo.deltaproduct as zdp
case, key = sys.argv[1], sys.argv[2]
fd.R_IN_STEP2 = os.environ.get("R2") == "1"
print(f"(R_IN_STEP2 = {fd.R_IN_STEP2})", flush=True)
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
f, x = {
    "delta": (lambda x: fd.delta_rule_chunk(x[0], x[1], x[2], x[4])[0], mk(T)),
    "gated": (lambda x: fg.gated_delta_rule_chunk(x[0], x[1], x[2], x[3], x[4])[0], mk(T, gated=True)),
    "dp2": (lambda x: fp.gated_delta_product_chunk(x[0], x[1], x[2], x[3], x[4], num_householder=2)[0],
            mk(T // 2, 2, gated=True)),
}[case]
real_g, real_dp = zg._check_log_decay, zdp._check_log_decay
zg._check_log_decay = zdp._check_log_decay = lambda g: None
T_ = lambda fn: time_ms(fn, dev, reps=30, warmup=3, max_case_s=3.0)[0]
xs = [None if t is None else t.detach().requires_grad_() for t in x]
do = torch.randn(B, x[0].shape[1], H, D, device=dev, generator=g0).bfloat16()
def fb():
    for t in xs:
        if t is not None: t.grad = None
    f(xs).backward(do)
def outs():
    fb(); torch.cuda.synchronize()
    with torch.no_grad():
        o = f(x)
    return [o.float()] + [t.grad.float() for t in xs if t is not None]
real_tiles = fd._tiles
if key == "ops":
    with torch.no_grad():
        a = T_(lambda: f(x))
    print(f"{case} defaults, no g check: fwd {a:.3f} ms  fwd+bwd {T_(fb):.3f} ms", flush=True)
    zg._check_log_decay, zdp._check_log_decay = real_g, real_dp
    with torch.no_grad():
        a = T_(lambda: f(x))
    print(f"{case} defaults, with the g check: fwd {a:.3f} ms  fwd+bwd {T_(fb):.3f} ms", flush=True)
    sys.exit()
ref = outs()
cands = {
    "state_fwd": [(64, 4, 3), (32, 4, 3), (64, 8, 3), (32, 8, 3), (32, 4, 2)],
    "state_rec": [(32, 8, 2), (64, 4, 3), (64, 8, 3), (32, 4, 3), (32, 8, 3), (128, 8, 3)],
    "state_bwd": [(32, 8, 2), (64, 4, 3), (64, 8, 3), (32, 4, 3), (32, 8, 3), (128, 8, 3)],
    "dqkw": [(32, 8, 2), (32, 8, 3), (32, 4, 2), (32, 4, 3), (64, 8, 2), (64, 8, 3), (16, 4, 2)],
    "wy_bwd": [(32, 8, 2), (32, 8, 3), (32, 4, 2), (64, 8, 2), (16, 8, 2), (32, 8, 1)],
    # step 4 with its K slice BKS too: (BKS, BV, warps, stages)
    "dqkw_bks": [(64, 64, 8, 2), (128, 64, 8, 2), (128, 32, 8, 2), (128, 64, 8, 3), (32, 64, 4, 2), (32, 64, 8, 2),
                 (32, 32, 4, 3), (128, 32, 8, 3)],
}[key]
for cand in cands:
    bks, (bv, nw, ns) = (cand[0], cand[1:]) if key == "dqkw_bks" else (None, cand)
    if key == "dqkw_bks":
        fd._tiles = lambda K, V, c=cand: {**real_tiles(K, V), "BKS": c[0],
                                          "dqkw": dict(BV=c[1], num_warps=c[2], num_stages=c[3])}
    else:
        fd._tiles = lambda K, V, c=(bv, nw, ns): {**real_tiles(K, V), key: dict(BV=c[0], num_warps=c[1], num_stages=c[2])}
    try:
        got = outs()
        diff = max((a - b).abs().max().item() for a, b in zip(got, ref))
        if key == "state_fwd":
            with torch.no_grad():
                t = T_(lambda: f(x))
        else:
            t = T_(fb)
        print(f"{case} {key} BKS {bks} BV {bv} warps {nw} stages {ns}: {t:.3f} ms ({'fwd' if key == 'state_fwd' else 'fwd+bwd'}), max diff vs default {diff:.1e}", flush=True)
    except Exception as e:
        print(f"{case} {key} BKS {bks} BV {bv} warps {nw} stages {ns}: FAILED {type(e).__name__}: {str(e)[:150]}", flush=True)
        break
