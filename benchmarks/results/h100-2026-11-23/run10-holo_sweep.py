"""GPU sweep of fast/holographic.py's load-pipelining variants (not committed; run from the repo root):

    python .scratch/holo_sweep.py

Compiling is done first, in parallel worker processes on small inputs of the same
specialisation (T is not specialised), so the timed loop finds every kernel in Triton's cache.

Benchmark shape: HOLOGRAPHIC.make_inputs(4, 8192, 16, 128, bf16, cuda, True, 0): B = 4, T = 8192,
H = 16, D = 512 lanes a head. Times the forward kernel alone and the backward kernel alone (each
through its launcher, timed by benchmarks.measure.time_ms with an L2 flush) for every variant
(tiles = (BT, BD, warps) x (prefetch, stages, vector); forward with exact trigonometry and the
backward with approximate, the defaults on the GPU), checks each variant's o and gradients
against the default's within bf16 rounding, and prints one row per variant. Floors at 3.0 TB/s:
forward 12 B per token-lane, backward 20 B. The first rows repeat the public op (default path).
"""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
CPU_SMOKE = os.environ.get("HOLO_SWEEP_CPU") == "1"  # a tiny shape in Triton's interpreter: checks the script
if CPU_SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from benchmarks.measure import time_ms  # noqa: E402
from benchmarks.specs import HOLOGRAPHIC  # noqa: E402
import fast.holographic as fh  # noqa: E402

TILES = [(64, 16, 4), (32, 32, 4), (16, 64, 4)]
PIPES = [(False, 1, True), (True, 1, True), (False, 2, True), (False, 3, True), (False, 1, False), (True, 1, False)]
VARIANTS = [(t, p, s, v) for t in TILES for p, s, v in PIPES]  # (tiles, prefetch, stages, vector)
# Relative RMS against the default: two bf16 roundings of the same fp32 value differ by one ulp at
# most (2^-8 relative); fp32 reassociation (another BT) moves a value across a rounding boundary
# only rarely, so the RMS stays far below 2 ulps.
BF16_TOL = 2 * 2.0**-8


def warm(variant):
    """Compile one variant's two kernels (a worker process; the same specialisation as the sweep)."""
    import torch
    import fast.holographic as fh
    tiles, prefetch, stages, vector = variant
    dev = torch.device("cuda")
    B, T, H, D = 4, 128, 16, 512
    xs = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for _ in range(4)]
    freqs = fh.zh.random_frequencies(1, D, 0).to(dev).expand(H, -1)
    t0 = torch.zeros(B, dtype=torch.int64, device=dev)
    pipe = dict(tiles=tiles, prefetch=prefetch, stages=stages, vector=vector)
    o, _, ck = fh._holographic_chunk_fwd(*xs, freqs, t0, None, False, tiles[0], **pipe)
    fh._holographic_chunk_bwd(torch.randn_like(o), None, *xs, freqs, t0, ck, False, tiles[0], **pipe)
    torch.cuda.synchronize()
    return variant


