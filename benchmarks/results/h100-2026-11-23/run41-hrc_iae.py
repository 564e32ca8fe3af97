"""Session 10: which shape or switch makes fast HRC-LA's phase 3 fault (illegal address in
test_train's LM: B 2, T 100, H 2, K = V = 32, M = 32, bf16). One case a process (a fault kills the context)."""
import os, sys, subprocess, json
sys.path.insert(0, os.getcwd())
if len(sys.argv) > 1:
    import torch, fast.hrc_la as fh
    c = json.loads(sys.argv[1])
    for kk, vv in c.get("sw", {}).items():
        setattr(fh, kk, tuple(vv) if isinstance(vv, list) else vv)
    B, T, H, K, M = c["B"], c["T"], c["H"], c["K"], c["M"]
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = getattr(torch, c.get("dt", "bfloat16"))
    q, k, v = (torch.randn(B, T, H, K, device="cuda", generator=g).to(dt) for _ in range(3))
    om = torch.randn(H, M, K, device="cuda", generator=g)
    o = fh.hrc_la_chunk(q, k, v, om, causal=True)[0]
    torch.cuda.synchronize()
    print("ok", float(o.float().abs().max()))
    sys.exit()
base = dict(B=2, T=100, H=2, K=32, M=32)
cases = [{}, dict(T=128), dict(T=64), dict(M=64), dict(K=64), dict(M=256, K=64), dict(dt="float32"),
         dict(sw={"FEATURE_DOTS_16": False}), dict(sw={"OUT_TILE": [32, 4, 1]}), dict(sw={"OUT_TILE": [16, 8, 2]}),
         dict(sw={"FAST_TRIG": False})]
cases += [dict(sw={"OUT_TILE": [16, 4, 2]}), dict(B=1), dict(H=1), dict(B=1, H=1, T=65),
          dict(sw={"CHUNK_PARALLEL": False}), dict(sw={"HALF_RECORDS": True})]
def one(cs):
    c = {**base, **cs}
    try:
        r = subprocess.run([sys.executable, __file__, json.dumps(c)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"{cs} timeout"
    last = (r.stdout.strip().splitlines() or [""])[-1]
    err = [l for l in r.stderr.splitlines() if "Error" in l][-1:] if r.returncode else []
    return f"{cs} rc {r.returncode} {last} {' '.join(err)}"
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(6) as ex:
    for line in ex.map(one, cases):
        print(line, flush=True)
