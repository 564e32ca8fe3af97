"""Triton mirror of zoo/sliding_window_attention.py; the math (equations (1)-(4)) and shapes are there.

Kernel plan: FlashAttention-2 (Dao 2023, arXiv:2307.08691) restricted to the band i − W < j ≤ i.
- Forward: one program per (query block of BM rows, batch·head). It loads its q block once and
  walks only the key blocks that meet the band, [m0 − W + 1, m0 + BM), keeping the online-softmax
  running max, normaliser and output in fp32 registers (the zoo's (2) computed blockwise); it
  stores o and lse (fp32). Key blocks outside the band are never visited, so the work per query
  is about W + BM keys whatever T is: time per token is flat in T.
- Three ranges of key blocks per program: the left edge of the band (window mask), the interior
  that every query of the block sees whole (no mask, plain unpredicated loads), and the diagonal
  (causal mask). They run as TWO loops, the structure of fast/softmax_attention.py: the interior,
  then one masked loop that visits the left edge and jumps to the diagonal. Each loop is
  software-pipelined num_stages deep and drains at its end; at W = 512 a program walks only ~10
  key blocks (W + BM keys), so a third loop's fill and drain is a tenth of its work, not the
  ~1/30 it is in a full causal program. With W ≤ BM there is no interior: one masked loop.
  (`loops=1`, one masked loop over the whole band, and `loops=3`, the three ranges in band order,
  stay in the kernel for the benchmark.) On Hopper the k/v loads are TMA boxes, as in
  fast/softmax_attention.py (the section at the end).
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
    FLOPs (forward): 4·D per attended pair: 4·128·W·B·T·H = W · 268 MFLOP: W = 64 → 17 GFLOP,
        W = 512 → 137 GFLOP useful, plus the band's bounding box (BM/W more: 172 GFLOP computed
        at BM = 128). At SDPA's causal pair rate (~640 TFLOP/s, cuDNN, T = 8192) that is
        0.027 ms for W = 64 and 0.21 ms for W = 512.
    So W = 64 is bound by memory (0.18 ms: the issue's 0.7× SDPA pair rate is unreachable there)
    and W = 512 by compute: 0.7× SDPA's pair rate is ≤ ~0.31 ms, i.e. ~440 TFLOP/s on attended
    pairs, ~550 on computed ones at BM = 128 (our full causal forward reaches 511).
    Measured before the two-loop/TMA forward (H100): W = 64 0.25–0.27 ms at T = 2048–32768;
    W = 512 0.60–0.74 ms (186 TFLOP/s on attended pairs); fwd + bwd at T = 8192 1.69 ms (W = 64),
    4.44 ms (W = 512). `python -m fast.sliding_window_attention` times the new forward, its loop
    structures and neighbouring tiles on a GPU (under a minute).
    backward: q, k, v, o, do read, dq, dk, dv written (+ lse, delta): ≥ 8 × 134 MB = 0.36 ms.
Tile rule (`_tiles`, no autotuning, nothing keyed on T or B): from the head dims, the dtype, the
GPU: BM = 64 query rows, BN = 32 keys a step, 4 warps, 3 stages, whatever the window. Chosen by
measurement on the H100 (2026-11-23, bf16, B = 4, T = 8192, H = 16, D = 128, forward,
`python -m fast.sliding_window_attention`): W = 64: 0.217 ms (the earlier BM = 128 build 0.25-0.33);
W = 512: 0.453 ms against 0.547 at BM = 128, BN = 64, 8 warps (2–3 programs share an SM and hide
each other's short pipelines, and the band's bounding box, BM + W − 1 keys for W real ones,
wastes less). Both stay above the issue's 0.7 × SDPA pair-rate target (0.039 and 0.303 ms; at
W = 64 the memory floor, 0.18 ms, already exceeds it). Every benchmarked tile compiles for sm_90
without spills except BM = 128 at 4 warps (248 bytes of stack), which is left out.
T is in do_not_specialize; the window is a runtime argument (a new W does not recompile).

Legend (fla's prefixes): i_ program ids, p_ pointers, b_ on-chip blocks, offs_ offsets,
mask_ masks; BM/BN query/key block sizes, BK/BV padded head dims; m_i/l_i/acc the running
max/normaliser/output; W the window.
"""

import os
from typing import NamedTuple

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

