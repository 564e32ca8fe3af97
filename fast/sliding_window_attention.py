"""Triton mirror of zoo/sliding_window_attention.py; the math (equations (1)-(4)) and shapes are there.

Kernel plan: FlashAttention-2 (Dao 2023, arXiv:2307.08691) restricted to the band i − W < j ≤ i.
- Forward: one program per (query block of BM rows, batch·head). It loads its q block once and
  walks only the key blocks that meet the band, [m0 − W + 1, m0 + BM), keeping the online-softmax
  running max, normaliser and output in fp32 registers (the zoo's (2) computed blockwise); it
  stores o and lse (fp32). Key blocks outside the band are never visited, so the work per query
  is about W + BM keys whatever T is: time per token is flat in T.
- Three ranges of key blocks per program: the left edge of the band (window mask), the interior
  that every query of the block sees whole (no mask at all: the fast loop), and the diagonal
  (causal mask). With W ≤ BM there is no interior, and both edges mask.
- Backward stores nothing beyond o and lse: P is recomputed from q, k and lse.
  (a) delta_i = Σ o_i·do_i − dlse_i; (b) one program per key block holds k, v, dk, dv and loops
  over the query blocks that see it, [n0, n0 + BN + W − 1); (c) one program per query block holds
  q, do, dq and loops over its band of key blocks. ds = P ⊙ (do vᵀ − delta): dv = Pᵀ do,
  dk = scale·dsᵀ q, dq = scale·ds k. Every output is written by one program: no atomics.
- Scores are kept in log2 units (scale·log2 e in one multiply) because exp2 is the native
  exponential. A row whose every key in a block is masked keeps m = −∞; the update then uses 0
  in its place, so no exp(−∞ − (−∞)) = NaN appears.

Cost at the headline size (bf16, B = 4, T = 8192, H = 16, D = 128):
    bytes: q, k, v read + o written = 4 × 134 MB = 537 MB: 0.18 ms at 3 TB/s, whatever W.
    FLOPs (forward): 4·D per attended pair: 4·128·W·B·T·H = W · 34 MFLOP: W = 512 → 17.6 GFLOP
        useful (plus the band's bounding box: BM/W more), 0.03 ms at 600 TFLOP/s.
    So the floor is memory: 0.18 ms forward for any W ≤ ~5000. SDPA's causal flash at T = 8192
    does B·H·T²/2 pairs in ~1.9 ms: its pair rate is unreachable for small W (W = 64: 0.0024 of
    its pairs would take 4.5 µs; the bytes alone take 180 µs). For W = 64 the honest target is
    the memory floor; for W ≥ 2048 the pair rate.
    backward: q, k, v, o, do read, dq, dk, dv written (+ lse, delta): ≥ 8 × 134 MB = 0.36 ms.
Tile rule (`_tiles`, no autotuning, nothing keyed on T or B): from the head dims, the dtype, the
GPU and the window: BM = 128 rows when the window is wide enough to fill them (W > 128), else 64
so the band's bounding box (BM + W − 1 keys for W real ones) wastes less.
T is in do_not_specialize; the window is a runtime argument (a new W does not recompile).

Legend (fla's prefixes): i_ program ids, p_ pointers, b_ on-chip blocks, offs_ offsets,
mask_ masks; BM/BN query/key block sizes, BK/BV padded head dims; m_i/l_i/acc the running
max/normaliser/output; W the window.
"""

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

import zoo.sliding_window_attention as zw

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as @triton.jit does
LOG2E = tl.constexpr(1.4426950408889634)  # 1/ln 2: e^x = 2^(x·LOG2E), and exp2 is the fast path
LN2 = tl.constexpr(0.6931471805599453)  # ln 2: turns the log2-unit lse back into a natural log
MAX_HEAD_DIM = 256  # past this one head's q, acc and a key block no longer fit in registers


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
class Tiles(NamedTuple):
    BK: int  # K padded to a power of two >= 16
    BV: int  # V padded likewise
    BM: int  # forward: queries per program (BM % BN == 0)
    BN: int  # forward: keys per loop step
    BM1: int  # dk/dv kernel: queries per loop step
    BN1: int  # dk/dv kernel: keys per program (BN1 % BM1 == 0)
    BM2: int  # dq kernel: queries per program (BM2 % BN2 == 0)
    BN2: int  # dq kernel: keys per loop step
    warps: int
    stages: int
    bwd_warps: int


