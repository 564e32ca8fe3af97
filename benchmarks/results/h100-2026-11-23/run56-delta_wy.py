"""Run 56 (session 15): the delta family's steps 1 and 5 (_chunk_wy_fwd_kernel, _chunk_wy_bwd_kernel)
reading their [BT, K] and [BT, V] tiles in column slices, against the whole-K kernels of run 54, at
several launch configurations. argv: label (head: the committed fast/deltanet.py of run 54; new: the
working tree's; the first run writes the fp32 references, which head cannot: its 16-bit tiles do not
fit the H100's shared memory in fp32), the cases (delta,gated,dp2), then variants
"kernel=BV,warps,stages[,maxnreg];..." (kernel: a key of fast.deltanet._tiles).
B=4, T=8192, H=16, K=V=128, bf16 (dp2: 4096 tokens x 2 micro-steps), g check off (as the layers call
the ops). Prints fwd and fwd+bwd medians (CUDA events) keeping the intermediates, the kernels' times
in a fwd+bwd (torch.profiler), each gradient's error against the fp32 run of the same op (max |diff|
/ max |ref|), and whether two fwd+bwd give bit-identical gradients (and, dp2, kept vs recomputed)."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from benchmarks.measure import time_ms
import fast.deltanet as fd, fast.gated_deltanet as fg, fast.deltaproduct as fp
import zoo.gated_deltanet as zg, zoo.deltaproduct as zdp
label, cases = sys.argv[1], sys.argv[2].split(",")
parse = lambda spec: {kv.split("=")[0]: tuple(int(x) for x in kv.split("=")[1].split(",")) for kv in spec.split(";")}
configs = [parse(c) if c else None for c in sys.argv[3:]] or [None]  # "": the defaults
dev = torch.device(os.environ.get("RUN56_DEVICE", "cuda"))  # cpu + TRITON_INTERPRET=1: a check of this script
B, T, H, D = (4, 8192, 16, 128) if dev.type == "cuda" else (1, 128, 2, 32)
DT = torch.bfloat16 if dev.type == "cuda" else torch.float32  # the interpreter gets bf16 wrong
zg._check_log_decay = zdp._check_log_decay = lambda g: None
ops = {"delta": lambda x: fd.delta_rule_chunk(x[0], x[1], x[2], x[4])[0],
       "gated": lambda x: fg.gated_delta_rule_chunk(x[0], x[1], x[2], x[3], x[4])[0],
       "dp2": lambda x: fp.gated_delta_product_chunk(x[0], x[1], x[2], x[3], x[4], num_householder=2)[0]}
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
T_ = lambda fn: time_ms(fn, dev, reps=30, warmup=3, max_case_s=3.0)[0]
def grads(f, x, do):
    xs = [None if t is None else t.detach().requires_grad_() for t in x]
    f(xs).backward(do)
    return [t.grad.float() for t in xs if t is not None]
def kernels(fb):
    if dev.type != "cuda":
        return ""
    fb(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fb()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us and e.key.startswith("_chunk"):
            rows.append(f"{e.key.replace('_kernel', '')[7:]} {us / 1e3 / 3:.3f}")
    return ", ".join(rows)
orig_tiles = fd._tiles
for case in cases:
    f = ops[case]
    x, do = mk(case)
    ref_path = f"/tmp/run56_ref_{case}.pt"
    if not os.path.exists(ref_path):
        torch.save(grads(f, [None if t is None else t.float() for t in x], do.float()), ref_path)
    ref = torch.load(ref_path)
    for c in configs:
        if c is not None:
            def tiles(*a, c=c):
                t = dict(orig_tiles(*a))
                for name, n in c.items():
                    t[name] = dict(BV=n[0], num_warps=n[1], num_stages=n[2], **({"maxnreg": n[3]} if len(n) > 3 else {}))
                return t
            fd._tiles = tiles
        try:
            fd.SAVE_INTERMEDIATES = True
            got = grads(f, x, do)
            err = " ".join(f"{e:.1e}" for e in ((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(got, ref)))
            same = all(torch.equal(a, b) for a, b in zip(got, grads(f, x, do)))
            xs = [None if t is None else t.detach().requires_grad_() for t in x]
            def fb():
                for t in xs:
                    if t is not None: t.grad = None
                f(xs).backward(do)
            with torch.no_grad():
                a = T_(lambda: f(x))
            line = (f"{label} {case} {c or 'default'}: fwd {a:.3f} ms  fwd+bwd {T_(fb):.3f} ms | rel err vs fp32 "
                    f"(dq dk dv [dg] dbeta) {err} | repeat bit-identical {same}")
            if case == "dp2":
                fd.SAVE_INTERMEDIATES = False
                rec = grads(f, x, do)
                fd.SAVE_INTERMEDIATES = True
                line += f" | kept vs recomputed max |diff| {max((a - b).abs().max().item() for a, b in zip(got, rec)):.1e}"
            print(line, flush=True)
            print(f"   kernels (ms): {kernels(fb)}", flush=True)
        except Exception as e:  # a configuration that does not compile or launch
            print(f"{label} {case} {c}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
        fd._tiles = orig_tiles
