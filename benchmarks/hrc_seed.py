"""The HRC-LA README's benchmark, reproduced and extended (issue 5).

The unofficial HRC-LA repository (IrohAmca/HRC-LA, benchmarks/benchmark.py) times
`nn.MultiheadAttention` against its HRCMultiheadAttention for N = 1024 ... 16384 (d_model 16, 4 heads,
M = 16, batch 1, x ~ N(0, 1), eval, no grad) and reports time, peak memory, speed-up, memory saving
and the MSE against the standard output with the weights copied. Its unit test
(tests/test_attention.py) checks MSE < 0.05 at d_model 64, 4 heads, M = 128, N = 512 ... 2048.

This script measures the same table, with more rows:
    mha            nn.MultiheadAttention(need_weights=True): the naive [N, N] path the seed timed
    sdpa           the same projections around F.scaled_dot_product_attention (flash on a GPU)
    hrc-fixed      zoo HRC-LA, fixed Ω (orthogonal, chi lengths)
    hrc-learnable  zoo HRC-LA, learnable Ω (the same initialisation, untrained)
    favor+         zoo Performer (FAVOR+), the reference point
    hrc-fast, favor+-fast   the Triton layers (CUDA only)
and the accuracy test, with the public code's own estimator beside ours ("public": fixed √d row
lengths and the unconjugated normaliser + 1e-6, re-derived from methods.md §1.4, not copied).

    python -m benchmarks.hrc_seed                       # CPU: N = 1024..4096, accuracy test
    python -m benchmarks.hrc_seed --N 1024 2048 4096 8192 16384 65536 --d-model 1024 --heads 16 --m 256
    python -m benchmarks.hrc_seed --accuracy-only
    python -m benchmarks.hrc_seed --targets             # CUDA: the issue's speed targets only

Writes <out>/hrc_seed-<device>.json (records), .md (tables) and .png (time and MSE against N).
Non-causal throughout, as the seed (its layer has no causal form).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import hrc_la as zh
from zoo import performer as zp


# ------------------------------------------------------------------------------------------------
# The layers under test, all with weights copied from one nn.MultiheadAttention
# ------------------------------------------------------------------------------------------------
class SDPAAttention(nn.Module):
    """nn.MultiheadAttention's projections around F.scaled_dot_product_attention."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha, self.h = mha, mha.num_heads

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias).chunk(3, -1)
        q, k, v = (t.view(B, N, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.mha.out_proj(o.transpose(1, 2).reshape(B, N, C))


class MHANaive(nn.Module):
    """nn.MultiheadAttention as the seed called it (attention weights returned: the [N, N] path)."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=True)[0]


def public_hrc_output(layer: zh.HRCMultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """The public code's estimator on our layer's weights: fixed-√d Ω rows, numerator with
    conj φ(k), normaliser Σ φ(k) without the conjugate, + 1e-6 (methods.md §1.4). For comparison."""
    q, k, v = layer._qkv(x)
    D = q.shape[-1]
    omega = torch.stack([zh.orthogonal_random_features(layer.m_features, D, scaling="fixed",
                                                       generator=torch.Generator().manual_seed(h))
                         for h in range(layer.num_heads)]).to(x.device)
    u_q, u_k = q * D ** -0.25, k * D ** -0.25
    phi = lambda u: (torch.exp(0.5 * u.pow(2).sum(-1, keepdim=True)) / math.sqrt(layer.m_features)
                     * torch.exp(1j * torch.einsum('bthk,hmk->bthm', u, omega)))
    pq, pk = phi(u_q), phi(u_k)
    kv = torch.einsum('bthm,bthv->bhmv', pk.conj(), v.to(pk.dtype))
    num = torch.einsum('bthm,bhmv->bthv', pq, kv).real
    den = torch.einsum('bthm,bhm->bth', pq, pk.sum(1)).real  # the missing conjugate
    return layer.out_proj((num / (den[..., None] + 1e-6)).flatten(-2))


def build(name, mha, d_model, heads, m, device):
    if name == "mha":
        return MHANaive(mha)
    if name == "sdpa":
        return SDPAAttention(mha)
    if name.startswith("hrc"):
        mod = zh
        if name.endswith("fast"):
            import fast.hrc_la as mod  # noqa: the Triton layer, CUDA only
        layer = mod.HRCMultiheadAttention(d_model, heads, m, learnable_omega=(name == "hrc-learnable"))
    else:
        mod = zp
        if name.endswith("fast"):
            import fast.performer as mod  # noqa
        layer = mod.PerformerAttention(d_model, heads, m, causal=False)
    layer.copy_weights_from(mha)
    return layer.to(device)


# ------------------------------------------------------------------------------------------------
# Timing and memory
# ------------------------------------------------------------------------------------------------
def measure(fn, x, reps, device):
    """(median ms, peak MB above the inputs or None on a CPU, output)."""
    cuda = device.type == "cuda"
    with torch.no_grad():
        out = fn(x)  # warm-up (and compile / autotune)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(reps):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = fn(x)
                times.append(1e3 * (time.perf_counter() - t0))
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return statistics.median(times), peak, out


def speed_table(args, device, dtype):
    impls = ["mha", "sdpa", "hrc-fixed", "hrc-learnable", "favor+"]
    if device.type == "cuda":
        impls += ["hrc-fast", "favor+-fast"]
    records = []
    for N in args.N:
        torch.manual_seed(0)
        mha = nn.MultiheadAttention(args.d_model, args.heads, batch_first=True).to(device).eval()
        x = torch.randn(args.batch, N, args.d_model, device=device)
        ref = None
        for name in impls:
            rec = dict(table="speed", impl=name, N=N, B=args.batch, d_model=args.d_model, heads=args.heads,
                       m=args.m, dtype=str(dtype).replace("torch.", ""), ms=None, peak_mb=None, mse=None, note="")
            if name == "mha" and N > args.mha_max_N:
                rec["note"] = f"skipped: the [N, N] weights of N = {N} exceed --mha-max-N"
                records.append(rec)
                continue
            if device.type == "cpu" and name in ("hrc-fixed", "hrc-learnable", "favor+") and N > args.cpu_max_N:
                rec["note"] = "skipped on CPU (--cpu-max-N)"
                records.append(rec)
                continue
            try:
                layer = build(name, mha, args.d_model, args.heads, args.m, device).eval()
                run = (lambda y, layer=layer: layer(y)) if dtype == torch.float32 else \
                    (lambda y, layer=layer: torch.autocast(device.type, dtype=dtype)(layer)(y))
                ms, peak, out = measure(run, x, args.reps, device)
                rec.update(ms=ms, peak_mb=peak)
                if name in ("mha", "sdpa") and ref is None:
                    ref = out.float()
                if ref is not None:
                    rec["mse"] = ((out.float() - ref) ** 2).mean().item()
            except Exception as e:  # e.g. out of memory at the largest N: say so in the row
                rec["note"] = f"{type(e).__name__}: {str(e)[:120]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            records.append(rec)
            print(_row(rec), flush=True)
        base = {r["impl"]: r for r in records if r["N"] == N}
        bar = base.get("mha") if base.get("mha", {}).get("ms") else base.get("sdpa")
        for r in records:
            if r["N"] == N and r["ms"] and bar and bar["ms"]:
                r["speedup"] = bar["ms"] / r["ms"]
                r["vs"] = bar["impl"]
                if r["peak_mb"] and bar["peak_mb"]:
                    r["memory_saving"] = bar["peak_mb"] / r["peak_mb"]
    return records


def _row(r):
    f = lambda v, p: "—" if v is None else f"{v:{p}}"
    return (f"| {r['N']:6d} | {r['impl']:14s} | {f(r['ms'], '.2f'):>9s} | {f(r['peak_mb'], '.1f'):>9s} | "
            f"{f(r.get('speedup'), '.2f'):>7s} | {f(r.get('memory_saving'), '.2f'):>7s} | "
            f"{f(r['mse'], '.2e'):>9s} | {r['note']}")


# ------------------------------------------------------------------------------------------------
# The public accuracy test
# ------------------------------------------------------------------------------------------------
def accuracy_table(args, device):
    """d_model 64, 4 heads, M = 128, N = 512 ... 2048, weights copied; median MSE over seeds."""
    variants = {
        "hrc (ours: chi rows, conjugated, floor)": lambda mha: build("hrc-fixed", mha, 64, 4, 128, device),
        "hrc, fixed √d rows": lambda mha: _fixed_rows(build("hrc-fixed", mha, 64, 4, 128, device)),
        "public estimator (fixed √d, no conj)": None,
        "favor+": lambda mha: build("favor+", mha, 64, 4, 128, device),
    }
    records = []
    for N in args.acc_N:
        for name, make in variants.items():
            mses = []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                mha = nn.MultiheadAttention(64, 4, batch_first=True).to(device).eval()
                layer = make(mha) if make else build("hrc-fixed", mha, 64, 4, 128, device)
                x = torch.randn(1, N, 64, device=device)
                with torch.no_grad():
                    ref = mha(x, x, x, need_weights=False)[0]
                    out = layer(x) if make else public_hrc_output(layer, x)
                mses.append(((out - ref) ** 2).mean().item())
            rec = dict(table="accuracy", impl=name, N=N, seeds=args.seeds, median_mse=statistics.median(mses),
                       max_mse=max(mses), passes_public_bar=statistics.median(mses) < 0.05,
                       meets_issue_bar=statistics.median(mses) <= 0.005)
            records.append(rec)
            print(f"| {N:5d} | {name:40s} | {rec['median_mse']:.2e} | {rec['max_mse']:.2e} |", flush=True)
    return records


def _fixed_rows(layer):
    with torch.no_grad():
        om = torch.stack([zh.orthogonal_random_features(layer.m_features, layer.head_dim, scaling="fixed")
                          for _ in range(layer.num_heads)])
        layer.omega.copy_(om)
    return layer


# ------------------------------------------------------------------------------------------------
# The issue's speed targets (CUDA): fast HRC-LA fwd vs the fast linear attention on precomputed
# features of the same size, and vs SDPA at T = 65536
# ------------------------------------------------------------------------------------------------
def _time_cuda(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def targets_table(args):
    """B·T = 32768, H = 16, D = 64, M = 256, T = 8192, bf16 inputs, causal, forward (no grad)."""
    import fast.hrc_la as fh
    import fast.performer as fp
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    H, D, M = 16, 64, 256
    records = []

    def rec(name, T, B, ms, note=""):
        r = dict(table="targets", impl=name, T=T, B=B, H=H, D=D, M=M, ms=ms, note=note)
        records.append(r)
        print(f"| {name:44s} | {T:6d} | {B:3d} | {'—' if ms is None else f'{ms:9.3f}'} | {note}", flush=True)
        return ms

    g = torch.Generator(device=dev).manual_seed(0)
    omega = torch.stack([zh.orthogonal_random_features(M, D) for _ in range(H)]).to(dev)
    for T in (8192, 65536):
        B = max(1, 32768 // T)
        q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).to(bf16) for _ in range(3))
        with torch.no_grad():
            t_hrc = rec("fast hrc_la_chunk fwd (feature map fused)", T, B,
                        _time_cuda(lambda: fh.hrc_la_chunk(q, k, v, omega)))
            rec("fast performer_chunk fwd (feature map fused)", T, B, _time_cuda(lambda: fp.performer_chunk(q, k, v, omega)))
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, D] for SDPA
            sdpa = functools.partial(F.scaled_dot_product_attention, qt, kt, vt, is_causal=True)
            t_sdpa = rec("sdpa causal fwd", T, B, _time_cuda(sdpa))
            rec("  ratio sdpa / fast hrc_la", T, B, None, f"{t_sdpa / t_hrc:.2f}x (issue: >= 5x at T = 65536)")
            if T == 8192:
                try:
                    import fast.linear_attention as fla_fast
                    la = lambda fq, fk, normalize: fla_fast.linear_attention_chunk(fq, fk, v, normalize=normalize)
                    # precomputed features, two contiguous halves of K = 2M = 512
                    fq, fk = ([torch.rand(B, T, H, M, device=dev, generator=g).to(bf16) for _ in range(2)]
                              for _ in range(2))
                    t_la = _time_cuda(lambda: la(fq[0], fk[0], True))
                    rec(f"fast linear_attention_chunk fwd, K = {M} features", T, B, t_la, "normalize=True")
                    # The linear kernels take K <= 256: K = 512 as two K = 256 launches whose numerators add
                    # (normalize=False; the denominator, one more column of the same sweep, is left out).
                    t_la2 = _time_cuda(lambda: (la(fq[0], fk[0], False), la(fq[1], fk[1], False)))
                    rec(f"fast linear_attention_chunk fwd, K = {2 * M} features", T, B, t_la2,
                        f"as two K = {M} launches, normalize=False (numerators add; no denominator); "
                        f"hrc_la / linear = {t_hrc / t_la2:.2f}x (issue: <= 1.5x at K = 2M = {2 * M})")
                    del fq, fk
                except Exception as e:  # ImportError, or what the kernels refuse
                    rec("fast linear_attention_chunk fwd", T, B, None, f"{type(e).__name__}: {e}")
            del q, k, v, qt, kt, vt, sdpa
    # forward + backward, for the record
    T, B = 8192, 4
    q, k, v = (torch.randn(B, T, H, D, device=dev, generator=g).to(bf16).requires_grad_() for _ in range(3))
    do = torch.randn(B, T, H, D, device=dev, generator=g).to(bf16)
    for name, op in (("fast hrc_la_chunk fwd+bwd", fh.hrc_la_chunk), ("fast performer_chunk fwd+bwd", fp.performer_chunk)):
        rec(name, T, B, _time_cuda(lambda: op(q, k, v, omega)[0].backward(do), reps=5, warmup=2))
    return records


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def write(records, args, device, suffix=""):
    os.makedirs(args.out, exist_ok=True)
    name = f"hrc_seed-{device.type}{suffix}"
    meta = {"method": "meta", "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "command": " ".join(["python -m benchmarks.hrc_seed"]
                                                                              + sys.argv[1:])}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump([meta] + records, f, indent=1)
    lines = [f"# HRC-LA seed benchmark ({meta['device']}, torch {meta['torch']})", "", f"`{meta['command']}`", ""]
    speed = [r for r in records if r["table"] == "speed"]
    if speed:
        lines += [f"## Speed (d_model {args.d_model}, {args.heads} heads, M = {args.m}, batch {args.batch}, "
                  "non-causal, no grad); speed-up and memory saving against `mha` (naive), or `sdpa` where "
                  "`mha` was skipped; MSE against the standard output with copied weights", "",
                  "| N | impl | ms | peak MB | speed-up | mem. saving | MSE | note |",
                  "|---|---|---|---|---|---|---|---|"] + [_row(r) for r in speed] + [""]
    tgt = [r for r in records if r["table"] == "targets"]
    if tgt:
        lines += ["## Speed targets (bf16 inputs, causal, H = 16, D = 64, M = 256, forward unless said)", "",
                  "| measurement | T | B | ms | note |", "|---|---|---|---|---|"]
        ms = lambda r: "—" if r["ms"] is None else f"{r['ms']:.3f}"
        lines += [f"| {r['impl']} | {r['T']} | {r['B']} | {ms(r)} | {r['note']} |" for r in tgt] + [""]
    acc = [r for r in records if r["table"] == "accuracy"]
    if acc:
        lines += ["## The public accuracy test (d_model 64, 4 heads, M = 128, weights copied; public bar "
                  "MSE < 0.05, issue bar median <= 0.005)", "", "| N | estimator | median MSE | max MSE |",
                  "|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['impl']} | {r['median_mse']:.2e} | {r['max_mse']:.2e} |" for r in acc]
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for impl in dict.fromkeys(r["impl"] for r in speed):
            rs = [r for r in speed if r["impl"] == impl and r["ms"]]
            if rs:
                axes[0].loglog([r["N"] for r in rs], [r["ms"] for r in rs], "o-", label=impl)
            rs = [r for r in rs if r["mse"]]
            if rs:
                axes[1].loglog([r["N"] for r in rs], [r["mse"] for r in rs], "o-", label=impl)
        axes[0].set(xlabel="N", ylabel="ms", title="time"); axes[1].set(xlabel="N", ylabel="MSE vs standard", title="error")
        for ax in axes:
            ax.grid(alpha=.3); ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, name + ".png"), dpi=110)
    except Exception as e:  # the plot is optional
        print(f"no plot: {e}")
    print(f"wrote {args.out}/{name}.json, .md, .png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--N", type=int, nargs="+",
                   default=[1024, 2048, 4096, 8192, 16384, 65536] if cuda else [1024, 2048, 4096])
    p.add_argument("--d-model", type=int, default=16)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=5 if cuda else 2)
    p.add_argument("--mha-max-N", type=int, default=16384)
    p.add_argument("--cpu-max-N", type=int, default=16384)
    p.add_argument("--acc-N", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--accuracy-only", action="store_true")
    p.add_argument("--speed-only", action="store_true")
    p.add_argument("--targets", action="store_true", help="CUDA: only the issue's speed targets")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    records = []
    if args.targets:
        print("| measurement | T | B | ms | note |")
        write(targets_table(args), args, device, suffix="-targets")
        return
    if not args.accuracy_only:
        print("| N | impl | ms | peak MB | speed-up | mem. saving | MSE | note |")
        records += speed_table(args, device, dtype)
    if not args.speed_only:
        print("| N | estimator | median MSE | max MSE |")
        records += accuracy_table(args, device)
    write(records, args, device)


if __name__ == "__main__":
    main()
