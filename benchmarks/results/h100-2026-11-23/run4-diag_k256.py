"""Which (BK, BV, warps, stages, normalize, T) of fast linear attention faults on this GPU? One subprocess per case."""
import os, subprocess, sys, json
CASE = r'''
import torch, sys, json
import fast.linear_attention as fl
import zoo.linear_attention as zla
B, T, H, K, V, BV, w, st, norm = json.loads(sys.argv[1])
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.rand(B, T, H, K, device="cuda", generator=g).to(torch.bfloat16)
k = torch.rand(B, T, H, K, device="cuda", generator=g).to(torch.bfloat16)
v = torch.randn(B, T, H, V, device="cuda", generator=g).to(torch.bfloat16)
o = fl._sweep(q, k, v, s_q=K ** -0.5, normalize=norm, tiles=(256, BV, w, st))[0]
torch.cuda.synchronize()
ref = zla.linear_attention_chunk(*(x[:1, :, :1].double() for x in (q, k, v)), normalize=norm)[0]
err = ((o[:1, :, :1].double() - ref).norm() / ref.norm()).item()
print("OK rel err %.2e" % err)
'''
cases = [[4, 8192, 16, 256, 64, 32, 8, 1, True]]
for norm in (True, False):
    for (BV, w, st) in [(32, 8, 1), (32, 4, 1), (16, 8, 1), (64, 8, 1)]:
        cases.append([1, 256, 2, 256, 64, BV, w, st, norm])
env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
for c in cases:
    r = subprocess.run([sys.executable, "-c", CASE, json.dumps(c)], capture_output=True, text=True, env=env, timeout=120)
    tail = (r.stdout + r.stderr).strip().splitlines()
    msg = tail[-1] if tail else ""
    print(f"B,T,H={c[:3]} BV={c[5]} warps={c[6]} stages={c[7]} normalize={c[8]}: rc={r.returncode} {msg[:200]}", flush=True)

r = subprocess.run(["compute-sanitizer", "--print-limit", "5", sys.executable, "-c", CASE, json.dumps([1, 256, 2, 256, 64, 32, 8, 1, True])],
                   capture_output=True, text=True, timeout=90)
print("compute-sanitizer:", (r.stdout + r.stderr)[-3000:])
