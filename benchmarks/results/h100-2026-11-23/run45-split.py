"""Session 12 (run 45): step 1 split in two kernels (solve: X = (I + A)⁻¹ stored; apply: R, W, U), X in fp32 (WY_SPLIT 1) or the input dtype (2), at several warps, against HEAD. Before that, run 44: step 1 of fast/deltanet.py with whole-chunk products (WY_FULL 1: W and U as
[64, 64] x [64, D] wgmma products from X assembled in registers; 2: A too, from one K Kᵀ, only the
solve on 16×16 blocks) at 4 and 8 warps and with maxnreg, against HEAD's kernel. Times step 1 (with
and without storing X), the forward and the backward; max |diff| against HEAD. B=4, T=8192, H=16,
K=V=128, bf16, delta and gated; DeltaProduct n_h = 2 forward on 4096 tokens."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from benchmarks.measure import time_ms
import fast.deltanet as fd
SMALL = os.environ.get("SMALL") == "1"
dev = torch.device("cpu" if SMALL else "cuda")
gen = torch.Generator(device=dev).manual_seed(0)
B, T, H, D = (1, 256, 2, 32) if SMALL else (4, 8192, 16, 128)
q = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
k = F.normalize(torch.randn(B, T, H, D, device=dev, generator=gen), dim=-1).bfloat16()
v = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
beta = torch.rand(B, T, H, device=dev, generator=gen).bfloat16()
gg = (-torch.rand(B, T, H, device=dev, generator=gen) * 0.1).bfloat16()
do = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
T2 = T // 2
k2 = F.normalize(torch.randn(B, 2 * T2, H, D, device=dev, generator=gen), dim=-1).bfloat16()
v2 = torch.randn(B, 2 * T2, H, D, device=dev, generator=gen).bfloat16()
b2 = torch.rand(B, 2 * T2, H, device=dev, generator=gen).bfloat16()
scale = D ** -0.5
Tm = lambda fn: time_ms(fn, dev, reps=1 if SMALL else 30, warmup=1 if SMALL else 3, max_case_s=3.0)[0]
R8 = dict(num_warps=8, num_stages=1, maxnreg=128)
W4, W8 = dict(num_warps=4, num_stages=1), dict(num_warps=8, num_stages=1)
variants = [("HEAD", 0, None, None), ("s1 solve4 apply4", 1, W4, W4), ("s1 solve8r128 apply4", 1, R8, W4),
            ("s1 solve8r128 apply8", 1, R8, W8), ("s1 solve8 apply4", 1, W8, W4), ("s2 solve4 apply4", 2, W4, W4),
            ("s2 solve8r128 apply4", 2, R8, W4), ("s2 solve8r128 apply8", 2, R8, W8), ("s2 solve8 apply8", 2, W8, W8)]
for g in (None, gg):
    tag = "gated" if g is not None else "delta"
    fd.WY_SPLIT = 0
    ref = fd._chunk_fwd(q, k, v, g, beta, None, scale, 1)[0].float()
    refb = fd._chunk_bwd(q, k, v, g, beta, None, do, None, scale, 1)
    for name, sp, so, ao in variants:
        fd.WY_SPLIT, fd.WY_SOLVE_OPTS, fd.WY_APPLY_OPTS = sp, so, ao
        try:
            o = fd._chunk_fwd(q, k, v, g, beta, None, scale, 1)[0].float()
            gr = fd._chunk_bwd(q, k, v, g, beta, None, do, None, scale, 1)
            err = (o - ref).abs().max().item()
            errb = max((a.float() - b.float()).abs().max().item() for a, b in zip(gr, refb) if a is not None and a.numel())
            s1 = Tm(lambda: fd._chunk_wy_fwd(q, k, v, beta, g, scale, store_X=False, nh=1))
            s1x = Tm(lambda: fd._chunk_wy_fwd(q, k, v, beta, g, scale, store_X=True, nh=1))
            fw = Tm(lambda: fd._chunk_fwd(q, k, v, g, beta, None, scale, 1))
            bw = Tm(lambda: fd._chunk_bwd(q, k, v, g, beta, None, do, None, scale, 1))
            dp = Tm(lambda: fd._chunk_fwd(q[:, :T2], k2, v2, None if g is None else g[:, :T2], b2, None, scale, 2))
            print(f"{tag:5s} {name:15s} step1 {s1:.3f}  step1+X {s1x:.3f}  fwd {fw:.3f}  bwd {bw:.3f}  fwd+bwd {fw + bw:.3f}  "
                  f"DP2 fwd {dp:.3f} ms   max|o - HEAD| {err:.2e}  max|grad - HEAD| {errb:.2e}", flush=True)
        except Exception as e:
            print(f"{tag:5s} {name:15s} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
