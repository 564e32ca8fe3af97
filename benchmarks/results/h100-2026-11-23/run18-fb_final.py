"""fwd and fwd+bwd of fast Based (chunk-parallel forward) and fast linear attention at B=4, T=8192, H=16, D=128, bf16, causal."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch
from benchmarks import specs
from benchmarks.measure import time_ms
import importlib
dev = torch.device("cuda")
for name in ("based", "linear_attention"):
    sp = specs.all_specs()[name]
    op = getattr(importlib.import_module(f"fast.{name}"), sp.chunk_op)
    x = sp.make_inputs(4, 8192, 16, 128, torch.bfloat16, dev, True, 0)
    def fwd():
        with torch.no_grad():
            sp.call(op, x, True)
    ms_f, _ = time_ms(fwd, dev, reps=20, warmup=3, max_case_s=3)
    for n in sp.grad_inputs:
        x[n] = x[n].detach().requires_grad_()
    o = sp.call(op, x, True)
    do = torch.randn_like(o)
    ms_fb, _ = time_ms(lambda: sp.call(op, x, True).backward(do), dev, reps=20, warmup=3, max_case_s=4)
    print(f"{name} ({sp.variant}): fwd {ms_f:.3f} ms, fwd+bwd {ms_fb:.3f} ms", flush=True)