def _tiles(K: int, V: int, window: int, dtype: torch.dtype, device: torch.device) -> Tiles:
    """Block sizes from the head dims, the dtype, the GPU and the window (see the card)."""
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    if INTERPRET:  # small blocks, so tests with T of a few dozen cross every kind of edge
        return Tiles(BK, BV, 32, 16, 16, 32, 32, 16, 1, 1, 1)
    D = max(BK, BV)
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    stages = 3 if hopper else 2
    if dtype == torch.float32 or D > 128:  # 4-byte tiles or wide heads: half the rows fit
        return Tiles(BK, BV, 64, 32, 16, 64, 64, 16, 4, 2, 4 if D <= 64 else 8)
    BM = 128 if window > 128 else 64  # a narrow band wastes less of a shorter block
    warps = 8 if (D > 64 and BM == 128) else 4
    return Tiles(BK, BV, BM, 64 if window > 64 else 32, 32, 64, 64, 32, warps, stages, 4 if D <= 64 else 8)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _band(offs_m, offs_n, T, W):
    """(1) query i sees key j iff i − W < j ≤ i (and j is a real token)."""
    return (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - W) & (offs_n[None, :] < T)


@triton.jit
def _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, lo, hi, T, W, stride_k, stride_v, qk_scale,
                    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BN: tl.constexpr,
                    MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """The online softmax over the key blocks [lo, hi): zoo (2), one block at a time."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < T
        b_k = tl.load(p_k + start_n * stride_k, mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
        b_v = tl.load(p_v + start_n * stride_v, mask=mask_n[:, None] & (offs_v < V)[None, :], other=0.0)
        if UPCAST:  # interpreter: bf16 dots are wrong there, so dot in fp32
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale  # (1) scores in log2 units [BM, BN]
        if MASKED:
            b_s = tl.where(_band(offs_m, offs_n, T, W), b_s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(b_s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
        b_p = tl.math.exp2(b_s - m_use[:, None])  # ≤ 1, never overflows
        alpha = tl.math.exp2(m_i - m_use)  # how much the old sums shrink
        l_i = l_i * alpha + tl.sum(b_p, 1)
        acc = tl.dot(b_p.to(b_v.dtype), b_v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_ranges(start_m, T, W, BM: tl.constexpr, BN: tl.constexpr):
    """Key-block bounds for query block [start_m, start_m + BM): the band starts at lo; keys in
    [full_lo, full_hi) are seen whole by every query of the block; the band ends at hi."""
    lo = (tl.maximum(start_m - W + 1, 0) // BN) * BN
    hi = tl.minimum(start_m + BM, T)
    full_lo = tl.maximum(lo, ((tl.maximum(start_m + BM - W, 0) + BN - 1) // BN) * BN)
    full_hi = tl.maximum(full_lo, start_m)  # keys < start_m precede every query of the block
    return lo, full_lo, full_hi, hi


@triton.jit(do_not_specialize=["T", "W"])
def _sliding_window_attention_chunk_fwd_kernel(
    q, k, v, o, lse, H, T, W, scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr,
):
    """o = softmax over the band of scale·q·kᵀ, times v, and lse, for one query block."""
    # -- map program -> (query block, batch·head) -------------------------------------------------
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    # element (b, t, h, d) of a contiguous [B, T, H, D] tensor sits at ((b·T + t)·H + h)·D + d
    base = i_b.to(tl.int64) * T * H + i_h
    p_q = q + base * K + offs_m[:, None] * (H * K) + offs_k[None, :]
    p_k = k + base * K + offs_n[:, None] * (H * K) + offs_k[None, :]
    p_v = v + base * V + offs_n[:, None] * (H * V) + offs_v[None, :]
    # -- load q once -------------------------------------------------------------------------------
    b_q = tl.load(p_q, mask=(offs_m < T)[:, None] & (offs_k < K)[None, :], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    qk_scale = tl.cast(scale, tl.float32) * LOG2E
    # -- the running statistics, fp32 accumulators ---------------------------------------------------
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BV], tl.float32)
    # -- compute: left edge (masked), interior (unmasked), diagonal (masked) -----------------------
    lo, full_lo, full_hi, hi = _key_ranges(start_m, T, W, BM, BN)
    acc, l_i, m_i = _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, lo, full_lo, T, W, H * K, H * V, qk_scale,
                                    K, V, BK, BV, BN, True, UPCAST)
    acc, l_i, m_i = _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, full_lo, full_hi, T, W, H * K, H * V,
                                    qk_scale, K, V, BK, BV, BN, False, UPCAST)
    acc, l_i, m_i = _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, full_hi, hi, T, W, H * K, H * V, qk_scale,
                                    K, V, BK, BV, BN, True, UPCAST)
    # -- normalise once; lse back to natural log; store o [B, T, H, V], lse [B, H, T] ---------------
    l_i = tl.where(offs_m < T, l_i, 1.0)  # rows past T saw no key: keep them finite (not stored)
    b_o = acc / l_i[:, None]
    b_lse = (m_i + tl.math.log2(l_i)) * LN2
    p_o = o + base * V + offs_m[:, None] * (H * V) + offs_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=(offs_m < T)[:, None] & (offs_v < V)[None, :])
    tl.store(lse + i_bh.to(tl.int64) * T + offs_m, b_lse, mask=offs_m < T)


@triton.jit(do_not_specialize=["T"])
def _sliding_window_attention_bwd_preprocess_kernel(o, do, dlse, delta, H, T, V: tl.constexpr,
                                                    BV: tl.constexpr, BM: tl.constexpr):
    """delta_i = Σ_v o_i·do_i − dlse_i (one query block)."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    offs_m = i_m * BM + tl.arange(0, BM)
    offs_v = tl.arange(0, BV)
    mask = (offs_m < T)[:, None] & (offs_v < V)[None, :]
    p = (i_b.to(tl.int64) * T * H + i_h) * V + offs_m[:, None] * (H * V) + offs_v[None, :]
    b_o = tl.load(o + p, mask=mask, other=0.0).to(tl.float32)
    b_do = tl.load(do + p, mask=mask, other=0.0).to(tl.float32)
    p_row = i_bh.to(tl.int64) * T + offs_m
    b_dlse = tl.load(dlse + p_row, mask=offs_m < T, other=0.0)
    tl.store(delta + p_row, tl.sum(b_o * b_do, 1) - b_dlse, mask=offs_m < T)


