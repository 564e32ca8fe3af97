"""Experiment (session 8): a persistent sliding-window forward, one program an SM (or k) walking
query tiles, with the tile loop optionally flattened into the key loop (tl.range(flatten=True)) so
the software pipeline does not drain at every tile's end. Run on a GPU:
    python .scratch/swa_persist.py            (sweep, beside the rule and SDPA)
Under TRITON_INTERPRET=1: a small correctness check against the zoo."""
import os, sys, itertools
sys.path.insert(0, os.getcwd())
import torch, triton, triton.language as tl
import fast.sliding_window_attention as fs
from fast.sliding_window_attention import _fwd_key_block, _key_ranges, _load_tile, LOG2E, LN2, INTERPRET
from fast.softmax_attention import _kv_descriptors, _use_tma


@triton.jit
def _tile(q, p_k, p_v, o, lse, tile, n_m, H, T, W, qk_scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
          BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
          LOOPS: tl.constexpr, WS: tl.constexpr):
    i_bh = tile // n_m
    i_m = tile % n_m
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    base = i_b.to(tl.int64) * T * H + i_h
    p_q = q + base * K + offs_m[:, None] * (H * K) + offs_k[None, :]
    row0, col_k, col_v = i_b * T, i_h * K, i_h * V
    b_q = _load_tile(p_q, offs_m, T, offs_k, K, True, BK != K)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BV], tl.float32)
    lo, full_lo, full_hi, hi = _key_ranges(start_m, T, W, BM, BN)
    if LOOPS == 1:
        for start_n in tl.range(lo, hi, BN, warp_specialize=WS):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, True, UPCAST, TMA)
    else:
        for start_n in tl.range(full_lo, full_hi, BN, warp_specialize=WS):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, False, UPCAST, TMA)
        n_left = (full_lo - lo) // BN
        gap = full_hi - full_lo
        for i_n in tl.range(0, n_left + tl.cdiv(hi - full_hi, BN)):
            start_n = lo + i_n * BN + tl.where(i_n >= n_left, gap, 0)
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, True, UPCAST, TMA)
    l_i = tl.where(offs_m < T, l_i, 1.0)
    b_o = acc / l_i[:, None]
    b_lse = (m_i + tl.math.log2(l_i)) * LN2
    offs_v = tl.arange(0, BV)
    p_o = o + base * V + offs_m[:, None] * (H * V) + offs_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=(offs_m < T)[:, None] & (offs_v < V)[None, :])
    tl.store(lse + i_bh.to(tl.int64) * T + offs_m, b_lse, mask=offs_m < T)


