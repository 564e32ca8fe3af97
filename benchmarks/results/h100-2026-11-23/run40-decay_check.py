"""Session 10: the gated delta rule and DeltaProduct with the default g <= 0 check (now read after the
kernels are queued) against check_decay=False and the delta rule. bf16, B=4, T=8192, H=16, K=V=128
(dp2: 4096 tokens x 2 micro-steps); medians of CUDA events (benchmarks.measure.time_ms)."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
dev = torch.device("cuda")
g0 = torch.Generator(device=dev).manual_seed(0)
B, T, H, D = 4, 8192, 16, 128
def mk(Tm, n=1):
    q = torch.randn(B, Tm, H, D, device=dev, generator=g0).bfloat16()
    k = F.normalize(torch.randn(B, Tm * n, H, D, device=dev, generator=g0), dim=-1).bfloat16()
    v = torch.randn(B, Tm * n, H, D, device=dev, generator=g0).bfloat16()
    beta = torch.rand(B, Tm * n, H, device=dev, generator=g0).bfloat16()
    g = (-torch.rand(B, Tm, H, device=dev, generator=g0) * 0.1).bfloat16()
    return [q, k, v, g, beta]
T_ = lambda fn: time_ms(fn, dev, reps=30, warmup=3, max_case_s=3.0)[0]
cases = {
    "delta": (lambda x, c: fd.delta_rule_chunk(x[0], x[1], x[2], x[4])[0], mk(T)),
    "gated": (lambda x, c: fg.gated_delta_rule_chunk(*x, check_decay=c)[0], mk(T)),
    "dp2": (lambda x, c: fp.gated_delta_product_chunk(*x, num_householder=2, check_decay=c)[0], mk(T // 2, 2)),
}
base = None
for name, (f, x) in cases.items():
    xs = [t.detach().requires_grad_() for t in x]
    do = torch.randn(B, x[0].shape[1], H, D, device=dev, generator=g0).bfloat16()
    for check in ((True,) if name == "delta" else (False, True)):
        def fb():
            for t in xs:
                t.grad = None
            f(xs, check).backward(do)
        with torch.no_grad():
            a = T_(lambda: f(x, check))
        b = T_(fb)
        base = base or (a, b)
        print(f"{name} check_decay={check}: fwd {a:.3f} ms ({a / base[0]:.2f}x delta)  "
              f"fwd+bwd {b:.3f} ms ({b / base[1]:.2f}x)", flush=True)
    if name == "gated":  # g > 0 still raises on the GPU
        bad = [x[0], x[1], x[2], -x[3] + 0.01, x[4]]
        try:
            f(bad, True); print("gated g > 0: NOT raised")
        except ValueError as e:
            print(f"gated g > 0 raises: {e}")
