"""Performer's row-max pass, old form (three tf32 products, 8 warps) against the transposed one (phases_t) at 4
and 8 warps, and the whole causal op with each (B=4, T=8192, H=16, D=64, M=256, bf16); medians by time_ms."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch
from benchmarks.measure import time_ms
import fast.performer as fp, zoo.performer as zp
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
B, T, H, D, M = 4, 8192, 16, 64, 256
omega = torch.stack([zp.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3))
tm = lambda f: time_ms(f, dev, reps=20, warmup=3, max_case_s=3.0)[0]
ref = None
for tr, nw in ((False, 8), (True, 4), (True, 8)):
    fp.ROW_MAX_T, fp.ROW_MAX_WARPS = tr, nw
    a = fp._launch_row_max(q, omega, 0.35)
    ref = a if ref is None else ref
    rm = tm(lambda: (fp._launch_row_max(q, omega, 0.35), fp._launch_row_max(k, omega, 0.35)))
    with torch.no_grad():
        op = tm(lambda: fp.performer_chunk(q, k, v, omega))
    print(f"transposed {tr} warps {nw}: row max q+k {rm:.3f} ms, op {op:.3f} ms, max |a - a_old| {(a - ref).abs().max().item():.2e}", flush=True)