@triton.jit(do_not_specialize=["T", "W", "NPROG"])
def _persistent_kernel(q, k, v, o, lse, BH, H, T, W, scale, NPROG, K: tl.constexpr, V: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr,
                       TMA: tl.constexpr, LOOPS: tl.constexpr, FLAT: tl.constexpr, WS: tl.constexpr):
    n_m = tl.cdiv(T, BM)
    n_tiles = n_m * BH
    qk_scale = tl.cast(scale, tl.float32) * LOG2E
    if TMA:
        p_k, p_v = k, v
    else:
        offs_n = tl.arange(0, BN)
        p_k = k + offs_n[:, None] * (H * K) + tl.arange(0, BK)[None, :]
        p_v = v + offs_n[:, None] * (H * V) + tl.arange(0, BV)[None, :]
    for tile in tl.range(tl.program_id(0), n_tiles, NPROG, flatten=FLAT):
        if TMA:
            _tile(q, p_k, p_v, o, lse, tile, n_m, H, T, W, qk_scale, K, V, BK, BV, BM, BN, UPCAST, TMA, LOOPS, WS)
        else:  # pointer path: offset to this tile's sequence and head
            i_bh = tile // n_m
            base = (i_bh // H).to(tl.int64) * T * H + i_bh % H
            _tile(q, p_k + base * K, p_v + base * V, o, lse, tile, n_m, H, T, W, qk_scale, K, V, BK, BV, BM, BN,
                  UPCAST, TMA, LOOPS, WS)


def persistent_fwd(q, k, v, window, scale, BM, BN, warps, stages, nprog, loops=1, flat=True, ws=False, tma=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    t = fs._tiles(K, V, window, q.dtype, q.device)._replace(BM=BM, BN=BN, warps=warps, stages=stages)
    tma = _use_tma(k, v, t) if tma is None else tma
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    k_arg, v_arg = _kv_descriptors(k, v, t) if tma else (k, v)
    n_tiles = triton.cdiv(T, BM) * B * H
    grid = min(nprog, n_tiles)
    _persistent_kernel[(grid,)](q, k_arg, v_arg, o, lse, B * H, H, T, window, scale, grid, K=K, V=V, BK=t.BK, BV=t.BV,
                                BM=BM, BN=BN, UPCAST=INTERPRET, TMA=tma, LOOPS=loops, FLAT=flat, WS=ws,
                                num_warps=warps, num_stages=stages)
    return o, lse


def check_cpu():
    import zoo.sliding_window_attention as zw
    torch.manual_seed(0)
    for (B, T, H, D, W) in [(1, 70, 2, 16, 5), (2, 45, 1, 32, 64), (1, 97, 3, 16, 33)]:
        q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
        ref = fs._sliding_window_attention_chunk_fwd(q, k, v, W, D ** -0.5)
        for loops, nprog in itertools.product((1, 2), (1, 3, 1000)):
            o, lse = persistent_fwd(q, k, v, W, D ** -0.5, 32, 16, 1, 1, nprog, loops=loops)
            assert torch.allclose(o, ref[0], atol=1e-5), (B, T, H, D, W, loops, nprog, (o - ref[0]).abs().max())
            assert torch.allclose(lse, ref[1], atol=1e-5)
    print("cpu check ok")


def sweep():
    import torch.nn.functional as F
    B, T, H, D = 4, 8192, 16, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    scale = D ** -0.5
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=60)
    sdpa = lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    ms_sdpa = bench(sdpa)
    rate = 4.0 * D * B * H * T * (T + 1) / 2 / ms_sdpa * 1e-9
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"SDPA causal {ms_sdpa:.3f} ms {rate:.0f} TFLOP/s; SMs {n_sm}", flush=True)
    for W in ((512,) if os.environ.get('SWA_QUICK') else (512, 64)):
        pairs = B * H * (W * (W + 1) // 2 + (T - W) * W)
        fl = 4.0 * D * pairs
        ref = fs._sliding_window_attention_chunk_fwd(q, k, v, W, scale)[0]
        ms = bench(lambda: fs._sliding_window_attention_chunk_fwd(q, k, v, W, scale))
        print(f"W={W} rule {ms:.3f} ms {fl / ms * 1e-9:.0f} TFLOP/s; target {fl / (0.7 * rate) * 1e-9:.3f} ms", flush=True)
        for (BM, BN, warps, stages), loops, flat, ws, per_sm in itertools.product(
                [(64, 32, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
                (1, 2), (True, False), (False, True), (1, 2)):
            if os.environ.get('SWA_QUICK') and (ws or BN == 128):
                continue
            if ws and (flat or per_sm > 1):
                continue
            name = f"BM={BM} BN={BN} w={warps} s={stages} loops={loops} flat={int(flat)} ws={int(ws)} progs={per_sm}x"
            try:
                fn = lambda: persistent_fwd(q, k, v, W, scale, BM, BN, warps, stages, per_sm * n_sm, loops, flat, ws)
                err = (fn()[0].float() - ref.float()).abs().max().item()
                t = bench(fn)
                print(f"W={W} {name}: {t:.3f} ms {fl / t * 1e-9:.0f} TFLOP/s err {err:.1e}", flush=True)
            except Exception as e:
                print(f"W={W} {name}: failed {type(e).__name__}: {str(e)[:150]}", flush=True)


if __name__ == "__main__":
    check_cpu() if INTERPRET else sweep()
