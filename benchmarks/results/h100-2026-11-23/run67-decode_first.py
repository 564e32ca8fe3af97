"""Run 67 (session 21): the first call of the delta family's Triton recurrent (decode) ops, which no
run had measured, and their steady per-token latency. argv: method (deltanet | gated_deltanet |
deltaproduct). Run in a fresh process with empty TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR, as
benchmarks.first_call does for the chunk ops: imports, inputs, CUDA start and Triton's driver build
(one unrelated kernel) before the clock; the clock covers one decode step (B 4, one token, H 16,
K = V = 128, bf16 inputs, an fp32 state given and returned) up to the device synchronising."""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import torch
import torch.nn.functional as F
from benchmarks.first_call import _start_triton
from benchmarks.measure import time_ms
import fast.deltanet, fast.gated_deltanet, fast.deltaproduct

method = sys.argv[1]
B, H, D, NH = 4, 16, 128, 2
dev, bf = torch.device(os.environ.get("RUN67_DEVICE", "cuda")), torch.bfloat16  # cpu: a check under TRITON_INTERPRET=1


def inputs(seed):
    g = torch.Generator(device=dev).manual_seed(seed)
    n = NH if method == "deltaproduct" else 1
    q = torch.randn(B, 1, H, D, device=dev, generator=g).to(bf)
    k = F.normalize(torch.randn(B, n, H, D, device=dev, generator=g), dim=-1).to(bf)
    v = torch.randn(B, n, H, D, device=dev, generator=g).to(bf)
    beta = torch.rand(B, n, H, device=dev, generator=g).to(bf)
    gate = -torch.rand(B, 1, H, device=dev, generator=g).to(bf)
    S = torch.randn(B, H, D, D, device=dev, generator=g)
    return q, k, v, beta, gate, S


def step(q, k, v, beta, gate, S):
    kw = dict(initial_state=S, output_final_state=True)
    if method == "deltanet":
        return fast.deltanet.delta_rule_recurrent(q, k, v, beta, **kw)
    if method == "gated_deltanet":
        return fast.gated_deltanet.gated_delta_rule_recurrent(q, k, v, gate, beta, **kw)
    return fast.deltaproduct.gated_delta_product_recurrent(q, k, v, gate, beta, num_householder=NH, **kw)


sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
torch.ones(1, device=dev).sum().item()
if dev.type == "cuda":
    _start_triton(dev)
x = inputs(0)
sync()
t0 = time.perf_counter()
with torch.no_grad():
    step(*x)
sync()
first = time.perf_counter() - t0
with torch.no_grad():  # 10 warm-ups, then up to 50 timed steps (L2 flushed, CUDA events), within 10 s
    ms, _ = time_ms(lambda: step(*x), dev, reps=50, warmup=10, max_case_s=10)
print("DECODE " + json.dumps({"method": method, "first_call_s": round(first, 3), "step_ms_median": round(ms, 4)}),
      flush=True)
