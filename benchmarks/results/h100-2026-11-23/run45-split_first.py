"""Session 12 (run 45, split step 1; run 44 had the whole-chunk variants): first call (fresh process, empty Triton cache) of the delta rule and the gated
delta rule, fwd + bwd through the public ops, with step 1 as HEAD or a WY_FULL variant."""
import os, sys, json, subprocess, tempfile, time
sys.path.insert(0, os.getcwd())
if len(sys.argv) > 1:
    c = json.loads(sys.argv[1])
    t_imp = time.time()
    import torch, torch.nn.functional as F
    import fast.deltanet as fd, fast.gated_deltanet as fg
    fd.WY_SPLIT, fd.WY_SOLVE_OPTS, fd.WY_APPLY_OPTS = c["sp"], c["so"], c["ao"]
    dev = "cuda"
    B, T, H, D = 1, 256, 4, 128
    q, v = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    k = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).bfloat16().requires_grad_()
    beta = torch.rand(B, T, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
    g = (-torch.rand(B, T, H, device=dev) * 0.1).requires_grad_()
    torch.cuda.synchronize()
    t0 = time.time()
    o = (fg.gated_delta_rule_chunk(q, k, v, g, beta)[0] if c["gated"] else fd.delta_rule_chunk(q, k, v, beta)[0])
    o.float().sum().backward()
    torch.cuda.synchronize()
    print(f"{time.time() - t0:.2f}")
    sys.exit()
for gated in (False, True):
    R8 = dict(num_warps=8, num_stages=1, maxnreg=128)
    W4, W8 = dict(num_warps=4, num_stages=1), dict(num_warps=8, num_stages=1)
    for name, sp, so, ao in [("HEAD", 0, None, None), ("s2 solve8r128 apply4", 2, R8, W4), ("s2 solve8r128 apply8", 2, R8, W8),
                             ("s1 solve4 apply4", 1, W4, W4)]:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TRITON_CACHE_DIR=cache)
            r = subprocess.run([sys.executable, __file__, json.dumps(dict(sp=sp, so=so, ao=ao, gated=gated))],
                               capture_output=True, text=True, env=env, timeout=120)
        print(f"{'gated' if gated else 'delta'} {name:12s} fwd+bwd first call {r.stdout.strip()} s {r.stderr.strip()[-200:] if r.returncode else ''}", flush=True)
