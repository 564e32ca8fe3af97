"""Run 66 (session 20): the delta family's two forward levers, alone and together, in one process:
fast.deltanet.SOLVE_BY_GATHER (step 1's 16x16 solve with the blocks read back from memory) and
R_IN_STEP2 (a forward without gradients computes R = sQK^T (.) D in step 2, from tiles it loads
anyway, instead of step 1 storing it). B 4, T 8192, H 16, K = V = 128, bf16 (dp2: 4096 tokens x 2
micro-steps), the gate check off as the layers call the ops. For each op, the four settings twice in
turn (ABCD ABCD: drift shows as a gap between rounds): forward medians (CUDA events, 30 calls, 3
warm-ups, L2 flushed), step 1 and step 2's kernel times (torch.profiler), and the output against
the default's (max |diff| / max |ref|, bit-identical?). Then the forward + backward for the two
settings that change it (SOLVE_BY_GATHER off and on: a training forward always stores R), its
gradients against the default's. argv: the ops (delta,gated,dp2).
RUN66_DEVICE=cpu with TRITON_INTERPRET=1 checks the script on tiny sizes. Ran in session 21 at commit
11dc28e; both switches were removed after it (neither was faster: run66-fwd-ab.log)."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
import zoo.gated_deltanet as zg, zoo.deltaproduct as zdp
cases = (sys.argv[1] if len(sys.argv) > 1 else "delta,gated,dp2").split(",")
dev = torch.device(os.environ.get("RUN66_DEVICE", "cuda"))
B, T, H, D = (4, 8192, 16, 128) if dev.type == "cuda" else (1, 128, 2, 32)
DT = torch.bfloat16 if dev.type == "cuda" else torch.float32  # the interpreter gets bf16 wrong
zg._check_log_decay = zdp._check_log_decay = lambda g: None
ops = {"delta": lambda x: fd.delta_rule_chunk(x[0], x[1], x[2], x[4])[0],
       "gated": lambda x: fg.gated_delta_rule_chunk(x[0], x[1], x[2], x[3], x[4])[0],
       "dp2": lambda x: fp.gated_delta_product_chunk(x[0], x[1], x[2], x[3], x[4], num_householder=2)[0]}
SETTINGS = {"default": (False, False), "gather": (True, False), "r_in_step2": (False, True), "both": (True, True)}


def switch(name):
    fd.SOLVE_BY_GATHER, fd.R_IN_STEP2 = SETTINGS[name]


def mk(case):
    g0 = torch.Generator(device=dev).manual_seed(0)
    Tm, n, gated = {"delta": (T, 1, False), "gated": (T, 1, True), "dp2": (T // 2, 2, True)}[case]
    q = torch.randn(B, Tm, H, D, device=dev, generator=g0).to(DT)
    k = F.normalize(torch.randn(B, Tm * n, H, D, device=dev, generator=g0), dim=-1).to(DT)
    v = torch.randn(B, Tm * n, H, D, device=dev, generator=g0).to(DT)
    beta = torch.rand(B, Tm * n, H, device=dev, generator=g0).to(DT)
    g = (-torch.rand(B, Tm, H, device=dev, generator=g0) * 0.1).to(DT) if gated else None
    do = torch.randn(B, Tm, H, D, device=dev, generator=g0).to(DT)
    return [q, k, v, g, beta], do


def median(fn):
    return time_ms(fn, dev, reps=30, warmup=3, max_case_s=3.0)[0]


def steps(fn):
    """Step 1 and step 2's times in one call of fn (ms), from the profiler."""
    if dev.type != "cuda":
        return ""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    rows = [f"{e.key.replace('_kernel', '')[7:]} {(getattr(e, 'device_time_total', 0) or 0) / 1e3 / 3:.3f}"
            for e in prof.key_averages() if e.key.startswith("_chunk")]
    return ", ".join(rows)


def versus(got, ref):
    rel = " ".join(f"{(a - b).abs().max().item() / b.abs().max().item():.1e}" for a, b in zip(got, ref))
    return f"{rel} (bit-identical {all(torch.equal(a, b) for a, b in zip(got, ref))})"


for case in cases:
    f = ops[case]
    x, do = mk(case)
    ref = None
    for rnd in (1, 2):
        for name in SETTINGS:
            switch(name)
            with torch.no_grad():
                o = [f(x).float()]
                ref = o if ref is None else ref
                ms = median(lambda: f(x))
                print(f"{case} fwd {name} round {rnd}: {ms:.3f} ms | o vs default {versus(o, ref)} | "
                      f"kernels (ms) {steps(lambda: f(x))}", flush=True)
    gref = None
    for name in ("default", "gather"):
        switch(name)
        xs = [None if t is None else t.detach().requires_grad_() for t in x]

        def fb():
            for t in xs:
                if t is not None:
                    t.grad = None
            f(xs).backward(do)
        fb()
        got = [t.grad.float() for t in xs if t is not None]
        gref = got if gref is None else gref
        print(f"{case} fwd+bwd {name}: {median(fb):.3f} ms | grads (dq dk dv [dg] dbeta) vs default {versus(got, gref)}",
              flush=True)
    switch("default")
