"""Run 63 (session 17): where run 62's large gradient error of the fast causal HRC-LA in bf16 comes from
(dq 6.7e-2, dk 3.5e-2 of the largest entry, against the same op on the inputs in fp32). The largest dq
entries sit in the first rows, where the mass n is small and o = num / max(den, eps·n) divides by
it; dq = Σ_m dθ_m Ω_m sums M = 256 terms of either sign into a much smaller result (the gradient of
a kernel estimate), so a rounding of the features or of dθ is amplified by that cancellation. The
suspects: the feature dots at plain tf32 for 16-bit inputs (_random_features.dot_precision),
the bf16 records (HALF_RECORDS), the bf16 feature dots of phase 3 (FEATURE_DOTS_16).
B 4, T 4096, H 16, D 64, M 256, causal, bf16 inputs of benchmarks.specs (seed 0), one cotangent.
Each configuration: max |diff| / max |ref| and relative RMS of o, dq, dk, dv against (a) the fast
op on the same inputs in fp32 (tf32x3) and (b) the zoo chunk form in fp64; the row of dq's largest
error; fwd+bwd median ms (CUDA events through benchmarks.measure.time_ms). argv: configuration
names (default: the six run 63 ran; levers joined by " + ", see setting(); "fp32 records and tf32x3
in the backward": HALF_RECORDS off and tf32x3 for the backward's launches only).
On a CPU (TRITON_INTERPRET=1): a check of the script at a tiny size."""
import contextlib, os, sys
sys.path.insert(0, os.getcwd())
import torch
from benchmarks import specs
from benchmarks.measure import time_ms
import fast.hrc_la as fh, fast._random_features as rf
import zoo.hrc_la as zh

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
B, T, H, D = (4, 4096, 16, 64) if dev.type == "cuda" else (1, 128, 2, 16)
if os.environ.get("RUN63_SHAPE"):  # "B,T,H,D": another size (the interpreter at head dim 64, session 17)
    B, T, H, D = (int(n) for n in os.environ["RUN63_SHAPE"].split(","))
x = specs.HRC_LA.make_inputs(B, T, H, D, torch.bfloat16, dev, True, 0)
om = x["omega"][0].expand(H, *x["omega"][0].shape).contiguous()
cot = torch.randn(B, T, H, D, device=dev, generator=torch.Generator(device=dev).manual_seed(1))


def run(op, dtype, om_=om):
    leaves = [x[n].to(dtype).detach().requires_grad_() for n in "qkv"]
    o = op(*leaves, om_.to(dtype) if dtype == torch.float64 else om_, causal=True)[0]
    o.backward(cot.to(o.dtype))
    return [o.detach().double()] + [t.grad.double() for t in leaves]


ref32 = run(fh.hrc_la_chunk, torch.float32)
ref64 = run(zh.hrc_la_chunk, torch.float64)
print("fast fp32 vs zoo fp64: " + " ".join(f"{n} {((a - r).abs().max() / r.abs().max()).item():.1e}"
                                           for n, a, r in zip(("o", "dq", "dk", "dv"), ref32, ref64)), flush=True)


@contextlib.contextmanager
def setting(name):
    """name: "default", "all three", or levers joined by " + " ("HALF_RECORDS off", "FEATURE_DOTS_16
    off", "tf32x3 everywhere", "tf32x3 in the backward", "fp32 records and tf32x3 in the backward")."""
    saved = (fh.HALF_RECORDS, fh.FEATURE_DOTS_16, rf.dot_precision, fh._launch_parallel_bwd)
    exact = lambda q: "tf32x3"  # noqa: E731
    levers = ["HALF_RECORDS off", "FEATURE_DOTS_16 off", "tf32x3 everywhere"] if name == "all three" else name.split(" + ")
    for lever in levers:
        if lever == "HALF_RECORDS off":
            fh.HALF_RECORDS = False
        elif lever == "FEATURE_DOTS_16 off":
            fh.FEATURE_DOTS_16 = False
        elif lever == "tf32x3 everywhere":
            rf.dot_precision = exact
        elif lever in ("tf32x3 in the backward", "fp32 records and tf32x3 in the backward"):
            def bwd(*a, lever=lever, half=fh.HALF_RECORDS, **kw):  # the backward walks again, writing its own records
                rf.dot_precision = exact
                fh.HALF_RECORDS = half and lever == "tf32x3 in the backward"
                try:
                    return saved[3](*a, **kw)
                finally:
                    rf.dot_precision, fh.HALF_RECORDS = saved[2], half
            fh._launch_parallel_bwd = bwd
        elif lever != "default":
            raise ValueError(f"unknown setting {lever!r}")
    try:
        yield
    finally:
        fh.HALF_RECORDS, fh.FEATURE_DOTS_16, rf.dot_precision, fh._launch_parallel_bwd = saved


for name in sys.argv[1:] or ("default", "HALF_RECORDS off", "FEATURE_DOTS_16 off", "tf32x3 in the backward",
                             "tf32x3 everywhere", "all three"):
    with setting(name):
        got = run(fh.hrc_la_chunk, torch.bfloat16)
        leaves = [x[n].detach().requires_grad_() for n in "qkv"]

        def step():
            fh.hrc_la_chunk(*leaves, om, causal=True)[0].backward(cot.bfloat16())
        ms = time_ms(step, dev, reps=10, warmup=2, max_case_s=5)[0] if dev.type == "cuda" else float("nan")
    line = []
    for tag, ref in (("vs fast fp32", ref32), ("vs zoo fp64", ref64)):
        line.append(tag + ": " + " ".join(
            f"{n} {((a - r).abs().max() / r.abs().max()).item():.1e}/{((a - r).norm() / r.norm()).item():.1e}"
            for n, a, r in zip(("o", "dq", "dk", "dv"), got, ref)))
    e = (got[1] - ref64[1]).abs().amax(-1)  # [B, T, H]
    i = int(e.flatten().argmax())
    print(f"{name}: fwd+bwd {ms:.3f} ms | " + " | ".join(line) + f" | dq's worst row t = {(i // H) % T}"
          f" (max over that row of the fp64 dq {ref64[1].flatten(0, 2)[i].abs().max().item():.3g}, over all"
          f" {ref64[1].abs().max().item():.3g})  [max/RMS relative]", flush=True)
