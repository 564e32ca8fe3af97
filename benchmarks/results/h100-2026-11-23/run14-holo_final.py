"""Issue 7 target check: fast holographic_chunk (public op, default switches) at B·T = 32768, T = 8192, bf16, hd_dim 8192
lanes as H = 16 × 512 (the harness's shape) and as H = 1 × 8192 (the card's headline): forward under no_grad, forward
with inputs that need grad (writes the checkpoints), forward + backward; floors at 3.0 TB/s."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch
from benchmarks.measure import time_ms
import fast.holographic as fh
import zoo.holographic as zh
dev = torch.device("cuda")
for H, D in ((16, 512), (1, 8192)):
    B, T = 4, 8192
    g = torch.Generator(device=dev).manual_seed(0)
    xs = [torch.randn(B, T, H, D, device=dev, generator=g).bfloat16() for _ in range(4)]
    freqs = zh.random_frequencies(1, D, 0).to(dev).expand(H, -1)
    floor_f = B * T * H * D * 12 / 3.0e12 * 1e3
    floor_b = B * T * H * D * 20 / 3.0e12 * 1e3
    def fwd():
        with torch.no_grad():
            fh.holographic_chunk(*xs, freqs)
    ms_f, _ = time_ms(fwd, dev, reps=20, warmup=3, max_case_s=3)
    xg = [x.detach().requires_grad_() for x in xs]
    ms_fg, _ = time_ms(lambda: fh.holographic_chunk(*xg, freqs), dev, reps=20, warmup=3, max_case_s=3)
    do = torch.randn(B, T, H, 2 * D, device=dev, generator=g).bfloat16()
    ms_fb, _ = time_ms(lambda: fh.holographic_chunk(*xg, freqs)[0].backward(do), dev, reps=20, warmup=3, max_case_s=3)
    print(f"H={H} D={D}: fwd (no_grad) {ms_f:.3f} ms = {ms_f / floor_f:.2f}x floor {floor_f:.3f} (target <= {1.5 * floor_f:.3f}); "
          f"fwd with grad {ms_fg:.3f}; fwd+bwd {ms_fb:.3f} ms (bwd floor {floor_b:.3f})", flush=True)
