"""Session 12 (run 43): fast HRC-LA and Performer at small head dims, defaults against every
chunk-parallel tile at 2 warps (no wgmma: a warpgroup needs 4), and the defaults under CUDA 12.9's
ptxas (TRITON_PTXAS_PATH), in bf16 against the float64 zoo on the CPU. One case a child process (a
fault kills its context). Run 42's memcheck: phase 3 read shared memory out of bounds in an
HGMMA.64x32x16 at K = V = M = 32."""
import os, sys, json, subprocess
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
if len(sys.argv) > 1:
    import torch
    from random_features_cases import WELL_CONDITIONED, _fast_grads, _real
    from strategies import Shape
    c = json.loads(sys.argv[1])
    if c["m"] == "hrc":
        import test_hrc_la as t, fast.hrc_la as fh
        m = t.HRC
        fh.REFUSE_SMALL_HEADS = False
    else:
        import test_performer as t, fast.performer as fh
        m = t.PERF
    for n, x in c.get("sw", {}).items():
        if hasattr(fh, n):
            setattr(fh, n, tuple(x))
    K, M = c["K"], c["M"]
    dev = os.environ.get("DEV", "cuda")
    s = Shape(2, 100, 2, K, K)
    rel = lambda a, b: float((a.double().cpu() - b.cpu()).norm() / b.norm())
    out = {}
    for sc in (1.0, WELL_CONDITIONED):
        for causal in (True, False):
            q, k, v, om = m.make(3, s, M, dtype=torch.bfloat16, qk_scale=sc)
            o = m.fast_chunk(*(x.to(dev) for x in (q, k, v)), om.float().to(dev), causal=causal)[0]
            out[f"o{sc}{'c' if causal else 'n'}"] = rel(o, m.chunk(*(x.double() for x in (q, k, v, om)), causal=causal)[0])
    for name, g, r in _fast_grads(m, m.fast_chunk, torch.bfloat16, dev, s, M, 3, True, qk_scale=WELL_CONDITIONED):
        out["d" + name] = rel(_real(g), _real(r))
    print(json.dumps({k: "%.2g" % x for k, x in out.items()}))
    sys.exit()
W2 = {"WALK_TILE": [32, 2, 2], "OUT_TILE": [32, 2, 2], "DWALK_TILE": [32, 2, 2], "BWD_TILE": [32, 2, 1]}
P129 = os.path.join(os.getcwd(), ".scratch", "ptxas129")
shapes = [(32, 32), (32, 16), (16, 32), (16, 16), (32, 64), (64, 32), (16, 128), (32, 128)]
cases = [dict(m=m, K=K, M=M, sw=sw, p=p) for m in ("hrc", "perf") for K, M in shapes
         for sw, p in (({}, 0), (W2, 0), ({}, 1))]
def one(c):
    env = dict(os.environ)
    if c["p"]:
        env["TRITON_PTXAS_PATH"] = P129
    tag = f"{c['m']} K={c['K']} M={c['M']} {'w2' if c['sw'] else 'default'}{' ptxas12.9' if c['p'] else ''}"
    try:
        r = subprocess.run([sys.executable, __file__, json.dumps(c)], capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired:
        return tag + " timeout"
    err = [l for l in r.stderr.splitlines() if "Error" in l][-1:] if r.returncode else []
    return f"{tag} rc {r.returncode} {(r.stdout.strip().splitlines() or [''])[-1]} {' '.join(err)}"
if __name__ == "__main__":
    from concurrent.futures import ThreadPoolExecutor
    sel = [c for c in cases if os.environ.get("ONLY", "") in json.dumps(c)]
    with ThreadPoolExecutor(int(os.environ.get("PAR", 12))) as ex:
        for line in ex.map(one, sel):
            print(line, flush=True)
