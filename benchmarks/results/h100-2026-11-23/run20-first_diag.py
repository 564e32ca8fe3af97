"""First call with a per-compile breakdown: python benchmarks/results/h100-2026-11-23/run20-first_diag.py <first_call args...>.
Run with empty TRITON_CACHE_DIR. Prints each Triton compile's kernel name and seconds."""
import os, sys, time, json
sys.path.insert(0, os.getcwd())
import triton.compiler as tc
import triton.compiler.compiler as tcc
LOG = []
_orig = tcc.compile
def timed(src, *a, **kw):
    t = time.perf_counter()
    r = _orig(src, *a, **kw)
    name = getattr(getattr(src, "fn", None), "__name__", str(src)[:40])
    consts = getattr(src, "constants", {})
    LOG.append((name, round(time.perf_counter() - t, 3), {str(k): v for k, v in consts.items() if not str(k).startswith("(")}))
    return r
tcc.compile = timed
tc.compile = timed
from benchmarks import first_call
t0 = time.perf_counter()
first_call.main(sys.argv[1:])
print("compiles:", len(LOG), "sum", round(sum(x[1] for x in LOG), 2))
for x in LOG:
    print(" ", x[0], x[1], json.dumps(x[2], default=str)[:200])
