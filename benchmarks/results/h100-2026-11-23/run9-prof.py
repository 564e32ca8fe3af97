"""Diagnostics: per-kernel CUDA time (torch.profiler) of chosen fast ops at the issues' shapes."""
import os, sys, time
sys.path.insert(0, os.getcwd())
import torch
from torch.profiler import profile, ProfilerActivity
from benchmarks import specs
from benchmarks.measure import time_ms
dev = torch.device("cuda")
which = sys.argv[1:]


def prof(name, step, n=3):
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    ms, _ = time_ms(step, dev, reps=10, warmup=1, max_case_s=5)
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    print(f"\n=== {name}: median {ms:.3f} ms (events); profiler per call below (÷{n})", flush=True)
    rows = sorted(p.key_averages(), key=lambda e: -e.device_time_total)[:14]
    for e in rows:
        print(f"  {e.device_time_total / 1e3 / n:9.3f} ms  x{e.count // n:4d}  {e.key[:110]}")
    sys.stdout.flush()


def spec_step(name, B, T, H, D, direction="fwd"):
    sp = specs.all_specs()[name]
    import importlib
    fast = importlib.import_module(f"fast.{name}")
    op = getattr(fast, sp.chunk_op)
    x = sp.make_inputs(B, T, H, D, torch.bfloat16, dev, True, 0)
    if direction == "fwd":
        def step():
            with torch.no_grad():
                sp.call(op, x, True)
    else:
        for n in sp.grad_inputs:
            x[n] = x[n].detach().requires_grad_()
        do = None

        def step():
            o = sp.call(op, x, True)
            o.backward(torch.ones_like(o))
    return step


if "hyper" in which:
    from fast import hyper_attention as fh
    from zoo import hyper_attention as zh
    B, T, H, D = 1, 131072, 32, 64
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(3))
    proj = zh.lsh_projections(D, 8, seed=0, device=dev)
    for causal in (False, True):
        def step(causal=causal):
            with torch.no_grad():
                fh.hyper_attention_chunk(q, k, v, proj=proj, causal=causal)
        prof(f"hyper fwd causal={causal}", step)
    xs = [x.detach().requires_grad_() for x in (q, k, v)]
    do = torch.randn_like(q)
    def stepb():
        fh.hyper_attention_chunk(*xs, proj=proj, causal=True).backward(do)
    t0 = time.time(); stepb(); torch.cuda.synchronize(); print("hyper causal fwdbwd one call", time.time() - t0)
    prof("hyper fwdbwd causal=True", stepb, n=2)
for name, shape in (("hrc_la", (4, 8192, 16, 64)), ("performer", (4, 8192, 16, 64)),
                    ("holographic", (4, 8192, 16, 128)), ("deltanet", (4, 8192, 16, 128)),
                    ("based", (4, 8192, 16, 128))):
    if name in which:
        prof(f"{name} fwd {shape}", spec_step(name, *shape))
        if "bwd" in which:
            prof(f"{name} fwdbwd {shape}", spec_step(name, *shape, "fwdbwd"), n=2)
if "zoolin" in which:
    from zoo import linear_attention as zl
    from fast import linear_attention as fl
    B, T, H, D = 4, 8192, 16, 128
    x = specs.linear_inputs(B, T, H, D, torch.bfloat16, dev, True, 0)
    q, k, v = x["q"], x["k"], x["v"]
    with torch.no_grad():
        prof("fast linear fwd", lambda: fl.linear_attention_chunk(q, k, v, normalize=False))
        for L in (64, 128, 256):
            for mode in ("default", "max-autotune-no-cudagraphs"):
                if mode != "default" and "autotune" not in which:
                    continue
                torch._dynamo.reset()
                f = torch.compile(lambda q, k, v: zl.linear_attention_chunk(q, k, v, normalize=False, chunk_size=L)[0],
                                  fullgraph=True, mode=mode)
                t0 = time.time(); f(q, k, v); torch.cuda.synchronize()
                print(f"compile L={L} {mode}: {time.time() - t0:.1f} s")
                prof(f"zoo linear compiled L={L} {mode}", lambda: f(q, k, v))
    # fast linear at K=256/512 V=64 (HRC comparator)
    for K in (256, 512):
        try:
            qq, kk = (torch.rand(4, 8192, 16, K, device=dev).bfloat16() for _ in range(2))
            vv = torch.randn(4, 8192, 16, 64, device=dev).bfloat16()
            with torch.no_grad():
                prof(f"fast linear fwd K={K} V=64 normalize=True", lambda: fl.linear_attention_chunk(qq, kk, vv, normalize=True))
        except Exception as e:
            print(f"fast linear K={K}: {type(e).__name__}: {e}")
