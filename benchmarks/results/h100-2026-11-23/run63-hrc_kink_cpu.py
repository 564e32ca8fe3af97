"""Session 17, on a CPU (TRITON_INTERPRET=1): what run 63's large dq error of the fast causal HRC-LA in
bf16 is. The interpreter reproduces it at run 63's inputs cut to T = 128 (B 4, H 16, D 64, M 256,
benchmarks.specs seed 0): so neither tf32 products nor the SFU's sin/cos (the interpreter computes
dots and cos/sin exactly) cause it. Per (batch, head): dq of the fast op on the bf16 inputs against
the same op on them in fp32, and each row's den/(eps·n) from the zoo's feature maps in fp64 (the
normaliser against the floor of (3), o = num / max(den, eps·n)). Prints the worst rows with that
ratio, and the largest error over all rows and without the rows within 1% of the floor."""
import os, sys
sys.path.insert(0, os.getcwd())
import torch
from benchmarks import specs
import fast.hrc_la as fh, zoo.hrc_la as zh

B, T, H, D = 4, 128, 16, 64
x = specs.HRC_LA.make_inputs(B, T, H, D, torch.bfloat16, torch.device("cpu"), True, 0)
om = x["omega"][0].expand(H, *x["omega"][0].shape).contiguous()
cot = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(1))
rows, err_all, err_off, ref_max, near = [], 0.0, 0.0, 0.0, 0
for b in range(B):
    for h in range(H):
        q, k, v, c = (t[b:b + 1, :, h:h + 1] for t in (x["q"], x["k"], x["v"], cot))

        def dq(dtype):
            leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
            o = fh.hrc_la_chunk(*leaves, om[h:h + 1], causal=True)[0]
            o.backward(c.to(o.dtype))
            return leaves[0].grad.double()[0, :, 0]  # [T, D]
        ref, got = dq(torch.float32), dq(torch.bfloat16)
        phi_q, _ = zh.hrc_feature_map(q.double(), om[h:h + 1].double())
        phi_k, a = zh.hrc_feature_map(k.double(), om[h:h + 1].double())
        w = torch.exp(a - a.max())  # e^{a_j − c}, one scale for the whole row: exact in fp64 at this T
        ratio = ((phi_q * (phi_k.conj() * w[..., None]).cumsum(1)).sum(-1).real / (zh.EPS_DENOMINATOR * w.cumsum(1)))[0, :, 0]
        e = (got - ref).abs().amax(-1)
        kink = (ratio - 1).abs() < 1e-2
        near += int(kink.sum())
        err_all, err_off = max(err_all, e.max().item()), max(err_off, e[~kink].max().item())
        ref_max = max(ref_max, ref.abs().max().item())
        rows += [(e[t].item(), b, h, t, ref[t].abs().max().item(), ratio[t].item()) for t in e.topk(2).indices.tolist()]
for r in sorted(rows, reverse=True)[:6]:
    print("dq error %.3g at b %d h %d t %d (that row's largest |dq| %.3g), den/(eps n) = %.4f" % r)
print(f"dq: max error / max |dq| {err_all / ref_max:.2e} over all {B * T * H} rows; {err_off / ref_max:.2e} without "
      f"the {near} rows within 1% of the floor")
