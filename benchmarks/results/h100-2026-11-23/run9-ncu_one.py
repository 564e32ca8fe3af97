import os, sys
sys.path.insert(0, os.getcwd())
import torch
import importlib
from benchmarks import specs
name = sys.argv[1]
sp = specs.all_specs()[name]
op = getattr(importlib.import_module(f"fast.{name}"), sp.chunk_op)
B, T, H, D = (4, 8192, 16, 64) if name in ("hrc_la", "performer") else (4, 8192, 16, 128)
x = sp.make_inputs(B, T, H, D, torch.bfloat16, torch.device("cuda"), True, 0)
with torch.no_grad():
    for _ in range(3):
        sp.call(op, x, True)
torch.cuda.synchronize()
