"""Delta family fwd and fwd+bwd at the issue's size (B=4, T=8192, H=16, K=V=128, bf16; DeltaProduct n_h=2 on
4096 tokens = the same 8192 micro-steps), medians by benchmarks.measure.time_ms, fresh random inputs."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
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
cases = {
    "delta rule": (lambda x: fd.delta_rule_chunk(x[0], x[1], x[2], x[4])[0], mk(T)),
    "gated delta rule": (lambda x: fg.gated_delta_rule_chunk(x[0], x[1], x[2], x[3], x[4])[0], mk(T, gated=True)),
    "DeltaProduct n_h=2": (lambda x: fp.gated_delta_product_chunk(x[0], x[1], x[2], x[3], x[4], num_householder=2)[0],
                           mk(T // 2, 2, gated=True)),
}
for name, (f, x) in cases.items():
    with torch.no_grad():
        fwd = time_ms(lambda: f(x), dev, reps=20, warmup=3, max_case_s=3.0)[0]
    xs = [None if t is None else t.detach().requires_grad_() for t in x]
    do = torch.randn(B, x[0].shape[1], H, D, device=dev, generator=g0).bfloat16()
    def fb():
        o = f(xs)
        o.backward(do)
    fwdbwd = time_ms(fb, dev, reps=20, warmup=3, max_case_s=3.0)[0]
    print(f"{name:20s}: fwd {fwd:.3f} ms, fwd+bwd {fwdbwd:.3f} ms", flush=True)