def main():
    start = time.perf_counter()
    import concurrent.futures as cf
    import multiprocessing as mp
    if not CPU_SMOKE:
        with cf.ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1), mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(warm, VARIANTS))
        print(f"compiled {len(VARIANTS)} variants in {time.perf_counter() - start:.0f} s")
    dev = torch.device("cpu" if CPU_SMOKE else "cuda")
    shape = (1, 100, 2, 8) if CPU_SMOKE else (4, 8192, 16, 128)
    x = HOLOGRAPHIC.make_inputs(*shape, torch.bfloat16, dev, True, 0)
    ap, am, qr, qi = x["a_phase"], x["a_mag"], x["q_re"], x["q_im"]
    B, T, H, D = ap.shape
    freqs = x["freqs"][0].expand(H, -1)
    t0 = torch.zeros(B, dtype=torch.int64, device=dev)
    lanes = B * T * H * D
    floor_f, floor_b = 12 * lanes / 3.0e12 * 1e3, 20 * lanes / 3.0e12 * 1e3
    TM = dict(reps=1 if CPU_SMOKE else 20, warmup=1 if CPU_SMOKE else 2, max_case_s=1.0)
    print(f"shape B={B} T={T} H={H} D={D} (bf16); floors at 3.0 TB/s: fwd {floor_f:.3f} ms, bwd {floor_b:.3f} ms")
    print(f"defaults: fwd prefetch={fh.PREFETCH} stages={fh.STAGES}; bwd prefetch={fh.PREFETCH_BWD} stages={fh.STAGES_BWD}")

    # Public op, default path, as the benchmark harness calls it (forward, and forward + backward).
    call = lambda: HOLOGRAPHIC.call(fh.holographic_chunk, x, True)  # noqa: E731
    o_ref = call()
    do = torch.randn_like(o_ref)
    ms = time_ms(call, dev, **TM)[0]
    leaves = {k: v.detach().requires_grad_() for k, v in x.items() if k != "freqs"}
    xg = dict(leaves, freqs=x["freqs"])
    o_g = HOLOGRAPHIC.call(fh.holographic_chunk, xg, True)
    ms_fb = time_ms(lambda: torch.autograd.grad(o_g, list(leaves.values()), do, retain_graph=True), dev, **TM)[0]
    print(f"public op: forward {ms:.3f} ms ({ms / floor_f:.2f}x floor); backward alone via autograd {ms_fb:.3f} ms "
          f"({ms_fb / floor_b:.2f}x floor)")

    # Reference gradients: the default backward on the default forward's checkpoints.
    _, _, ck_ref = fh._holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, None, False, 64)
    g_ref = fh._holographic_chunk_bwd(do, None, ap, am, qr, qi, freqs, t0, ck_ref, False, 64)[:4]

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    print(f"{'BT,BD,warps':>12} {'pref':>4} {'stg':>3} {'vec':>3} | {'fwd ms':>7} {'xfloor':>6} {'o err':>8} | "
          f"{'bwd ms':>7} {'xfloor':>6} {'grad err':>8} | {'f+b ms':>7} | ok")
    rows = []
    for tiles, prefetch, stages, vector in VARIANTS:
        if time.perf_counter() - start > 50 and not CPU_SMOKE:
            print("time budget reached: the remaining variants were skipped")
            break
        pipe = dict(tiles=tiles, prefetch=prefetch, stages=stages, vector=vector)
        try:
            fwd = lambda: fh._holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, None, False, tiles[0],  # noqa: E731
                                                    **pipe)
            o, _, ck = fwd()
            bwd = lambda: fh._holographic_chunk_bwd(do, None, ap, am, qr, qi, freqs, t0, ck, False,  # noqa: E731
                                                    tiles[0], **pipe)
            g = bwd()[:4]
            if not CPU_SMOKE:
                torch.cuda.synchronize()
            e_o = rel(o, o_ref)
            e_g = max(rel(a, b) for a, b in zip(g, g_ref))
            ok = max(e_o, e_g) < BF16_TOL
            ms_f = time_ms(fwd, dev, **TM)[0]
            ms_b = time_ms(bwd, dev, **TM)[0]
            rows.append((ms_f, ms_b, tiles, prefetch, stages, vector))
            print(f"{str(tiles):>12} {prefetch:>4d} {stages:>3d} {vector:>3d} | {ms_f:7.3f} {ms_f / floor_f:6.2f} "
                  f"{e_o:8.1e} | {ms_b:7.3f} {ms_b / floor_b:6.2f} {e_g:8.1e} | {ms_f + ms_b:7.3f} | "
                  f"{'ok' if ok else 'MISMATCH'}", flush=True)
        except Exception as e:  # one failing variant must not stop the rest
            print(f"{str(tiles):>12} {prefetch:>4d} {stages:>3d} {vector:>3d} | {type(e).__name__}: {str(e)[:150]}")
    if rows:
        f, b = min(rows), min(rows, key=lambda r: r[1])
        print(f"fastest forward: {f[0]:.3f} ms = {f[0] / floor_f:.2f}x floor, tiles {f[2]}, prefetch {f[3]}, stages {f[4]}, vector {f[5]}")
        print(f"fastest backward: {b[1]:.3f} ms = {b[1] / floor_b:.2f}x floor, tiles {b[2]}, prefetch {b[3]}, stages {b[4]}, vector {b[5]}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