@triton.jit
def _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, lo, hi, T, W, qk_scale,
                       K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
                       H, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """dv += Pᵀ do, dk += dsᵀ q over the query blocks [lo, hi) (scale applied by the caller)."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for start_m in range(lo, hi, BM):
        offs_m = start_m + tl.arange(0, BM)
        mask_m = offs_m < T
        b_q = tl.load(p_q + start_m * (H * K), mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        b_do = tl.load(p_do + start_m * (H * V), mask=mask_m[:, None] & (offs_v < V)[None, :], other=0.0)
        if UPCAST:
            b_q = b_q.to(tl.float32)
            b_do = b_do.to(tl.float32)
        b_lse = tl.load(p_lse + offs_m, mask=mask_m, other=0.0) * LOG2E
        b_delta = tl.load(p_delta + offs_m, mask=mask_m, other=0.0)
        b_pT = tl.math.exp2(tl.dot(b_k, tl.trans(b_q)) * qk_scale - b_lse[None, :])  # Pᵀ [BN, BM]
        if MASKED:
            b_pT = tl.where(tl.trans(_band(offs_m, offs_n, T, W)) & mask_m[None, :], b_pT, 0.0)
        b_dv += tl.dot(b_pT.to(b_do.dtype), b_do)
        b_dpT = tl.dot(b_v, tl.trans(b_do))  # (do vᵀ)ᵀ [BN, BM]
        b_dsT = b_pT * (b_dpT - b_delta[None, :])
        b_dk += tl.dot(b_dsT.to(b_q.dtype), b_q)
    return b_dk, b_dv


@triton.jit(do_not_specialize=["T", "W"])
def _sliding_window_attention_chunk_bwd_dkdv_kernel(
    q, k, v, do, lse, delta, dk, dv, H, T, W, scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr,
):
    """dk, dv for one key block, from the query blocks that see it: [n0, n0 + BN + W − 1)."""
    # -- map program -> (key block, batch·head) ---------------------------------------------------
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_n = i_n * BN
    offs_n = start_n + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    base = i_b.to(tl.int64) * T * H + i_h
    mask_n = offs_n < T
    # -- load k, v once ----------------------------------------------------------------------------
    b_k = tl.load(k + base * K + offs_n[:, None] * (H * K) + offs_k[None, :],
                  mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
    b_v = tl.load(v + base * V + offs_n[:, None] * (H * V) + offs_v[None, :],
                  mask=mask_n[:, None] & (offs_v < V)[None, :], other=0.0)
    if UPCAST:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    p_q = q + base * K + offs_m[:, None] * (H * K) + offs_k[None, :]
    p_do = do + base * V + offs_m[:, None] * (H * V) + offs_v[None, :]
    p_lse = lse + i_bh.to(tl.int64) * T
    p_delta = delta + i_bh.to(tl.int64) * T
    qk_scale = tl.cast(scale, tl.float32) * LOG2E
    b_dk = tl.zeros([BN, BK], tl.float32)
    b_dv = tl.zeros([BN, BV], tl.float32)
    # -- query blocks: diagonal (masked), interior (all of them see all these keys), right edge ---
    lo = start_n  # BN % BM == 0: block-aligned
    hi = tl.minimum(start_n + BN - 1 + W, T)
    full_lo = tl.maximum(lo, ((start_n + BN - 1 + BM - 1) // BM) * BM)  # every query ≥ every key
    full_hi = tl.minimum(((start_n + W) // BM) * BM, (T // BM) * BM)  # every query − key < W, in T
    full_hi = tl.maximum(full_hi, full_lo)
    b_dk, b_dv = _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, lo, full_lo, T, W,
                                    qk_scale, K, V, BK, BV, BM, H, True, UPCAST)
    b_dk, b_dv = _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, full_lo, full_hi, T,
                                    W, qk_scale, K, V, BK, BV, BM, H, False, UPCAST)
    b_dk, b_dv = _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, full_hi, hi, T, W,
                                    qk_scale, K, V, BK, BV, BM, H, True, UPCAST)
    # -- store -------------------------------------------------------------------------------------
    b_dk *= tl.cast(scale, tl.float32)
    tl.store(dk + base * K + offs_n[:, None] * (H * K) + offs_k[None, :], b_dk.to(dk.dtype.element_ty),
             mask=mask_n[:, None] & (offs_k < K)[None, :])
    tl.store(dv + base * V + offs_n[:, None] * (H * V) + offs_v[None, :], b_dv.to(dv.dtype.element_ty),
             mask=mask_n[:, None] & (offs_v < V)[None, :])


@triton.jit
def _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, lo, hi, T, W, qk_scale,
                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BN: tl.constexpr,
                   H, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """dq += ds k over the key blocks [lo, hi) (scale applied by the caller)."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < T
        b_k = tl.load(p_k + start_n * (H * K), mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
        b_v = tl.load(p_v + start_n * (H * V), mask=mask_n[:, None] & (offs_v < V)[None, :], other=0.0)
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_p = tl.math.exp2(tl.dot(b_q, tl.trans(b_k)) * qk_scale - b_lse[:, None])  # P [BM, BN]
        if MASKED:
            b_p = tl.where(_band(offs_m, offs_n, T, W), b_p, 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v))
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k)
    return b_dq


