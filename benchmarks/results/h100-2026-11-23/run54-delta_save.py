"""Run 54 (session 14): the delta family with the forward's intermediates kept for the backward
(fast.deltanet.SAVE_INTERMEDIATES) against recomputed (the old plan). argv: case (delta|gated|dp2).
B=4, T=8192, H=16, K=V=128, bf16 (dp2: 4096 tokens x 2 micro-steps), g check off (as the layers call
the ops) and on. Prints fwd and fwd+bwd medians (CUDA events), peak memory of a fwd+bwd, the
kernels' times in a fwd+bwd (torch.profiler), and whether outputs and gradients are bit-identical."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
import zoo.gated_deltanet as zg, zoo.deltaproduct as zdp
case = sys.argv[1]
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
def kernels():
    fb(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fb()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us and not e.key.startswith("cu"):
            rows.append(f"{e.key.replace('_kernel', '')[:40]} {us / 1e3 / 3:.3f}")
    return ", ".join(rows)
ref = None
for save in (False, True):
    fd.SAVE_INTERMEDIATES = save
    zg._check_log_decay = zdp._check_log_decay = lambda g: None
    got = outs()
    same = "reference" if ref is None else ("bit-identical" if all(torch.equal(a, b) for a, b in zip(got, ref)) else
                                            f"max diff {max((a - b).abs().max().item() for a, b in zip(got, ref)):.1e}")
    ref = ref or got
    with torch.no_grad():
        a = T_(lambda: f(x))
    fbt = T_(fb)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    fb(); torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    print(f"{case} SAVE_INTERMEDIATES={save}, no g check: fwd {a:.3f} ms  fwd+bwd {fbt:.3f} ms  "
          f"peak above inputs {peak:.2f} GiB  ({same})", flush=True)
    print(f"   kernels in a fwd+bwd (ms): {kernels()}", flush=True)
    zg._check_log_decay, zdp._check_log_decay = real_g, real_dp
    if case != "delta":
        with torch.no_grad():
            a = T_(lambda: f(x))
        print(f"{case} SAVE_INTERMEDIATES={save}, with the g check: fwd {a:.3f} ms  fwd+bwd {T_(fb):.3f} ms", flush=True)
