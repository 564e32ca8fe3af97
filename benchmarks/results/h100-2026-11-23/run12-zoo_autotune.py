"""Issue 2: zoo linear_attention_chunk under torch.compile(fullgraph=True), mode max-autotune-no-cudagraphs, at L = 64
and 128 (B=4, T=8192, H=16, D=128, bf16, causal, normalize=False) beside the fast kernel."""
import os, sys, time
sys.path.insert(0, os.getcwd())
import torch
from benchmarks import specs
from benchmarks.measure import time_ms
from zoo import linear_attention as zl
from fast import linear_attention as fl
dev = torch.device("cuda")
x = specs.linear_inputs(4, 8192, 16, 128, torch.bfloat16, dev, True, 0)
q, k, v = x["q"], x["k"], x["v"]
with torch.no_grad():
    ms, _ = time_ms(lambda: fl.linear_attention_chunk(q, k, v, normalize=False), dev, reps=20, warmup=3, max_case_s=3)
    print(f"fast: {ms:.3f} ms", flush=True)
    ref = fl.linear_attention_chunk(q, k, v, normalize=False)[0].float()
    for L in [int(a) for a in sys.argv[1:]] or (128, 64):
        for mode in ("default", "max-autotune-no-cudagraphs"):
            torch._dynamo.reset()
            f = torch.compile(lambda q, k, v: zl.linear_attention_chunk(q, k, v, normalize=False, chunk_size=L)[0],
                              fullgraph=True, mode=mode)
            t0 = time.time(); o = f(q, k, v); torch.cuda.synchronize(); c = time.time() - t0
            err = ((o.float() - ref).norm() / ref.norm()).item()
            zms, _ = time_ms(lambda: f(q, k, v), dev, reps=20, warmup=3, max_case_s=3)
            print(f"zoo compiled L={L} {mode}: {zms:.3f} ms = {zms / ms:.2f}x fast (compile {c:.0f} s, rel diff {err:.2e})", flush=True)