import zoo.sliding_window_attention as zw
from fast._checks import check_device_and_dtype
# Hopper: TMA loads of k and v in the forward, with fast/softmax_attention.py's helpers (when a
# whole [BN, D] box is one copy: sm_90+, BK == K, BV == V, 16-byte aligned rows; else pointers).
from fast.softmax_attention import _kv_descriptors, _load_tile, _use_tma

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
    # BM = 64, BN = 32, 4 warps for every window: fastest measured at W = 64 and 512 (card)
    return Tiles(BK, BV, 64, 32, 32, 64, 64, 32, 4, stages, 4 if D <= 64 else 8)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _band(offs_m, offs_n, T, W):
    """(1) query i sees key j iff i − W < j ≤ i (and j is a real token)."""
    return (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - W) & (offs_n[None, :] < T)


@triton.jit
def _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, stride_k, stride_v, row0, col_k, col_v,
                   qk_scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   BN: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """One step of zoo (2), the online softmax, over the keys [start_n, start_n + BN)."""
    offs_n = start_n + tl.arange(0, BN)
    # -- load: TMA boxes of the [B·T, H·D] views (rows past T belong to the next sequence: their
    # values are zeroed, their scores masked), or pointer tiles that mask rows only where the
    # block can reach past T (the masked blocks) and columns only when the head dim is padded
    if TMA:
        b_k = p_k.load([row0 + start_n, col_k])
        b_v = p_v.load([row0 + start_n, col_v])
        if MASKED:
            b_v = tl.where(offs_n[:, None] < T, b_v, 0.0)
    else:
        b_k = _load_tile(p_k + start_n * stride_k, offs_n, T, tl.arange(0, BK), K, MASKED, BK != K)
        b_v = _load_tile(p_v + start_n * stride_v, offs_n, T, tl.arange(0, BV), V, MASKED, BV != V)
    if UPCAST:  # interpreter: bf16 dots are wrong there, so dot in fp32
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    b_s = tl.dot(b_q, tl.trans(b_k))  # (1) q·kᵀ [BM, BN], fp32
    if MASKED:
        # (1) the band 0 ≤ i − j < W; for a stored row (i < T) it also keeps j < T. Applied after
        # scaling, so it does not depend on the sign of scale.
        d = offs_m[:, None] - offs_n[None, :]
        b_s = tl.where((d >= 0) & (d < W), b_s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(b_s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
        b_s = b_s - m_use[:, None]
    else:
        # every row sees every key: the max is finite, and scale ≥ 0 commutes with it
        m_new = tl.maximum(m_i, tl.max(b_s, 1) * qk_scale)
        m_use = m_new
        b_s = b_s * qk_scale - m_use[:, None]  # one fused multiply-add per score
    b_p = tl.math.exp2(b_s)  # ≤ 1, never overflows
    alpha = tl.math.exp2(m_i - m_use)  # how much the old sums shrink
    l_i = l_i * alpha + tl.sum(b_p, 1)
    acc = tl.dot(b_p.to(b_v.dtype), b_v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _key_ranges(start_m, T, W, BM: tl.constexpr, BN: tl.constexpr):
    """Key-block bounds for query block [start_m, start_m + BM): the band starts at lo; keys in
    [full_lo, full_hi) are seen whole by every query of the block; the band ends at hi. All but
    hi are multiples of BN (BM % BN == 0)."""
    lo = (tl.maximum(start_m - W + 1, 0) // BN) * BN
    hi = tl.minimum(start_m + BM, T)
    full_lo = tl.maximum(lo, ((tl.maximum(start_m + BM - W, 0) + BN - 1) // BN) * BN)
    full_hi = tl.maximum(full_lo, start_m)  # keys < start_m precede every query of the block
    return lo, full_lo, full_hi, hi


@triton.jit(do_not_specialize=["T", "W"])
def _sliding_window_attention_chunk_fwd_kernel(
    q, k, v, o, lse, H, T, W, scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr, LOOPS: tl.constexpr = 2, TMA: tl.constexpr = False,
):
    """o = softmax over the band of scale·q·kᵀ, times v, and lse, for one query block."""
    tl.static_assert(BM % BN == 0)  # the band's ranges fall on whole key blocks
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
    if TMA:  # k, v are tensor descriptors of [B·T, H·D] views (the Hopper section at the end)
        p_k, p_v = k, v
    else:
        p_k = k + base * K + offs_n[:, None] * (H * K) + offs_k[None, :]
        p_v = v + base * V + offs_n[:, None] * (H * V) + offs_v[None, :]
    row0, col_k, col_v = i_b * T, i_h * K, i_h * V  # where this sequence and head start in them
    # -- load q once -------------------------------------------------------------------------------
    b_q = _load_tile(p_q, offs_m, T, offs_k, K, True, BK != K)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    qk_scale = tl.cast(scale, tl.float32) * LOG2E  # scores in log2 units: exp2 is the fast path
    # -- the running statistics, fp32 accumulators ---------------------------------------------------
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BV], tl.float32)
    lo, full_lo, full_hi, hi = _key_ranges(start_m, T, W, BM, BN)
    if LOOPS == 2:
        # -- the interior (no mask, plain loads), then ONE masked loop over both edges of the band:
        # the left edge [lo, full_lo) and the diagonal [full_hi, hi). Two loops as in
        # fast/softmax_attention.py: each loop is software-pipelined num_stages deep and drains at
        # its end, and at W = 512 a program walks only ~10 key blocks, so every drain shows.
        for start_n in range(full_lo, full_hi, BN):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, False, UPCAST, TMA)
        n_left = (full_lo - lo) // BN
        gap = full_hi - full_lo  # the interior the masked loop jumps over
        for i_n in range(0, n_left + tl.cdiv(hi - full_hi, BN)):
            start_n = lo + i_n * BN + tl.where(i_n >= n_left, gap, 0)
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, True, UPCAST, TMA)
    elif LOOPS == 1:
        # -- one masked loop over the whole band (one pipeline, a mask on every block)
        for start_n in range(lo, hi, BN):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, True, UPCAST, TMA)
    else:
        # -- three loops in band order: left edge (masked), interior (unmasked), diagonal (masked)
        for start_n in range(lo, full_lo, BN):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, True, UPCAST, TMA)
        for start_n in range(full_lo, full_hi, BN):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, False, UPCAST, TMA)
        for start_n in range(full_hi, hi, BN):
            acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, b_q, p_k, p_v, offs_m, start_n, T, W, H * K, H * V, row0,
                                           col_k, col_v, qk_scale, K, V, BK, BV, BN, True, UPCAST, TMA)
    # -- normalise once; lse back to natural log; store o [B, T, H, V], lse [B, H, T] ---------------
    l_i = tl.where(offs_m < T, l_i, 1.0)  # rows past T may have seen no key: keep them finite (not stored)
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
def _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, lo, n_blocks, n_left, gap, T, W,
                       qk_scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       BM: tl.constexpr, H, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """dv += Pᵀ do, dk += dsᵀ q over n_blocks query blocks from lo, jumping `gap` rows after the
    first n_left of them (scale applied by the caller). Unmasked blocks lie inside T: plain loads."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for i_m in range(0, n_blocks):
        start_m = lo + i_m * BM + tl.where(i_m >= n_left, gap, 0)
        offs_m = start_m + tl.arange(0, BM)
        mask_m = offs_m < T
        b_q = _load_tile(p_q + start_m * (H * K), offs_m, T, offs_k, K, MASKED, BK != K)
        b_do = _load_tile(p_do + start_m * (H * V), offs_m, T, offs_v, V, MASKED, BV != V)
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
    # -- query blocks: diagonal (masked), interior (all of them see all these keys), right edge;
    #    run as in the forward: the interior unmasked, then one masked loop over both edges ------
    lo = start_n  # BN % BM == 0: block-aligned
    hi = tl.minimum(start_n + BN - 1 + W, T)
    full_lo = tl.maximum(lo, ((start_n + BN - 1 + BM - 1) // BM) * BM)  # every query ≥ every key
    full_hi = tl.minimum(((start_n + W) // BM) * BM, (T // BM) * BM)  # every query − key < W, in T
    full_hi = tl.maximum(full_hi, full_lo)
    n_full = (full_hi - full_lo) // BM
    b_dk, b_dv = _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, full_lo, n_full, n_full,
                                    0, T, W, qk_scale, K, V, BK, BV, BM, H, False, UPCAST)
    n_left = (full_lo - lo) // BM
    b_dk, b_dv = _dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, offs_n, lo,
                                    n_left + tl.cdiv(hi - full_hi, BM), n_left, full_hi - full_lo, T, W, qk_scale,
                                    K, V, BK, BV, BM, H, True, UPCAST)
    # -- store -------------------------------------------------------------------------------------
    b_dk *= tl.cast(scale, tl.float32)
    tl.store(dk + base * K + offs_n[:, None] * (H * K) + offs_k[None, :], b_dk.to(dk.dtype.element_ty),
             mask=mask_n[:, None] & (offs_k < K)[None, :])
    tl.store(dv + base * V + offs_n[:, None] * (H * V) + offs_v[None, :], b_dv.to(dv.dtype.element_ty),
             mask=mask_n[:, None] & (offs_v < V)[None, :])


@triton.jit
def _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, lo, n_blocks, n_left, gap, T, W, qk_scale,
                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BN: tl.constexpr,
                   H, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """dq += ds k over n_blocks key blocks from lo, jumping `gap` keys after the first n_left of
    them (scale applied by the caller). Unmasked blocks lie inside T: plain loads."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for i_n in range(0, n_blocks):
        start_n = lo + i_n * BN + tl.where(i_n >= n_left, gap, 0)
        offs_n = start_n + tl.arange(0, BN)
        b_k = _load_tile(p_k + start_n * (H * K), offs_n, T, offs_k, K, MASKED, BK != K)
        b_v = _load_tile(p_v + start_n * (H * V), offs_n, T, offs_v, V, MASKED, BV != V)
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
    # -- compute: the forward's ranges, in two loops (interior unmasked, then both edges masked) -----
    lo, full_lo, full_hi, hi = _key_ranges(start_m, T, W, BM, BN)
    n_full = (full_hi - full_lo) // BN
    b_dq = _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, full_lo, n_full, n_full, 0, T, W,
                          qk_scale, K, V, BK, BV, BN, H, False, UPCAST)
    n_left = (full_lo - lo) // BN
    b_dq = _dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, lo, n_left + tl.cdiv(hi - full_hi, BN),
                          n_left, full_hi - full_lo, T, W, qk_scale, K, V, BK, BV, BN, H, True, UPCAST)
    # -- store -------------------------------------------------------------------------------------
    b_dq *= tl.cast(scale, tl.float32)
    tl.store(dq + base * K + offs_m[:, None] * (H * K) + offs_k[None, :], b_dq.to(dq.dtype.element_ty),
             mask=mask_m[:, None] & (offs_k < K)[None, :])


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _sliding_window_attention_chunk_fwd(q, k, v, window: int, scale: float, tiles: Tiles | None = None,
                                        loops: int = 2, tma: bool | None = None):
    """`tiles`, `loops` (1, 2 or 3 loops over the band's key blocks) and `tma`: for tests and the
    benchmark only; the op takes the tile rule, two loops and TMA where the GPU has it."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    t = tiles or _tiles(K, V, window, q.dtype, q.device)
    tma = _use_tma(k, v, t) if tma is None else tma
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    k_arg, v_arg = _kv_descriptors(k, v, t) if tma else (k, v)
    _sliding_window_attention_chunk_fwd_kernel[(triton.cdiv(T, t.BM), B * H)](
        q, k_arg, v_arg, o, lse, H, T, window, scale, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM, BN=t.BN,
        UPCAST=INTERPRET, LOOPS=loops, TMA=tma, num_warps=t.warps, num_stages=t.stages)
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
    check_device_and_dtype(q, "fast sliding-window attention", INTERPRET, zoo="zoo.sliding_window_attention")
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"the fast kernel takes head dims K, V <= {MAX_HEAD_DIM}, got q [B, T, H, K] = "
                         f"{tuple(q.shape)}, v [B, T, H, V] = {tuple(v.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if scale < 0:  # the kernel's unmasked loop needs scale >= 0; scale·q·k = (−scale)·(−q)·k
        q, scale = -q, -scale
    o, lse = _fwd_op(q, k, v, min(window, q.shape[1]), scale)  # a window past T is all of T
    return (o, lse.transpose(1, 2)) if return_lse else o  # lse [B, H, T] -> [B, T, H]


class SlidingWindowAttention(zw.SlidingWindowAttention):
    """zoo.sliding_window_attention.SlidingWindowAttention with the Triton chunk op (form="chunk",
    the default); decoding keeps the zoo's rolling cache. Same parameters and state dict."""

    chunk_op = staticmethod(sliding_window_attention_chunk)


