"""Session 8: zoo linear_attention_chunk compiled, before (cumsum prefix, e976c71) and after (prefix
as a matmul with a strictly lower-triangular ones matrix), at L = 64 / 128 / 256, beside the fast kernel.
The old form is zoo/linear_attention.py at e976c71, put beside this script by
    git show e976c71:zoo/linear_attention.py > .scratch/linear_attention_old.py"""
import os, sys, importlib.util
sys.path.insert(0, os.getcwd())
import torch, triton
import zoo.linear_attention as new
import fast.linear_attention as fl
spec = importlib.util.spec_from_file_location("old_la", ".scratch/linear_attention_old.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
B, T, H, D = 4, 8192, 16, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=100)
ref = new.linear_attention_chunk(q.double(), k.double(), v.double(), normalize=False)[0]
def rel(o): return ((o.double() - ref).norm() / ref.norm()).item()
fast = lambda: fl.linear_attention_chunk(q, k, v, normalize=False)
fast(); t_fast = bench(fast)
print(f"fast {t_fast:.3f} ms rel {rel(fast()[0]):.1e}", flush=True)
for L in (64, 128, 256):
    for name, mod in (("old", old), ("new", new)):
        torch._dynamo.reset()
        f = torch.compile(mod.linear_attention_chunk, fullgraph=True)
        run = lambda: f(q, k, v, normalize=False, chunk_size=L)
        o = run()[0]
        t = bench(run)
        print(f"zoo compiled {name} L={L}: {t:.3f} ms = {t / t_fast:.2f}x fast, rel {rel(o):.1e}", flush=True)