@triton.jit(do_not_specialize=["T", "W"])
def _sliding_window_attention_chunk_bwd_dq_kernel(
    q, k, v, do, lse, delta, dq, H, T, W, scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr,
):
    """dq for one query block, from its band of key blocks (the forward's ranges)."""
    # -- map program -> (query block, batch·head) -------------------------------------------------
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    base = i_b.to(tl.int64) * T * H + i_h
    mask_m = offs_m < T
    # -- load q, do, lse, delta once ---------------------------------------------------------------
    b_q = tl.load(q + base * K + offs_m[:, None] * (H * K) + offs_k[None, :],
                  mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
    b_do = tl.load(do + base * V + offs_m[:, None] * (H * V) + offs_v[None, :],
                   mask=mask_m[:, None] & (offs_v < V)[None, :], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    b_lse = tl.load(lse + i_bh.to(tl.int64) * T + offs_m, mask=mask_m, other=0.0) * LOG2E
    b_delta = tl.load(delta + i_bh.to(tl.int64) * T + offs_m, mask=mask_m, other=0.0)
    p_k = k + base * K + offs_n[:, None] * (H * K) + offs_k[None, :]
    p_v = v + base * V + offs_n[:, None] * (H * V) + offs_v[None, :]
    qk_scale = tl.cast(scale, tl.float32) * LOG2E
    b_dq = tl.zeros([BM, BK], tl.float32)
    # -- compute: the forward's three ranges -------------------------------------------------------
    lo, full_lo, full_hi, hi = _key_ranges(start_m, T, W, BM, BN)
    b_dq = _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, lo, full_lo, T, W, qk_scale,
                          K, V, BK, BV, BN, H, True, UPCAST)
    b_dq = _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, full_lo, full_hi, T, W, qk_scale,
                          K, V, BK, BV, BN, H, False, UPCAST)
    b_dq = _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, full_hi, hi, T, W, qk_scale,
                          K, V, BK, BV, BN, H, True, UPCAST)
    # -- store -------------------------------------------------------------------------------------
    b_dq *= tl.cast(scale, tl.float32)
    tl.store(dq + base * K + offs_m[:, None] * (H * K) + offs_k[None, :], b_dq.to(dq.dtype.element_ty),
             mask=mask_m[:, None] & (offs_k < K)[None, :])


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _sliding_window_attention_chunk_fwd(q, k, v, window: int, scale: float):
    B, T, H, K = q.shape
    V = v.shape[-1]
    t = _tiles(K, V, window, q.dtype, q.device)
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    _sliding_window_attention_chunk_fwd_kernel[(triton.cdiv(T, t.BM), B * H)](
        q, k, v, o, lse, H, T, window, scale, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM, BN=t.BN,
        UPCAST=INTERPRET, num_warps=t.warps, num_stages=t.stages)
    return o, lse