__all__ = ["sliding_window_attention_chunk", "SlidingWindowAttention"]


# ------------------------------------------------------------------------------------------------
# Benchmark beside the kernel: `python -m fast.sliding_window_attention` on a GPU times the
# forward at the headline shape (bf16, B = 4, T = 8192, H = 16, D = 128) for W = 64 and 512: the
# tile rule, the loop structures (1, 2 or 3 loops over the band, TMA or pointer loads) and a few
# neighbouring tiles, each against the rule's output; then forward + backward with the rule.
# TFLOP/s count the attended pairs only (4·D FLOPs each): the target is 0.7× SDPA's pair
# rate (full causal flash at the same T), printed as a time. Every variant compiles once and
# serves both windows (W is a runtime argument); each runs in try/except.
# ------------------------------------------------------------------------------------------------
BENCH_VARIANTS = [  # (BM, BN, warps, stages, loops, tma)
    (128, 64, 8, 3, 2, True), (128, 64, 8, 3, 3, False), (128, 64, 8, 3, 3, True), (128, 64, 8, 3, 2, False),
    (128, 64, 8, 3, 1, True), (64, 32, 4, 3, 2, True), (64, 32, 4, 3, 3, False), (64, 32, 4, 3, 1, True),
    (128, 128, 8, 3, 2, True), (128, 128, 8, 2, 2, True), (128, 64, 8, 4, 2, True), (128, 64, 8, 2, 2, True),
    (64, 64, 4, 2, 2, True), (64, 64, 4, 3, 2, True), (64, 64, 4, 4, 2, True), (64, 32, 4, 4, 2, True),
]


