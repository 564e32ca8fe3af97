"""Session 12 (run 46): the cost of the small-head tiles. Fast HRC-LA and FAVOR+ at head dim 32
(B 4, T 8192, H 16, bf16, causal), M 32 / 64 / 128: forward and forward + backward (fixed Ω) with the
2-warp small-head tiles (the default now) against the module tiles (4-8 warps, wgmma) compiled by
CUDA 12.9's ptxas (TRITON_PTXAS_PATH; Triton 3.6's own miscompiles them), one child process each;
and the output's relative RMS difference between the two builds."""
import os, sys, json, subprocess
sys.path.insert(0, os.getcwd())
if len(sys.argv) > 1:
    import torch
    from benchmarks.measure import time_ms
    import fast._random_features as rf
    c = json.loads(sys.argv[1])
    if not c["rule"]:
        rf.SMALL_HEAD_DIM = 0
    if c["m"] == "hrc":
        import fast.hrc_la as f; op = f.hrc_la_chunk
    else:
        import fast.performer as f; op = f.performer_chunk
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B, T, H, D, M = 4, 8192, 16, 32, c["M"]
    q, k, v = (0.35 * torch.randn(B, T, H, D, device=dev, generator=g)).bfloat16(), (0.35 * torch.randn(B, T, H, D, device=dev, generator=g)).bfloat16(), torch.randn(B, T, H, D, device=dev, generator=g).bfloat16()
    omega = torch.randn(H, M, D, device=dev, generator=g)
    do = torch.randn(B, T, H, D, device=dev, generator=g).bfloat16()
    fw = time_ms(lambda: op(q, k, v, omega), dev, reps=30, warmup=3, max_case_s=3.0)[0]
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    def fb():
        o = op(qg, kg, vg, omega)[0]
        torch.autograd.backward(o, do)
    fbt = time_ms(fb, dev, reps=20, warmup=2, max_case_s=3.0)[0]
    o = op(q, k, v, omega)[0].float()
    torch.save(o[0, :1024].cpu(), c["out"])
    print(json.dumps(dict(fwd=round(fw, 3), fwd_bwd=round(fbt, 3))))
    sys.exit()
P129 = os.path.join(os.getcwd(), ".scratch", "ptxas129")
import torch
out = os.environ.get("OUTDIR", "/tmp")
for m in ("hrc", "perf"):
    for M in (32, 64, 128):
        res = {}
        for rule in (True, False):
            env = dict(os.environ)
            if not rule:
                env["TRITON_PTXAS_PATH"] = P129
            p = os.path.join(out, f"{m}-{M}-{rule}.pt")
            r = subprocess.run([sys.executable, __file__, json.dumps(dict(m=m, M=M, rule=rule, out=p))], capture_output=True, text=True, env=env, timeout=150)
            res[rule] = (r.stdout.strip().splitlines() or [""])[-1] if r.returncode == 0 else "rc %d %s" % (r.returncode, r.stderr.strip()[-200:])
        try:
            a, b = torch.load(os.path.join(out, f"{m}-{M}-True.pt")), torch.load(os.path.join(out, f"{m}-{M}-False.pt"))
            diff = "%.1e" % float((a - b).norm() / b.norm())
        except Exception as e:
            diff = "n/a"
        print(f"{m:4s} K=V=32 M={M:3d}  2 warps (default): {res[True]}   module tiles, CUDA 12.9 ptxas: {res[False]}   o rel diff {diff}", flush=True)