def _sliding_window_attention_chunk_bwd(do, dlse, q, k, v, o, lse, window: int, scale: float):
    B, T, H, K = q.shape
    V = v.shape[-1]
    t = _tiles(K, V, window, q.dtype, q.device)
    delta = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _sliding_window_attention_bwd_preprocess_kernel[(triton.cdiv(T, t.BM2), B * H)](
        o, do, dlse, delta, H, T, V=V, BV=t.BV, BM=t.BM2)
    _sliding_window_attention_chunk_bwd_dkdv_kernel[(triton.cdiv(T, t.BN1), B * H)](
        q, k, v, do, lse, delta, dk, dv, H, T, window, scale, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM1, BN=t.BN1,
        UPCAST=INTERPRET, num_warps=t.bwd_warps, num_stages=t.stages)
    _sliding_window_attention_chunk_bwd_dq_kernel[(triton.cdiv(T, t.BM2), B * H)](
        q, k, v, do, lse, delta, dq, H, T, window, scale, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM2, BN=t.BN2,
        UPCAST=INTERPRET, num_warps=t.bwd_warps, num_stages=t.stages)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.compile sees through them with the fakes) and autograd
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::sliding_window_attention_chunk_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, H, V], lse [B, H, T] fp32): head-first lse, as the kernels read it."""
    return _sliding_window_attention_chunk_fwd(q.contiguous(), k.contiguous(), v.contiguous(), window, scale)


@_fwd_op.register_fake
def _(q, k, v, window, scale):
    B, T, H, _ = q.shape
    return q.new_empty(B, T, H, v.shape[-1]), q.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("zoo::sliding_window_attention_chunk_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            o: torch.Tensor, lse: torch.Tensor, window: int,
            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (x.contiguous() for x in (do, dlse, q, k, v, o, lse))
    return _sliding_window_attention_chunk_bwd(*args, window, scale)


@_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, window, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, window, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    ctx.window, ctx.scale = window, scale


def _backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    do = torch.zeros_like(o) if do is None else do
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv = _bwd_op(do, dlse, q, k, v, o, lse, ctx.window, ctx.scale)
    return dq, dk, dv, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# Public op and layer
# ------------------------------------------------------------------------------------------------
def sliding_window_attention_chunk(q, k, v, *, window=64, scale=None, return_lse=False, chunk_size=64):
    """zoo.sliding_window_attention.sliding_window_attention_chunk in Triton, forward and backward.
    `chunk_size` is checked and accepted for the same signature; the blocks come from the tile
    rule (results differ from the zoo's only by rounding). Gradients flow through o and lse."""
    zw._check(q, k, v, window, scale, chunk_size)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"the fast kernel takes float16, bfloat16 or float32 q, k, v, got {q.dtype}; "
                        f"use zoo.sliding_window_attention for float64")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"fast sliding-window attention got tensors on {q.device}: pass CUDA tensors, or "
                         f"set TRITON_INTERPRET=1 before importing fast/ to run the kernels on the CPU")
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"the fast kernel takes head dims K, V <= {MAX_HEAD_DIM}, got q [B, T, H, K] = "
                         f"{tuple(q.shape)}, v [B, T, H, V] = {tuple(v.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, lse = _fwd_op(q, k, v, min(window, q.shape[1]), scale)  # a window past T is all of T
    return (o, lse.transpose(1, 2)) if return_lse else o  # lse [B, H, T] -> [B, T, H]


class SlidingWindowAttention(zw.SlidingWindowAttention):
    """zoo.sliding_window_attention.SlidingWindowAttention with the Triton chunk op (form="chunk",
    the default); decoding keeps the zoo's rolling cache. Same parameters and state dict."""

    chunk_op = staticmethod(sliding_window_attention_chunk)


__all__ = ["sliding_window_attention_chunk", "SlidingWindowAttention"]
