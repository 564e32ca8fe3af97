"""Run 62 (session 16): after step 4 of the delta family was found miscompiled at 3 stages (runs 58-61,
wrong and nondeterministic gradients at the benchmark's size, unseen by the small GPU tests), the same
question for every fast op of the benchmark: at B 4, T 4096, H 16, D 64, bf16, causal and not, three
fwd + bwd on the same inputs and cotangent, the fast op's output and gradients are they bit-identical
(a kernel with atomics may differ legitimately: the script says which do), and how far are they from
the same fast op run on the inputs in fp32 (max |diff| / max |fp32|, per tensor)?
argv: optional method names. On a CPU (TRITON_INTERPRET=1) a check of the script at a tiny size."""
import importlib.util, os, sys, time
sys.path.insert(0, os.getcwd())
import torch
from benchmarks import impls, specs

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
B, T, H, D = (4, 4096, 16, 64) if dev.type == "cuda" else (1, 64, 2, 16)
names = sys.argv[1:] or [s.name for s in specs.SPECS]
for spec in sorted((s for s in specs.SPECS if s.name in names), key=lambda s: names.index(s.name)):  # argv's order
    found = importlib.util.find_spec(spec.fast_path)
    atomics = found is not None and "tl.atomic" in open(found.origin).read()
    for causal in spec.causal_modes:
        t0 = time.time()
        try:
            fn = impls.build(spec, "fast", dev, causal, (B, T, H, D))
        except impls.Skip as e:
            print(f"{spec.name} causal={causal}: skipped ({e})", flush=True)
            continue
        try:
            x = spec.make_inputs(B, T, H, D, torch.bfloat16, dev, causal, 0)
            x32 = {n: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for n, v in x.items()}

            def run(inp, cot=None):
                leaves = {n: inp[n].detach().requires_grad_() for n in spec.grad_inputs}
                o = fn({**inp, **leaves}, causal)
                cot = torch.randn(o.shape, generator=specs.generator(dev, 1), device=dev).to(o.dtype) if cot is None else cot
                o.backward(cot)
                return [o.detach()] + [leaves[n].grad for n in spec.grad_inputs], cot

            first, cot = run(x)
            same = all(all(torch.equal(a, b) for a, b in zip(first, run(x, cot)[0])) for _ in range(2))
            ref, _ = run(x32, cot.float())
            errs = " ".join(f"{n} {((a.float() - r).abs().max() / r.abs().max()).item():.1e}"
                            for n, a, r in zip(("o",) + spec.grad_inputs, first, ref))
            nonfinite = [n for n, a in zip(("o",) + spec.grad_inputs, first) if not a.isfinite().all()]
            print(f"{spec.name}{' ' + spec.variant if spec.variant else ''} causal={causal}: repeats bit-identical {same}"
                  f"{' (module uses atomics)' if atomics else ''} | bf16 vs fp32 inputs: {errs}"
                  f"{' | NON-FINITE ' + str(nonfinite) if nonfinite else ''} | {time.time() - t0:.1f} s", flush=True)
        except Exception as e:
            print(f"{spec.name} causal={causal}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