def _benchmark(B=4, T=8192, H=16, D=128, dtype=torch.bfloat16, windows=(64, 512), device="cuda"):
    import time

    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype, generator=gen) for _ in range(3))
    scale = D ** -0.5
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=60)  # noqa: E731
    # SDPA's full causal flash: its pair rate is the yardstick
    sdpa = lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # noqa: E731
                                                  is_causal=True)
    sdpa()
    ms_sdpa = bench(sdpa)
    rate_sdpa = 4.0 * D * B * H * T * (T + 1) / 2 / ms_sdpa * 1e-9  # TFLOP/s on its attended pairs
    floor = 4 * q.numel() * q.element_size() / 3.35e12 * 1e3  # q, k, v read, o written at 3.35 TB/s
    print(f"B={B} T={T} H={H} D={D} {dtype}; SDPA causal (full T) {ms_sdpa:.3f} ms = {rate_sdpa:.0f} TFLOP/s; "
          f"memory floor {floor:.3f} ms")
    flops, refs, rules = {}, {}, {}
    for W in windows:
        pairs = B * H * (min(W, T) * (min(W, T) + 1) // 2 + max(T - W, 0) * W)  # Σ_i min(i + 1, W)
        flops[W] = 4.0 * D * pairs
        rules[W] = _tiles(D, D, W, dtype, q.device)
        start = time.perf_counter()
        refs[W] = _sliding_window_attention_chunk_fwd(q, k, v, W, scale)[0]
        if q.is_cuda:
            torch.cuda.synchronize()
        print(f"W={W}: rule {tuple(rules[W][2:4])} w={rules[W].warps} s={rules[W].stages} loops=2 "
              f"tma={int(_use_tma(k, v, rules[W]))}, first call {time.perf_counter() - start:.2f} s; target "
              f"(0.7x SDPA pair rate) {flops[W] / (0.7 * rate_sdpa) * 1e-9:.3f} ms")
    print("forward: BM BN warps stages loops tma | per W: ms, TFLOP/s on attended pairs, max |o − o_rule|")
    for BM, BN, warps, stages, loops, tma in BENCH_VARIANTS:
        line = f"BM={BM:3d} BN={BN:3d} w={warps} s={stages} loops={loops} tma={int(tma)}"
        for W in windows:
            t = rules[W]._replace(BM=BM, BN=BN, warps=warps, stages=stages)
            fn = lambda: _sliding_window_attention_chunk_fwd(q, k, v, W, scale, t, loops, tma)  # noqa: E731
            try:
                err = (fn()[0].float() - refs[W].float()).abs().max().item()
                ms = bench(fn)
            except Exception as e:  # e.g. more shared memory than the GPU has: report, go on
                line += f" | W={W}: failed {type(e).__name__}: {str(e)[:80]}"
                continue
            rule = t == rules[W] and loops == 2 and tma == _use_tma(k, v, t)
            line += f" | W={W}: {ms:6.3f} ms {flops[W] / ms * 1e-9:5.0f} TFLOP/s err {err:.1e}{' <- rule' if rule else ''}"
        print(line, flush=True)
    for W in windows:  # forward + backward with the rule (the op, as training calls it)
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        do = torch.randn_like(q)
        step = lambda: torch.autograd.grad(sliding_window_attention_chunk(qg, kg, vg, window=W), (qg, kg, vg), do)  # noqa: E731
        try:
            step()
            ms = bench(step)
            ms_f = bench(lambda: sliding_window_attention_chunk(q, k, v, window=W))
        except Exception as e:
            print(f"W={W} fwd+bwd failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        print(f"W={W} fwd+bwd (rule) {ms:.3f} ms, of which bwd {ms - ms_f:.3f} ms "
              f"({2.5 * flops[W] / (ms - ms_f) * 1e-9:.0f} TFLOP/s on attended pairs at 10·D FLOPs each)")


if __name__ == "__main__":
    _benchmark()
