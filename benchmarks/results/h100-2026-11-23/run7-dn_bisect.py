"""Time the delta-rule forward (and its step 1) of several committed versions of fast/deltanet.py, same inputs."""
import importlib.util, sys, os, torch, traceback
sys.path.insert(0, os.getcwd())
from triton.testing import do_bench
B, T, H, D = 4, 8192, 16, 128
dev = "cuda"; g = torch.Generator(device=dev).manual_seed(0)
q = torch.randn(B, T, H, D, device=dev, generator=g).to(torch.bfloat16)
k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device=dev, generator=g), dim=-1).to(torch.bfloat16)
v = torch.randn(B, T, H, D, device=dev, generator=g).to(torch.bfloat16)
beta = torch.rand(B, T, H, device=dev, generator=g).to(torch.bfloat16)
ref = None
for c in sys.argv[1:]:
    try:
        spec = importlib.util.spec_from_file_location(f"dn_{c}", f".scratch/dn_{c}.py")
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        fn = lambda: m.delta_rule_chunk(q, k, v, beta)
        o = fn()[0]
        if ref is None: ref = o
        ms = do_bench(fn, warmup=5, rep=50)
        print(f"{c}: delta_rule_chunk fwd {ms:.3f} ms, max diff vs first {(o.float() - ref.float()).abs().max().item():.2e}", flush=True)
    except Exception as e:
        print(f"{c}: failed {type(e).__name__}: {str(e)[:300]}", flush=True)
