"""GPU sweep, round 2, of fast/holographic.py's forward variants (issue 7; not committed). Run from the repo root:

    python .scratch/holo_sweep2.py            (HOLO_SWEEP_CPU=1: a tiny shape in Triton's interpreter)

Every variant's forward kernel is compiled first, in parallel worker processes on small inputs of
the same specialisation (T is not specialised), so the timed loop finds it in Triton's cache.
Benchmark shape: HOLOGRAPHIC.make_inputs(4, 8192, 16, 128, bf16, cuda, True, 0): B = 4, T = 8192,
H = 16, D = 512 lanes a head. Each variant: the forward kernel alone through its launcher, without
the checkpoints (as the benchmark's no_grad forward now runs), timed by benchmarks.measure.time_ms
with an L2 flush; its o checked against the default's within bf16 rounding (relative RMS).
Variant = (tiles (BT, BD, warps), prefetch, stages, vector, fast, scan, maxnreg). Floor at 3.0 TB/s:
12 B per token-lane. The backward is not touched in round 2 and not timed here.
"""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
CPU_SMOKE = os.environ.get("HOLO_SWEEP_CPU") == "1"
if CPU_SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from benchmarks.measure import time_ms  # noqa: E402
from benchmarks.specs import HOLOGRAPHIC  # noqa: E402
import fast.holographic as fh  # noqa: E402

T16 = (16, 64, 4)  # the default tile
VARIANTS = [  # (tiles, prefetch, stages, vector, fast, scan, maxnreg); sm_90 registers from the card
    (T16, 0, 1, 0, 0, "cumsum", None),  # default (119 regs, 4 programs an SM: 528 slots for 512)
    (T16, 0, 1, 0, 1, "cumsum", None),  # approximate div, sin, cos, rsqrt (96 regs)
    (T16, 0, 1, 0, 0, "dot", None),  # tril @ b on the tensor cores (152 regs: 3 an SM, two waves)
    (T16, 0, 1, 0, 1, "dot", None),
    (T16, 0, 1, 0, 0, "cumsum", 96),  # 5 programs an SM
    (T16, 1, 1, 0, 0, "cumsum", 128),  # prefetch in 128 registers (4 an SM, one wave; 8 B stack)
    (T16, 1, 1, 0, 1, "cumsum", None),
    ((16, 128, 4), 0, 1, 0, 0, "cumsum", None),  # BD = 32·warps: a thread owns a column, scan in-thread
    ((16, 128, 4), 0, 1, 0, 1, "cumsum", None),
    ((16, 64, 2), 0, 1, 0, 0, "cumsum", None),
    ((16, 64, 2), 0, 1, 0, 1, "cumsum", None),
    ((16, 32, 1), 0, 1, 0, 0, "cumsum", None),
    ((16, 32, 1), 0, 1, 0, 1, "cumsum", None),
    ((8, 128, 4), 0, 1, 0, 0, "cumsum", None),
    ((8, 64, 2), 0, 1, 0, 0, "cumsum", None),
    ((8, 64, 2), 0, 1, 0, 1, "cumsum", None),
    ((8, 32, 1), 0, 1, 0, 1, "cumsum", None),
    ((16, 32, 4), 0, 1, 0, 0, "cumsum", None),  # 1024 programs; 69 regs: 7 an SM, two waves
    ((16, 32, 4), 0, 1, 0, 0, "cumsum", 64),  # 8 an SM: one wave
    ((16, 32, 4), 0, 1, 0, 1, "cumsum", None),
    ((16, 64, 8), 0, 1, 0, 0, "cumsum", None),  # 80 regs: 3 an SM, two waves
    ((16, 64, 8), 0, 1, 0, 0, "cumsum", 64),  # 4 an SM: one wave
    ((16, 64, 8), 0, 1, 0, 1, "cumsum", None),
    ((32, 64, 8), 0, 1, 0, 0, "cumsum", None),
    ((32, 32, 4), 0, 1, 0, 1, "dot", None),
    (T16, 0, 1, 1, 0, "cumsum", None),  # vector loads (round 1: 2.55 ms)
]
BF16_TOL = 2 * 2.0**-8  # relative RMS: two bf16 roundings of one fp32 value differ by one ulp (2^-8) at most


def pipe(v):
    tiles, prefetch, stages, vector, fast, scan, maxnreg = v
    return dict(tiles=tiles, prefetch=bool(prefetch), stages=stages, vector=bool(vector), fast=bool(fast), scan=scan,
                maxnreg=maxnreg, store_ck=False)


