"""Step 1 (_chunk_wy_fwd_kernel) with several chunks a program, pipelined (issue 3, run 35).
Variants: HEAD's kernel (one chunk a program, solve loop rolled) against the variant that
run35-deltanet_cpp.py builds from fast/deltanet.py (solve loop unrolled with tl.static_range so that
the chunk loop is the innermost loop and Triton's pipeliner prefetches the next chunk's tiles; CPP
chunks a program, num_stages). Times step 1, the
forward and the backward (recomputes step 1 with X); max |diff| of o against HEAD. B=4, T=8192,
H=16, K=V=128, bf16, delta and gated."""
import os, sys
sys.path.insert(0, os.getcwd())
import importlib.util
import torch, torch.nn.functional as F
from benchmarks.measure import time_ms
import fast.deltanet as fd
# the variant kernels (ran as .scratch/deltanet_cpp.py; run35-deltanet_cpp.py rebuilds that file from fast/deltanet.py)
_spec = importlib.util.spec_from_file_location("build", os.path.join(os.path.dirname(os.path.abspath(__file__)), "run35-deltanet_cpp.py"))
_build = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_build)
fc = _build.load()
SMALL = os.environ.get("SMALL") == "1"  # a CPU check of this script under TRITON_INTERPRET=1
dev = torch.device("cpu" if SMALL else "cuda")
gen = torch.Generator(device=dev).manual_seed(0)
B, T, H, D = (1, 256, 2, 32) if SMALL else (4, 8192, 16, 128)
q = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
k = F.normalize(torch.randn(B, T, H, D, device=dev, generator=gen), dim=-1).bfloat16()
v = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
beta = torch.rand(B, T, H, device=dev, generator=gen).bfloat16()
gg = (-torch.rand(B, T, H, device=dev, generator=gen) * 0.1).bfloat16()
do = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
scale = D ** -0.5
Tm = lambda fn: time_ms(fn, dev, reps=1 if SMALL else 30, warmup=1 if SMALL else 3, max_case_s=3.0)[0]
variants = [("HEAD", fd, None, None), ("unrolled CPP1 s1", fc, 1, 1), ("CPP2 s2", fc, 2, 2), ("CPP4 s2", fc, 4, 2),
            ("CPP4 s3", fc, 4, 3), ("CPP8 s2", fc, 8, 2), ("CPP16 s2", fc, 16, 2)]
for g in (None, gg):
    tag = "gated" if g is not None else "delta"
    ref = fd._chunk_fwd(q, k, v, g, beta, None, scale, 1)[0].float()
    refb = fd._chunk_bwd(q, k, v, g, beta, None, do, None, scale, 1)
    for name, mod, cpp, st in variants:
        if cpp is not None:
            fc.CPP_RUN, fc.WY_OVERRIDE = cpp, dict(num_stages=st)
        try:
            o = mod._chunk_fwd(q, k, v, g, beta, None, scale, 1)[0].float()
            gr = mod._chunk_bwd(q, k, v, g, beta, None, do, None, scale, 1)
            err = (o - ref).abs().max().item()
            errb = max((a.float() - b.float()).abs().max().item() for a, b in zip(gr, refb) if a is not None and a.numel())
            s1 = Tm(lambda: mod._chunk_wy_fwd(q, k, v, beta, g, scale, store_X=False, nh=1))
            s1x = Tm(lambda: mod._chunk_wy_fwd(q, k, v, beta, g, scale, store_X=True, nh=1))
            fw = Tm(lambda: mod._chunk_fwd(q, k, v, g, beta, None, scale, 1))
            bw = Tm(lambda: mod._chunk_bwd(q, k, v, g, beta, None, do, None, scale, 1))
            print(f"{tag:5s} {name:18s} step1 {s1:.3f}  step1+X {s1x:.3f}  fwd {fw:.3f}  bwd {bw:.3f} ms   "
                  f"max|o - HEAD| {err:.2e}  max|grad - HEAD| {errb:.2e}", flush=True)
        except Exception as e:
            print(f"{tag:5s} {name:18s} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
