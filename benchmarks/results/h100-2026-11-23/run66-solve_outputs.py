"""Run 66 (session 18): outputs and gradients of the delta family saved by two runs of run56-delta_wy.py
(RUN56_SAVE), compared: python run66-solve_outputs.py A.pt B.pt (B the reference)."""
import sys
import torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
for case in a:
    d = " ".join(f"{(x - y).abs().max().item() / y.abs().max().item():.1e}" for x, y in zip(a[case], b[case]))
    same = all(torch.equal(x, y) for x, y in zip(a[case], b[case]))
    print(f"{case}: {sys.argv[1]} vs {sys.argv[2]}, max|diff| / max|ref| (o dq dk dv [dg] dbeta) {d} | bit-identical {same}")