def warm(v):
    """Compile one variant (a worker process; the same specialisation as the sweep)."""
    import torch
    import fast.holographic as fh
    dev = torch.device("cuda")
    B, T, H, D = 4, 64, 16, 512
    xs = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for _ in range(4)]
    freqs = fh.zh.random_frequencies(1, D, 0).to(dev).expand(H, -1)
    t0 = torch.zeros(B, dtype=torch.int64, device=dev)
    try:
        fh._holographic_chunk_fwd(*xs, freqs, t0, None, False, v[0][0], **pipe(v))
        torch.cuda.synchronize()
    except Exception as e:  # reported again in the timed loop
        return f"{v}: {type(e).__name__}"
    return None


def main():
    start = time.perf_counter()
    import concurrent.futures as cf
    import multiprocessing as mp
    if not CPU_SMOKE:
        with cf.ProcessPoolExecutor(max_workers=min(12, os.cpu_count() or 1), mp_context=mp.get_context("spawn")) as ex:
            errs = [e for e in ex.map(warm, VARIANTS) if e]
        print(f"compiled {len(VARIANTS)} variants in {time.perf_counter() - start:.0f} s; failed: {errs}")
    dev = torch.device("cpu" if CPU_SMOKE else "cuda")
    shape = (1, 100, 2, 8) if CPU_SMOKE else (4, 8192, 16, 128)
    x = HOLOGRAPHIC.make_inputs(*shape, torch.bfloat16, dev, True, 0)
    ap, am, qr, qi = x["a_phase"], x["a_mag"], x["q_re"], x["q_im"]
    B, T, H, D = ap.shape
    freqs = x["freqs"][0].expand(H, -1)
    t0 = torch.zeros(B, dtype=torch.int64, device=dev)
    floor = 12 * B * T * H * D / 3.0e12 * 1e3
    TM = dict(reps=1 if CPU_SMOKE else 20, warmup=1 if CPU_SMOKE else 2, max_case_s=1.0)
    print(f"shape B={B} T={T} H={H} D={D} (bf16); forward floor at 3.0 TB/s: {floor:.3f} ms")

    call = lambda: HOLOGRAPHIC.call(fh.holographic_chunk, x, True)  # noqa: E731
    with torch.no_grad():  # the benchmark's forward: no checkpoints written
        o_ref = call()
        ms = time_ms(call, dev, **TM)[0]
    ck_on = lambda: fh._holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, None, False, 16)  # noqa: E731
    ms_ck = time_ms(ck_on, dev, **TM)[0]
    print(f"public op under no_grad: {ms:.3f} ms ({ms / floor:.2f}x floor); default kernel writing the "
          f"checkpoints (as with grad): {ms_ck:.3f} ms")

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    print(f"{'BT,BD,warps':>13} {'pref':>4} {'stg':>3} {'vec':>3} {'fast':>4} {'scan':>6} {'maxreg':>6} | "
          f"{'fwd ms':>7} {'xfloor':>6} {'o err':>8} | ok")
    rows = []
    for v in VARIANTS:
        if time.perf_counter() - start > 55 and not CPU_SMOKE:
            print("time budget reached: the remaining variants were skipped")
            break
        tiles, prefetch, stages, vector, fast, scan, maxnreg = v
        head = f"{str(tiles):>13} {prefetch:>4d} {stages:>3d} {vector:>3d} {fast:>4d} {scan:>6} {str(maxnreg):>6}"
        try:
            fwd = lambda: fh._holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, None, False, tiles[0],  # noqa: E731
                                                    **pipe(v))
            o = fwd()[0]
            e_o = rel(o, o_ref)
            ms_f = time_ms(fwd, dev, **TM)[0]
            rows.append((ms_f, v))
            print(f"{head} | {ms_f:7.3f} {ms_f / floor:6.2f} {e_o:8.1e} | {'ok' if e_o < BF16_TOL else 'MISMATCH'}",
                  flush=True)
        except Exception as e:  # one failing variant must not stop the rest
            print(f"{head} | {type(e).__name__}: {str(e)[:150]}")
    if rows:
        f = min(rows, key=lambda r: r[0])
        print(f"fastest forward: {f[0]:.3f} ms = {f[0] / floor:.2f}x floor: {f[1]}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
