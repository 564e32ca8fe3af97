"""Run 59 (session 16): which kernel faults (illegal memory access, run 58) in the delta rule's bf16
fwd + bwd at K = V = 256 (tests/test_deltanet_fast.py's half-precision gradient test: B 2, T 300, H 2,
initial state, cotangents on o and the final state). Run with CUDA_LAUNCH_BLOCKING=1: every launch
is printed before it runs and synced after, so the last name printed is the faulting kernel. argv:
optional overrides "kernel=BV,warps,stages;..." (kernel: a key of fast.deltanet._tiles); a gate with
the word gated."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F
import fast.deltanet as fd, fast.gated_deltanet as fg
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: TRITON_INTERPRET=1, a check of the script
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
over = {}
gated = "gated" in sys.argv[1:]
for spec in [a for a in sys.argv[1:] if "=" in a]:
    for kv in spec.split(";"):
        name, vals = kv.split("=")
        b, w, s = (int(x) for x in vals.split(","))
        over[name] = dict(BV=b, num_warps=w, num_stages=s)
orig_tiles = fd._tiles
fd._tiles = lambda *a: {**orig_tiles(*a), **over}
orig = fd.launch
def launch(kernel, grid, *args, **kw):
    print(f"  launch {kernel.fn.__name__ if hasattr(kernel, 'fn') else kernel} grid {grid} {kw.get('num_warps')} warps "
          f"{kw.get('num_stages')} stages", flush=True)
    orig(kernel, grid, *args, **kw)
    sync()
fd.launch = launch
B, T, H, D = 2, 300, 2, 256
gen = torch.Generator(device=dev).manual_seed(8)
q = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
k = F.normalize(torch.randn(B, T, H, D, device=dev, generator=gen), dim=-1).bfloat16()
v = torch.randn(B, T, H, D, device=dev, generator=gen).bfloat16()
beta = torch.rand(B, T, H, device=dev, generator=gen).bfloat16()
g = (-torch.rand(B, T, H, device=dev, generator=gen) * 0.1).bfloat16()
S0 = torch.randn(B, H, D, D, device=dev, generator=gen)
xs = [t.detach().requires_grad_() for t in (q, k, v, g, beta, S0)]
print(f"K = V = {D}, bf16, gated {gated}, overrides {over}: tiles {fd._tiles(D, D, torch.bfloat16)}", flush=True)
if gated:
    o, S = fg.gated_delta_rule_chunk(xs[0], xs[1], xs[2], xs[3], xs[4], initial_state=xs[5], output_final_state=True)
else:
    o, S = fd.delta_rule_chunk(xs[0], xs[1], xs[2], xs[4], initial_state=xs[5], output_final_state=True)
(o.float().square().sum() + S.square().sum()).backward()
sync()
print("OK: fwd + bwd ran; grads (q k v g beta S0) finite:", [None if x.grad is None else bool(x.grad.isfinite().all()) for x in xs],
      "output finite:", bool(o.isfinite().all()), flush=True)
