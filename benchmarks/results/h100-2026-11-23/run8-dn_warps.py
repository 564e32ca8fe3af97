import sys, os
sys.path.insert(0, os.getcwd())
import torch
from triton.testing import do_bench
import fast.deltanet as fd
B, T, H, D = 4, 8192, 16, 128
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16)
k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda", generator=g), dim=-1).to(torch.bfloat16)
v = torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16)
beta = torch.rand(B, T, H, device="cuda", generator=g).to(torch.bfloat16)
gate = -torch.rand(B, T, H, device="cuda", generator=g) * 0.1
s = D ** -0.5
for name, gg in (("delta", None), ("gated", gate)):
    for nw in (8, 4):
        try:
            w, u, A, _, gam = fd._chunk_wy_fwd(q, k, v, beta, gg, s, False, num_warps=nw)
            o = fd._chunk_state_fwd(q, k, w, u, gam, A, None, s, True, num_warps=nw)[0]
            t1 = do_bench(lambda: fd._chunk_wy_fwd(q, k, v, beta, gg, s, False, num_warps=nw))
            t2 = do_bench(lambda: fd._chunk_state_fwd(q, k, w, u, gam, A, None, s, True, num_warps=nw))
            if nw == 8: ref = o
            print(f"{name} warps {nw}: step 1 {t1:.3f} ms, step 2 {t2:.3f} ms, sum {t1 + t2:.3f}; max diff vs 8 warps {(o.float() - ref.float()).abs().max().item():.1e}", flush=True)
        except Exception as e:
            print(name, nw, "failed", type(e).__name__, str(e)[:200], flush=True)
    for nw1, nw2 in ((4, 8), (8, 4)):
        w, u, A, _, gam = fd._chunk_wy_fwd(q, k, v, beta, gg, s, False, num_warps=nw1)
        t1 = do_bench(lambda: fd._chunk_wy_fwd(q, k, v, beta, gg, s, False, num_warps=nw1))
        t2 = do_bench(lambda: fd._chunk_state_fwd(q, k, w, u, gam, A, None, s, True, num_warps=nw2))
        print(f"{name} step 1 at {nw1} warps {t1:.3f}, step 2 at {nw2} warps {t2:.3f}", flush=True)
