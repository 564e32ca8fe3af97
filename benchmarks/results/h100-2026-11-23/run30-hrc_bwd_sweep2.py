"""HRC-LA chunk-parallel causal backward, round 2: each variant in its own python process (< 120 s).

    python .scratch/hrc_bwd_sweep2.py            # the driver: every variant, one process each
    python .scratch/hrc_bwd_sweep2.py <variant>  # one variant (names in VARIANTS)

Run 29's sweep ran its variants in one process: DV_PER_TILE at (16, 8, 1) raised an illegal memory
access, which is sticky, and the variants after it failed without being timed. Here the driver starts
`python .scratch/hrc_bwd_sweep2.py <variant>` per variant with a time limit (the rest of a 115 s
budget, at most PER_VARIANT_S), so a faulting or hanging variant costs only its own line.

B = 4, T = 8192, H = 16, D = 64, M = 256, bf16, causal, as .scratch/hrc_bwd_sweep.py: the forward
alone once, then fwd+bwd (torch.autograd.grad of o against a fixed random cotangent) with fixed Ω
unless the name says learnable; per-kernel times per call (torch.profiler; the walk runs twice in
fwd+bwd: forward and the backward's recompute, summed). The default's process also prints the
gradients' relative RMS error against the zoo in float64 (B = 1, T = 1024, learnable Ω).
One line each, flush=True. TRITON_INTERPRET=1 runs a CPU smoke of the whole thing at tiny sizes.
"""
import os
import subprocess
import sys
import time

BUDGET_S, PER_VARIANT_S = 115.0, 40.0
# name: (label, module settings over the defaults, learnable Ω)
VARIANTS = {
    "forward": ("forward alone", {}, False),
    "default": ("fwd+bwd default {BWD_TILE}, fixed Ω", {}, False),
    "default_learnable": ("fwd+bwd default {BWD_TILE}, learnable Ω", {}, True),
    "bwd_32_4_1": ("fwd+bwd BWD_TILE (32, 4, 1)", dict(BWD_TILE=(32, 4, 1)), False),
    "bwd_64_8_1": ("fwd+bwd BWD_TILE (64, 8, 1)", dict(BWD_TILE=(64, 8, 1)), False),
    "bwd_32_8_2": ("fwd+bwd BWD_TILE (32, 8, 2)", dict(BWD_TILE=(32, 8, 2)), False),
    "dwalk_16_4_2": ("fwd+bwd DWALK_TILE (16, 4, 2)", dict(DWALK_TILE=(16, 4, 2)), False),
    "dwalk_64_8_2": ("fwd+bwd DWALK_TILE (64, 8, 2)", dict(DWALK_TILE=(64, 8, 2)), False),
    "half_records": ("fwd+bwd HALF_RECORDS on", dict(HALF_RECORDS=True), False),
}
SMOKE = os.environ.get("TRITON_INTERPRET") == "1"  # a CPU smoke run of the script itself, tiny sizes


def drive():
    """Every variant in a child process; a child that dies or runs out of time gets its line here."""
    t0 = time.time()
    for name, (label, _, _) in VARIANTS.items():
        left = BUDGET_S - (time.time() - t0)
        if left < 5 and not SMOKE:
            print(f"{name:18s}: skipped (time)", flush=True)
            continue
        try:
            rc = subprocess.run([sys.executable, __file__, name],
                                timeout=None if SMOKE else min(PER_VARIANT_S, left)).returncode
            if rc:
                print(f"{name:18s}: process exited {rc}", flush=True)
        except subprocess.TimeoutExpired:
            print(f"{name:18s}: timed out (the process was killed)", flush=True)
    print(f"sweep took {time.time() - t0:.0f} s", flush=True)


def one(name):
    """One variant: its settings on fast.hrc_la, then its line (and the default's error line)."""
    sys.path.insert(0, os.getcwd())
    import torch
    from torch.profiler import ProfilerActivity, profile

    import fast.hrc_la as fh
    import zoo.hrc_la as zh
    from benchmarks.measure import time_ms

    label, cfg, learnable = VARIANTS[name]
    label = label.format(BWD_TILE=fh.BWD_TILE)
    for n, x in cfg.items():
        assert hasattr(fh, n), n
        setattr(fh, n, x)
    dev = torch.device("cpu" if SMOKE else "cuda")
    B, T, H, D, M = (1, 80, 2, 16, 32) if SMOKE else (4, 8192, 16, 64, 256)
    N_ERR = 80 if SMOKE else 1024
    g = torch.Generator(device=dev).manual_seed(0)
    omega = torch.stack([zh.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
    q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).bfloat16().requires_grad_() for _ in range(3))
    do = torch.randn(B, T, H, D, device=dev, generator=g).bfloat16()
    om = omega.clone().requires_grad_(learnable)

    def fwd_bwd(om, qq=q, kk=k, vv=v, dout=do):
        o = fh.hrc_la_chunk(qq, kk, vv, om)[0]
        leaves = (qq, kk, vv) + ((om,) if om.requires_grad else ())
        return torch.autograd.grad(o, leaves, dout)

    def kernel_times(op, calls):
        """{short kernel name: ms per call} from torch.profiler."""
        if SMOKE:
            return {}
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                op()
            torch.cuda.synchronize()
        out = {}
        for e in prof.key_averages():
            us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if "hrc_la" in e.key and us:
                out[e.key.replace("_hrc_la_chunk_", "").replace("_kernel", "")] = us / 1e3 / calls
        return out

    if name == "forward":
        def op():
            with torch.no_grad():
                return fh.hrc_la_chunk(q, k, v, omega)
    else:
        op = lambda: fwd_bwd(om)  # noqa: E731
    try:
        ms = time_ms(op, dev, reps=10, warmup=2, max_case_s=3.0)[0]
        per = ", ".join(f"{n} {t:.3f}" for n, t in sorted(kernel_times(op, 1 if ms > 20 else 2).items()))
        print(f"{label:40s}: {ms:7.3f} ms | kernels {per}", flush=True)
    except Exception as e:  # a tile the compiler refuses, an illegal address (sticky: this process ends)
        print(f"{label:40s}: failed {type(e).__name__}: {str(e)[:160]}", flush=True)
        return
    if name == "default":  # the gradients' error against the zoo in float64, learnable Ω
        qs, ks, vs, dos = (x[:1, :N_ERR].detach().contiguous() for x in (q, k, v, do))
        leaves64 = [x.double().requires_grad_() for x in (qs, ks, vs, omega)]
        ref = torch.autograd.grad(zh.hrc_la_chunk(*leaves64, causal=True)[0], leaves64, dos.double())
        leaves = [x.clone().requires_grad_() for x in (qs, ks, vs)]
        got = fwd_bwd(omega.clone().requires_grad_(), *leaves, dos)
        err = ", ".join(f"d{n} {((a.double() - r).norm() / r.norm()).item():.2e}"
                        for n, a, r in zip(("q", "k", "v", "Ω"), got, ref))
        print(f"{'default vs zoo f64':40s}: (B=1, T={N_ERR}, learnable Ω) rel RMS {err}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        one(sys.argv[1])
    else:
        drive()
