"""Per-kernel GPU times (torch.profiler) of fast linear fwd+bwd and holographic fwd at the headline shapes."""
import sys, os
sys.path.insert(0, os.getcwd())
import torch
from torch.profiler import profile, ProfilerActivity
import fast.linear_attention as fl
import fast.holographic as fh
import zoo.holographic as zh
B, T, H, D = 4, 8192, 16, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.rand(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
do = torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16)
def lin():
    o = fl.linear_attention_chunk(q, k, v, normalize=False)[0]
    o.backward(do)
x = [torch.randn(B, T, H, 4 * D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(4)]
freqs = zh.random_frequencies(1, 4 * D, 0).to("cuda").expand(H, -1)
def holo():
    with torch.no_grad():
        fh.holographic_chunk(*x, freqs)
for name, fn in (("linear fwd+bwd", lin), ("holographic fwd", holo)):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        for _ in range(10): fn()
        torch.cuda.synchronize()
    print(f"== {name}: 10 calls")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
