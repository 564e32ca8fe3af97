"""Triton mirror of zoo/hyper_attention.py; the math (equations (1)–(7)) and shapes are there.

Kernel plan:
- Hash (1): one program per (BM rows, batch·head) loads the rows once, projects them on the r ≤ 16
  directions in fp32 (a sign decides the bucket; r row reductions, faster on the H100 than one
  IEEE fp32 dot, which stages its operands through shared memory), packs the sign bits and
  turns the bucket into its Gray rank with four shift-XORs. q and k: one launch each. The
  stable sort of the codes and the sample draw stay in torch (zoo's draw_samples, so the same
  generator gives the same samples as the zoo).
- Forward (3)–(5) fused: one program per (BM sorted queries, batch·head). It gathers its query
  rows through π_q (no sorted copy of q, k or v is ever written), walks the key block(s) of its
  rows in sorted order, gathering k and v through π_k, then the s sampled keys, and keeps one
  online softmax (running max m, normaliser l, fp32 accumulator acc) over both sets. The N/s
  weight is log(N/s) added to the sampled scores, the overlap mask is −∞ on a sampled key of
  the row's own block; so the one online softmax is exactly the zoo's merge (5), and no
  per-block score matrix reaches memory. It scatters o and lse back to token order through π_q.
  Scores are in log2 units (exp2 is the native exponential).
- The same kernel with no permutation, one block covering T, no samples and CAUSAL is exact
  (causal) attention: the min_seq_len fall-back (6) and the leaves of the causal recursion (7).
- Causal (7): the zoo's recursion, the same calls with the same sample draws in the same order,
  but one launch a level. All nodes of a level have one length once the zoo's zero rows (one
  appended to every odd node) are placed; _causal_layout places them once, up front, and for
  T = leaf·2^L there are none, so nothing is copied: a level's 2^(ℓ-1) nodes a head are extra
  "heads" the kernels reach n rows apart (_head). Order: the exact causal leaves, then the
  lower-left blocks from the deepest level up; each lower-left kernel starts its online softmax
  from the diagonal half's (o, lse) in place (m = lse, l = 1, acc = o): the merge (5) is fused,
  and o, lse are one buffer written by every launch. Tokens are hashed once (a code does not
  depend on the level). Where a level's rows do not fill its halves (padded T), the
  permutations map its rows into the layout.
  Backward: every key set a query saw enters its final softmax, so each call's share of dq, dk,
  dv comes from the final lse and delta, the same as for one attention over their union; the
  merges need no derivative of their own. Each call adds its share into fp32 dq, dk, dv
  (atomic adds that never collide: a row takes part once a call), cast once at the end.
- Backward recomputes P from q, k and the saved lse (fp32), with delta_i = Σ o_i·do_i − dlse_i
  (dlse is lse's own gradient, when the caller uses lse; one small kernel computes it):
  (a) dq: one program per sorted query tile, the forward's two loops, dq = scale·Σ ds·k;
  (b) dk, dv of the block keys: one program per sorted key tile, looping over the queries of
      its block; every key belongs to one block, so each row is written once, no atomics;
  (c) dk, dv of the sampled keys: every query may touch every sample, so one program per
      (sample tile, query split, batch·head) sums over its split of queries (in sorted order, so
      a query's block is its position // b) into fp32 partials [BH, splits, s, D]; torch sums
      the splits and index_adds them to dk, dv (index_add: a key sampled twice gets both).
- Tiles from a rule on the head dims (`_tiles`), never autotuned on T; T, S and block_size are
  do_not_specialize. Head dims pad to a power of two ≥ 16 (tl.dot's minimum) through masks.
  When block_size is a multiple of the query tile, a tile lies in one block and needs no block
  mask; otherwise (small blocks, tests) rows are masked by block id. fp32 at head dims in
  (128, 256] takes half-size dq and dk/dv tiles (and the exact forward, which shares dq's): bf16's
  D = 256 tiles in fp32 asked 262 KB of shared memory, over the H100's 227 KB a block; now 115 KB
  (compiled for sm_90 on a CPU; not run on a GPU). Checked for every kernel by the AOT test.
- Cost at the headline shape (B = 1, H = 32, T = 131072, D = 64, b = s = 256), non-causal
  forward: 4·T·(b + s)·D·H = 0.55 TFLOP (≈ 1.2 ms at 450 TFLOP/s) and, at the minimum, q, k, v
  read once and o written once, 4·T·H·D·2 B = 2.1 GB (≈ 0.65 ms at 3.35 TB/s), plus the hash
  (reads q, k again: 1.1 GB) and two segmented sorts of T·H int32 codes. Floor ≈ 1.5–2 ms.
  Causal: log₂(T/min_seq_len) = 6 levels of T/2 lower-left queries × (b + s) keys (1.65 TFLOP)
  plus the exact causal leaves of 2048 tokens (1.1 TFLOP at 4·D per unmasked pair), 2.75 TFLOP
  (benchmarks/specs.py counts it), ≈ 6 ms at 450 TFLOP/s, plus 12 sorts of T/2 codes.
  Forward + backward: 3.5 × the forward's FLOPs. Measured (H100, run 11 with these tiles, see
  _tiles and benchmarks/results): non-causal forward 4.3 ms, causal 15.7 ms (the leaves 3.9,
  six lower-left blocks ≈ 1.5 each); the gathered loads, not the FLOPs, bound the kernels.

Legend (fla's prefixes): i_ program ids, p_ pointers, b_ on-chip blocks, offs_ offsets, mask_
masks, rows_ token indices gathered through a permutation; BM/BN query/key tile sizes, BK/BV/BR
padded head dims and projection count; m_i/l_i/acc the running max, normaliser and output.
"""

import contextlib
import math
import os
import threading
from typing import NamedTuple

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

from zoo import hyper_attention as zh
from fast._checks import check_device_and_dtype
from fast._compile import launch, precompile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as @triton.jit does
LOG2E = tl.constexpr(1.4426950408889634)  # 1/ln 2: e^x = 2^(x·LOG2E), and exp2 is the fast path
LN2 = tl.constexpr(0.6931471805599453)  # ln 2: the log2-unit lse back to a natural log
MAX_HEAD_DIM = 256  # past this one head's q and acc no longer fit in registers
LSH_TILES = (32, 2)  # (rows a program, warps): 0.32 ms for q at 131k × 32 heads × 64 on the H100 (run 10; 128 rows at 8 warps 0.65, one fp32 tl.dot 0.50)


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
class Tiles(NamedTuple):
    BK: int  # K padded to a power of two >= 16
    BV: int  # V padded likewise
    BM: int  # exact forward (no gather: the causal leaves) and dq: queries per program
    BN: int  # exact forward and dq: keys per loop step
    BM1: int  # dk/dv kernels: queries per loop step
    BN1: int  # dk/dv kernels: keys per program
    QSPLIT: int  # sampled dk/dv: queries per split (the split count is cdiv(T, QSPLIT))
    warps: int  # exact forward and dq
    stages: int
    bwd_warps: int  # dk/dv kernels
    BMG: int  # the gathered forward (sorted blocks and samples): queries per program
    BNG: int  # ... keys per loop step
    gwarps: int
    gstages: int


def _tiles(K: int, V: int, dtype: torch.dtype) -> Tiles:
    """Block sizes from the head dims and dtype. The forward holds q [BM, BK] and acc [BM, BV]
    in registers and streams k/v rows [BN, *]. A gathered tile needs a [BN, BK] tensor of 64-bit
    pointers (64 registers per thread at 4 warps). Measured on the H100 (run 11, bf16, D = 64,
    B = 1, H = 32, T = 131072; sm_90 compiles of each without spills), the exact causal leaves
    (64 nodes of 2048 a head) and the top lower-left block (65536 gathered queries, b = s = 256):
        BM, BN, warps, stages   leaves   lower-left
        128,  64, 8, 3          3.87     2.34
        128, 128, 8, 2          5.78     2.57
         64,  64, 4, 3          4.03     1.95
        128,  32, 4, 3          4.65     1.66
         64,  32, 4, 4          4.20     1.50
        128,  64, 8, 2          4.10     2.38
        256,  64, 8, 2          5.85     1.98
    so FlashAttention-2's BM = 128, BN = 64 at 8 warps for the contiguous leaves (and dq, which
    was not swept) and small 64 × 32 tiles, 4 stages deep, for the gathered forward: random rows
    gain from more loads in flight more than from bigger dots. The dk/dv kernels hold [64, 64]
    tiles at 4 warps (≤ 229 registers, no spill). Other dtypes and head dims: not timed. Queries
    per sampled-dk/dv split: 8192, so T = 131072 gives 16 splits × 4 sample tiles × H programs."""
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    if INTERPRET:  # programs run one after another: small tiles so small tests cross tile edges
        return Tiles(BK, BV, 16, 16, 16, 16, 32, 1, 1, 1, 16, 16, 1, 1)
    D = max(BK, BV)
    if dtype == torch.float32 and D > 128:
        # 4-byte rows at D = 256 double bf16's bytes: the tiles below ask 262 KB of shared memory in
        # dq and dk/dv (H100 limit 227 KB), one stage still 229-262 KB. Half the rows, as
        # softmax_attention's fp32 D = 256: exact forward and dq 32 × 16 at 4 warps (115 KB), dk/dv
        # 16 × 32 at 8 warps (115 KB), no spills (sm_90 compiles on a CPU; not run on a GPU).
        return Tiles(BK, BV, 32, 16, 16, 32, 8192, 4, 2, 8, 64, 32, 4, 2)
    if dtype == torch.float32 or D > 128:
        return Tiles(BK, BV, 64, 32, 32, 64, 8192, 4, 2, 4, 64, 32, 4, 2)
    if D <= 64:
        return Tiles(BK, BV, 128, 64, 64, 64, 8192, 8, 3, 4, 64, 32, 4, 4)
    return Tiles(BK, BV, 128, 64, 64, 64, 8192, 8, 2, 8, 128, 64, 8, 2)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T"])
def _hyper_attention_lsh_kernel(x, proj, codes, sx_b, sx_h, sx_t, H, T, K: tl.constexpr,
                                R: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
    """codes = gray_rank(Σ_ℓ 2^ℓ [x·p_ℓ > 0]) for BM rows (zoo (1))."""
    # ---- map program -> rows
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    offs_m = i_m * BM + tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    # ---- load (fp32: the sign must match the zoo's fp32 product)
    p_x = x + i_b.to(tl.int64) * sx_b + i_h.to(tl.int64) * sx_h + offs_m[:, None].to(tl.int64) * sx_t + offs_k[None, :]
    b_x = tl.load(p_x, mask=(offs_m[:, None] < T) & (offs_k[None, :] < K), other=0.0).to(tl.float32)
    # ---- compute: signs -> bucket -> Gray rank; one fp32 row reduction per direction (no operand
    # staging through shared memory, as a tl.dot would need)
    b_bucket = tl.zeros([BM], tl.int32)
    for r in tl.static_range(R):
        b_pr = tl.load(proj + offs_k * R + r, mask=offs_k < K, other=0.0).to(tl.float32)  # [BK]
        b_bucket |= (tl.sum(b_x * b_pr[None, :], 1) > 0).to(tl.int32) << r
    b_rank = b_bucket ^ (b_bucket >> 1)
    b_rank = b_rank ^ (b_rank >> 2)
    b_rank = b_rank ^ (b_rank >> 4)
    b_rank = b_rank ^ (b_rank >> 8)
    # ---- store
    tl.store(codes + i_bh.to(tl.int64) * T + offs_m, b_rank, mask=offs_m < T)


@triton.jit
def _head(i_h, s_h, s_t, NODES, RS):
    """Offset of head i_h in q, k or v when the H heads are cut into NODES nodes of RS rows each
    (the causal recursion's levels, 7): node i_h % NODES of head i_h // NODES, RS·s_t apart."""
    return (i_h // NODES).to(tl.int64) * s_h + (i_h % NODES).to(tl.int64) * RS * s_t


@triton.jit
def _gather_rows(p_base, rows, mask_rows, stride_t, offs_d, D: tl.constexpr, UPCAST: tl.constexpr):
    """Rows `rows` of one head's [T, D] matrix (0 where masked)."""
    b_x = tl.load(p_base + rows[:, None].to(tl.int64) * stride_t + offs_d[None, :],
                  mask=mask_rows[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:  # interpreter: bf16 dots are wrong there, so dot in fp32
        b_x = b_x.to(tl.float32)
    return b_x


@triton.jit
def _online_update(b_s, b_v, m_i, l_i, acc):
    """Zoo softmax (5)–(7) for one tile of scores b_s (log2 units, −∞ where masked)."""
    m_new = tl.maximum(m_i, tl.max(b_s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing seen yet
    b_p = tl.math.exp2(b_s - m_safe[:, None])  # <= 1, 0 where masked
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(b_p, 1)
    acc = tl.dot(b_p.to(b_v.dtype), b_v, acc * alpha[:, None])  # P in the input dtype, as FA2
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["NODES", "T", "RS", "S", "block_size"])
def _hyper_attention_fwd_kernel(q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk,
                                sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                                H, NODES, T, RS, S, block_size, scale, log_w,
                                K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                GATHER: tl.constexpr, SAMPLES: tl.constexpr, CAUSAL: tl.constexpr,
                                BLOCK_MASK: tl.constexpr, INIT: tl.constexpr, UPCAST: tl.constexpr):
    """o, lse of BM sorted queries over their key block and the sampled keys (zoo (3)–(5)),
    starting, with INIT, from the partial softmax over other keys already in (o, lse): the merge
    (5) fused, in place. o and lse rows of head i_bh start at row i_bh·RS (RS = T, or the node
    length when the causal recursion passes the second half of each node)."""
    # ---- map program -> sorted query tile
    i_m = tl.program_id(0)
    if CAUSAL:  # heaviest tiles first
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)  # sorted positions
    mask_m = offs_m < T
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    row0 = i_bh.to(tl.int64) * T  # this head's row in perm
    row0_o = i_bh.to(tl.int64) * RS  # ... and in o, lse
    if GATHER:
        rows_q = tl.load(perm_q + row0 + offs_m, mask=mask_m, other=0)
    else:
        rows_q = offs_m
    p_qb = q + i_b.to(tl.int64) * sq_b + _head(i_h, sq_h, sq_t, NODES, RS)
    p_kb = k + i_b.to(tl.int64) * sk_b + _head(i_h, sk_h, sk_t, NODES, RS)
    p_vb = v + i_b.to(tl.int64) * sv_b + _head(i_h, sv_h, sv_t, NODES, RS)
    # ---- load the query rows once
    b_q = _gather_rows(p_qb, rows_q, mask_m, sq_t, offs_k, K, UPCAST)
    qk_scale = scale * LOG2E
    p_o = o + (row0_o + rows_q.to(tl.int64))[:, None] * V + offs_v[None, :]
    if INIT:  # the partial softmax (o0, lse0) in o, lse is the state (m = lse0, l = 1, acc = o0)
        m_i = tl.load(lse + row0_o + rows_q, mask=mask_m, other=float("-inf")) * LOG2E
        l_i = tl.full([BM], 1.0, tl.float32)
        acc = tl.load(p_o, mask=mask_m[:, None] & (offs_v[None, :] < V), other=0.0).to(tl.float32)
    else:
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, BV], tl.float32)  # fp32 accumulator
    # ---- (3) the block-diagonal part: keys of the blocks this tile's rows lie in
    row_blk = offs_m // block_size
    lo = (start_m // block_size) * block_size
    hi = tl.minimum((tl.minimum(start_m + BM, T) - 1) // block_size * block_size + block_size, T)
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BM)
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < hi
        if GATHER:
            rows_k = tl.load(perm_k + row0 + offs_n, mask=mask_n, other=0)
        else:
            rows_k = offs_n
        b_k = _gather_rows(p_kb, rows_k, mask_n, sk_t, offs_k, K, UPCAST)
        b_v = _gather_rows(p_vb, rows_k, mask_n, sv_t, offs_v, V, UPCAST)
        b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale  # [BM, BN]
        mask_s = mask_n[None, :]
        if BLOCK_MASK:
            mask_s = mask_s & ((offs_n // block_size)[None, :] == row_blk[:, None])
        if CAUSAL:
            mask_s = mask_s & (offs_n[None, :] <= offs_m[:, None])
        b_s = tl.where(mask_s, b_s, float("-inf"))
        m_i, l_i, acc = _online_update(b_s, b_v, m_i, l_i, acc)
    # ---- (4) the sampled keys, weighted N/s, masked inside the row's own block; one softmax = (5)
    if SAMPLES:
        log_w2 = log_w * LOG2E
        for start_s in range(0, S, BN):
            offs_s = start_s + tl.arange(0, BN)
            mask_s1 = offs_s < S
            rows_s = tl.load(smp_k + i_bh.to(tl.int64) * S + offs_s, mask=mask_s1, other=0)
            blk_s = tl.load(smp_blk + i_bh.to(tl.int64) * S + offs_s, mask=mask_s1, other=-1)
            b_k = _gather_rows(p_kb, rows_s, mask_s1, sk_t, offs_k, K, UPCAST)
            b_v = _gather_rows(p_vb, rows_s, mask_s1, sv_t, offs_v, V, UPCAST)
            b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale + log_w2
            mask_s = mask_s1[None, :] & (blk_s[None, :] != row_blk[:, None])
            b_s = tl.where(mask_s, b_s, float("-inf"))
            m_i, l_i, acc = _online_update(b_s, b_v, m_i, l_i, acc)
    # ---- store o, lse in token order
    b_o = acc / l_i[:, None]
    b_lse = (m_i + tl.math.log2(l_i)) * LN2
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=mask_m[:, None] & (offs_v[None, :] < V))
    tl.store(lse + row0_o + rows_q, b_lse, mask=mask_m)


@triton.jit(do_not_specialize=["n_rows"])
def _hyper_attention_bwd_preprocess_kernel(o, do, dlse, delta, n_rows, V: tl.constexpr,
                                           BV: tl.constexpr, BM: tl.constexpr):
    """delta_i = Σ_v o_iv·do_iv − dlse_i for BM rows of the contiguous [B·H·T, V] o and do."""
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_v = tl.arange(0, BV)
    mask = (offs_m[:, None] < n_rows) & (offs_v[None, :] < V)
    p = offs_m[:, None].to(tl.int64) * V + offs_v[None, :]
    b_o = tl.load(o + p, mask=mask, other=0.0).to(tl.float32)
    b_do = tl.load(do + p, mask=mask, other=0.0).to(tl.float32)
    b_dlse = tl.load(dlse + offs_m, mask=offs_m < n_rows, other=0.0).to(tl.float32)
    tl.store(delta + offs_m, tl.sum(b_o * b_do, 1) - b_dlse, mask=offs_m < n_rows)


@triton.jit(do_not_specialize=["NODES", "T", "RS", "S", "block_size"])
def _hyper_attention_bwd_dq_kernel(q, k, v, do, lse, delta, dq, perm_q, perm_k, smp_k, smp_blk,
                                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                                   H, NODES, T, RS, S, block_size, scale, log_w,
                                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                   BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                   GATHER: tl.constexpr, SAMPLES: tl.constexpr,
                                   CAUSAL: tl.constexpr, BLOCK_MASK: tl.constexpr,
                                   ACC: tl.constexpr, UPCAST: tl.constexpr):
    """dq = scale·Σⱼ ds_ij k_j, ds = P (do·v − delta), over the forward's two key sets. The rows of
    do, lse, delta and dq of head i_bh start at row i_bh·RS; ACC adds dq to what dq holds."""
    # ---- map program -> sorted query tile
    i_m = tl.program_id(0)
    if CAUSAL:
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)
    mask_m = offs_m < T
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    row0 = i_bh.to(tl.int64) * T  # in perm
    row0_q = i_bh.to(tl.int64) * RS  # in do, lse, delta, dq
    if GATHER:
        rows_q = tl.load(perm_q + row0 + offs_m, mask=mask_m, other=0)
    else:
        rows_q = offs_m
    p_kb = k + i_b.to(tl.int64) * sk_b + _head(i_h, sk_h, sk_t, NODES, RS)
    p_vb = v + i_b.to(tl.int64) * sv_b + _head(i_h, sv_h, sv_t, NODES, RS)
    # ---- load q, do, lse, delta of these rows
    b_q = _gather_rows(q + i_b.to(tl.int64) * sq_b + _head(i_h, sq_h, sq_t, NODES, RS), rows_q, mask_m, sq_t,
                       offs_k, K, UPCAST)
    b_do = _gather_rows(do + row0_q * V, rows_q, mask_m, V, offs_v, V, UPCAST)
    b_lse = tl.load(lse + row0_q + rows_q, mask=mask_m, other=0.0) * LOG2E
    b_delta = tl.load(delta + row0_q + rows_q, mask=mask_m, other=0.0)
    qk_scale = scale * LOG2E
    b_dq = tl.zeros([BM, BK], tl.float32)  # fp32 accumulator
    row_blk = offs_m // block_size
    lo = (start_m // block_size) * block_size
    hi = tl.minimum((tl.minimum(start_m + BM, T) - 1) // block_size * block_size + block_size, T)
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BM)
    # ---- (3) block keys
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < hi
        if GATHER:
            rows_k = tl.load(perm_k + row0 + offs_n, mask=mask_n, other=0)
        else:
            rows_k = offs_n
        b_k = _gather_rows(p_kb, rows_k, mask_n, sk_t, offs_k, K, UPCAST)
        b_v = _gather_rows(p_vb, rows_k, mask_n, sv_t, offs_v, V, UPCAST)
        mask_s = mask_n[None, :]
        if BLOCK_MASK:
            mask_s = mask_s & ((offs_n // block_size)[None, :] == row_blk[:, None])
        if CAUSAL:
            mask_s = mask_s & (offs_n[None, :] <= offs_m[:, None])
        b_p = tl.where(mask_s, tl.math.exp2(tl.dot(b_q, tl.trans(b_k)) * qk_scale - b_lse[:, None]), 0.0)
        b_ds = b_p * (tl.dot(b_do, tl.trans(b_v)) - b_delta[:, None])
        b_dq = tl.dot(b_ds.to(b_k.dtype), b_k, b_dq)
    # ---- (4) sampled keys
    if SAMPLES:
        log_w2 = log_w * LOG2E
        for start_s in range(0, S, BN):
            offs_s = start_s + tl.arange(0, BN)
            mask_s1 = offs_s < S
            rows_s = tl.load(smp_k + i_bh.to(tl.int64) * S + offs_s, mask=mask_s1, other=0)
            blk_s = tl.load(smp_blk + i_bh.to(tl.int64) * S + offs_s, mask=mask_s1, other=-1)
            b_k = _gather_rows(p_kb, rows_s, mask_s1, sk_t, offs_k, K, UPCAST)
            b_v = _gather_rows(p_vb, rows_s, mask_s1, sv_t, offs_v, V, UPCAST)
            mask_s = mask_s1[None, :] & (blk_s[None, :] != row_blk[:, None])
            b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale + log_w2 - b_lse[:, None]
            b_p = tl.where(mask_s, tl.math.exp2(b_s), 0.0)
            b_ds = b_p * (tl.dot(b_do, tl.trans(b_v)) - b_delta[:, None])
            b_dq = tl.dot(b_ds.to(b_k.dtype), b_k, b_dq)
    # ---- store in token order
    p_dq = dq + (row0_q + rows_q.to(tl.int64))[:, None] * K + offs_k[None, :]
    mask_dq = mask_m[:, None] & (offs_k[None, :] < K)
    if ACC:  # add into the fp32 sum (each query once a launch)
        tl.atomic_add(p_dq, b_dq * scale, mask=mask_dq, sem="relaxed")
    else:
        tl.store(p_dq, (b_dq * scale).to(dq.dtype.element_ty), mask=mask_dq)


@triton.jit(do_not_specialize=["NODES", "T", "RS", "RSK", "block_size"])
def _hyper_attention_bwd_dkdv_block_kernel(q, k, v, do, lse, delta, dk, dv, perm_q, perm_k,
                                           sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                                           H, NODES, T, RS, RSK, block_size, scale,
                                           K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                           BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                           GATHER: tl.constexpr, CAUSAL: tl.constexpr,
                                           BLOCK_MASK: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """dv = Σᵢ P_ij do_i, dk = scale·Σᵢ ds_ij q_i for BN sorted keys, over the queries of their block.
    Rows of head i_bh: do, lse, delta from i_bh·RS, dk, dv from i_bh·RSK; ACC adds to dk, dv."""
    # ---- map program -> sorted key tile
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_n = i_n * BN
    offs_n = start_n + tl.arange(0, BN)
    mask_n = offs_n < T
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    row0 = i_bh.to(tl.int64) * T  # in perm
    row0_q = i_bh.to(tl.int64) * RS  # in do, lse, delta
    row0_k = i_bh.to(tl.int64) * RSK  # in dk, dv
    if GATHER:
        rows_k = tl.load(perm_k + row0 + offs_n, mask=mask_n, other=0)
    else:
        rows_k = offs_n
    # ---- load the key tile once
    b_k = _gather_rows(k + i_b.to(tl.int64) * sk_b + _head(i_h, sk_h, sk_t, NODES, RS), rows_k, mask_n, sk_t,
                       offs_k, K, UPCAST)
    b_v = _gather_rows(v + i_b.to(tl.int64) * sv_b + _head(i_h, sv_h, sv_t, NODES, RS), rows_k, mask_n, sv_t,
                       offs_v, V, UPCAST)
    p_qb = q + i_b.to(tl.int64) * sq_b + _head(i_h, sq_h, sq_t, NODES, RS)
    qk_scale = scale * LOG2E
    b_dk = tl.zeros([BN, BK], tl.float32)  # fp32 accumulators
    b_dv = tl.zeros([BN, BV], tl.float32)
    key_blk = offs_n // block_size
    lo = (start_n // block_size) * block_size
    hi = tl.minimum((tl.minimum(start_n + BN, T) - 1) // block_size * block_size + block_size, T)
    if CAUSAL:
        lo = tl.maximum(lo, start_n)
    # ---- the queries of these keys' block(s)
    for start_m in range(lo, hi, BM):
        offs_m = start_m + tl.arange(0, BM)
        mask_m = offs_m < hi
        if GATHER:
            rows_q = tl.load(perm_q + row0 + offs_m, mask=mask_m, other=0)
        else:
            rows_q = offs_m
        b_q = _gather_rows(p_qb, rows_q, mask_m, sq_t, offs_k, K, UPCAST)
        b_do = _gather_rows(do + row0_q * V, rows_q, mask_m, V, offs_v, V, UPCAST)
        b_lse = tl.load(lse + row0_q + rows_q, mask=mask_m, other=0.0) * LOG2E
        b_delta = tl.load(delta + row0_q + rows_q, mask=mask_m, other=0.0)
        mask_t = mask_m[None, :] & mask_n[:, None]
        if BLOCK_MASK:
            mask_t = mask_t & ((offs_m // block_size)[None, :] == key_blk[:, None])
        if CAUSAL:
            mask_t = mask_t & (offs_m[None, :] >= offs_n[:, None])
        b_pT = tl.where(mask_t, tl.math.exp2(tl.dot(b_k, tl.trans(b_q)) * qk_scale - b_lse[None, :]), 0.0)
        b_dv = tl.dot(b_pT.to(b_do.dtype), b_do, b_dv)
        b_dsT = b_pT * (tl.dot(b_v, tl.trans(b_do)) - b_delta[None, :])
        b_dk = tl.dot(b_dsT.to(b_q.dtype), b_q, b_dk)
    # ---- store in token order (each key lies in one block: written once)
    p_dk = dk + (row0_k + rows_k.to(tl.int64))[:, None] * K + offs_k[None, :]
    p_dv = dv + (row0_k + rows_k.to(tl.int64))[:, None] * V + offs_v[None, :]
    mask_dk, mask_dv = mask_n[:, None] & (offs_k[None, :] < K), mask_n[:, None] & (offs_v[None, :] < V)
    if ACC:  # add into fp32 sums: each key once a launch, so no contention; a reduction needs no registers for the old values
        tl.atomic_add(p_dk, b_dk * scale, mask=mask_dk, sem="relaxed")
        tl.atomic_add(p_dv, b_dv, mask=mask_dv, sem="relaxed")
    else:
        tl.store(p_dk, (b_dk * scale).to(dk.dtype.element_ty), mask=mask_dk)
        tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=mask_dv)


@triton.jit(do_not_specialize=["NODES", "T", "RS", "S", "block_size"])
def _hyper_attention_bwd_dkdv_sample_kernel(q, k, v, do, lse, delta, dk_part, dv_part, perm_q,
                                            smp_k, smp_blk, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                                            sv_b, sv_h, sv_t, H, NODES, T, RS, S, block_size, scale, log_w,
                                            QSPLIT, K: tl.constexpr, V: tl.constexpr,
                                            BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
                                            BN: tl.constexpr, UPCAST: tl.constexpr):
    """Partial dk, dv of BN sampled keys from one split of the queries, taken in sorted order (a
    query's block is then its position // block_size); the rows of do, lse, delta of head i_bh
    start at row i_bh·RS."""
    # ---- map program -> (sample tile, query split, head)
    i_s, i_split, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    offs_s = i_s * BN + tl.arange(0, BN)
    mask_s = offs_s < S
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    row0 = i_bh.to(tl.int64) * T  # in perm_q
    row0_q = i_bh.to(tl.int64) * RS  # in do, lse, delta
    rows_s = tl.load(smp_k + i_bh.to(tl.int64) * S + offs_s, mask=mask_s, other=0)
    blk_s = tl.load(smp_blk + i_bh.to(tl.int64) * S + offs_s, mask=mask_s, other=-1)
    # ---- load the sampled keys once
    b_k = _gather_rows(k + i_b.to(tl.int64) * sk_b + _head(i_h, sk_h, sk_t, NODES, RS), rows_s, mask_s, sk_t,
                       offs_k, K, UPCAST)
    b_v = _gather_rows(v + i_b.to(tl.int64) * sv_b + _head(i_h, sv_h, sv_t, NODES, RS), rows_s, mask_s, sv_t,
                       offs_v, V, UPCAST)
    p_qb = q + i_b.to(tl.int64) * sq_b + _head(i_h, sq_h, sq_t, NODES, RS)
    qk_scale = scale * LOG2E
    log_w2 = log_w * LOG2E
    b_dk = tl.zeros([BN, BK], tl.float32)  # fp32 accumulators
    b_dv = tl.zeros([BN, BV], tl.float32)
    lo = i_split * QSPLIT
    hi = tl.minimum(lo + QSPLIT, T)
    for start_m in range(lo, hi, BM):
        offs_m = start_m + tl.arange(0, BM)  # sorted positions
        mask_m = offs_m < hi
        rows_q = tl.load(perm_q + row0 + offs_m, mask=mask_m, other=0)
        b_q = _gather_rows(p_qb, rows_q, mask_m, sq_t, offs_k, K, UPCAST)
        b_do = _gather_rows(do + row0_q * V, rows_q, mask_m, V, offs_v, V, UPCAST)
        b_lse = tl.load(lse + row0_q + rows_q, mask=mask_m, other=0.0) * LOG2E
        b_delta = tl.load(delta + row0_q + rows_q, mask=mask_m, other=0.0)
        mask_t = mask_m[None, :] & mask_s[:, None] & (blk_s[:, None] != (offs_m // block_size)[None, :])
        b_sT = tl.dot(b_k, tl.trans(b_q)) * qk_scale + log_w2 - b_lse[None, :]
        b_pT = tl.where(mask_t, tl.math.exp2(b_sT), 0.0)
        b_dv = tl.dot(b_pT.to(b_do.dtype), b_do, b_dv)
        b_dsT = b_pT * (tl.dot(b_v, tl.trans(b_do)) - b_delta[None, :])
        b_dk = tl.dot(b_dsT.to(b_q.dtype), b_q, b_dk)
    # ---- store fp32 partials [BH, splits, S, *]
    part = (i_bh.to(tl.int64) * tl.num_programs(1) + i_split) * S
    tl.store(dk_part + (part + offs_s)[:, None] * K + offs_k[None, :], b_dk * scale,
             mask=mask_s[:, None] & (offs_k[None, :] < K))
    tl.store(dv_part + (part + offs_s)[:, None] * V + offs_v[None, :], b_dv,
             mask=mask_s[:, None] & (offs_v[None, :] < V))


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _on_device(x: torch.Tensor):
    """Launch on the tensors' GPU, not the current one (a no-op on the CPU)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _strides(x: torch.Tensor):
    """(batch, head, token) strides of a heads-first [B, H, T, D] view whose last dim is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def _unit_last_dim(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("zoo::hyper_attention_lsh", mutates_args=())
def _lsh_codes(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """zoo lsh_codes: x [B, H, T, d] (any strides), proj [d, r] -> int32 codes [B, H, T].
    A custom op (integer output, no gradient), so torch.compile does not trace the launch."""
    B, H, T, K = x.shape
    R = proj.shape[1]
    x = _unit_last_dim(x)
    codes = torch.empty(B, H, T, dtype=torch.int32, device=x.device)
    BM, warps = (16, 1) if INTERPRET else LSH_TILES
    with _on_device(x):
        launch(_hyper_attention_lsh_kernel, (triton.cdiv(T, BM), B * H),
            x, proj.float().contiguous(), codes, *_strides(x), H, T, K=K, R=R,
            BK=max(16, triton.next_power_of_2(K)), BM=BM, num_warps=warps)
    return codes


@_lsh_codes.register_fake
def _(x, proj):
    return x.new_empty(x.shape[:3], dtype=torch.int32)


def _call_rows(q: torch.Tensor, perm_q: torch.Tensor, smp_k: torch.Tensor):
    """(T, gather, samples) of one call: T the rows taking part (the permutations' length when
    there are any: they may map into a padded layout), whether rows go through permutations, and
    whether there are sampled keys."""
    gather = perm_q.numel() > 0
    return (perm_q.shape[-1] if gather else q.shape[2]), gather, smp_k.numel() > 0


def _block_mask(T: int, block_size: int, tile: int) -> bool:
    return block_size < T and block_size % tile != 0  # a tile may straddle two blocks


def _row_stride(x: torch.Tensor) -> int:
    """RS of a [B, H, T(, d)] view whose head h starts h·RS rows into a buffer of contiguous rows:
    RS = T for a whole tensor, the node length for the halves the causal recursion passes.
    (The stride of a dim of size 1 means nothing, so those are not looked at.)"""
    B, H, T = x.shape[:3]
    row = x.shape[3] if x.dim() == 4 else 1
    assert (row == 1 or x.stride(-1) == 1) and (T == 1 or x.stride(2) == row), "rows must be contiguous"
    if H > 1:
        assert x.stride(1) % row == 0 and (B == 1 or x.stride(0) == H * x.stride(1)), "heads must be evenly spaced"
        return x.stride(1) // row
    return x.stride(0) // row if B > 1 else T


def _hyper_attention_fwd(q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk, block_size: int,
                         scale: float, log_w: float, causal: bool, init: bool, nodes: int = 1):
    """One attention call (3)–(5) of q [B, H, T, K] over the keys the permutations and samples
    give, written into the views o [B, H·nodes, T, V] and lse [B, H·nodes, T]; with init, merged
    (5) with the partial softmax they already hold. With nodes > 1, q, k, v are the first of
    `nodes` pieces a head, o's row stride apart (the causal recursion's levels)."""
    B, H, _, K = q.shape
    H = H * nodes
    T, gather, samples = _call_rows(q, perm_q, smp_k)
    V = v.shape[-1]
    q, k, v = (_unit_last_dim(x) for x in (q, k, v))
    t = _tiles(K, V, q.dtype)
    BM, BN, warps, stages = (t.BMG, t.BNG, t.gwarps, t.gstages) if gather else (t.BM, t.BN, t.warps, t.stages)
    RS = _row_stride(o)
    assert _row_stride(lse) == RS
    with _on_device(q):
        launch(_hyper_attention_fwd_kernel, (triton.cdiv(T, BM), B * H),
            q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk, *_strides(q), *_strides(k), *_strides(v),
            H, nodes, T, RS, smp_k.shape[-1] if samples else 0, block_size, scale, log_w, K=K, V=V,
            BK=t.BK, BV=t.BV, BM=BM, BN=BN, GATHER=gather, SAMPLES=samples, CAUSAL=causal,
            BLOCK_MASK=_block_mask(T, block_size, BM), INIT=init, UPCAST=INTERPRET, num_warps=warps, num_stages=stages)


def _delta(o: torch.Tensor, do: torch.Tensor, dlse: torch.Tensor) -> torch.Tensor:
    """delta_i = Σ o_i·do_i − dlse_i [B, H, T] fp32 (contiguous o, do [B, H, T, V], dlse [B, H, T])."""
    B, H, T, V = o.shape
    delta = torch.empty(B, H, T, dtype=torch.float32, device=o.device)
    BM = _tiles(V, V, o.dtype).BM
    with _on_device(o):
        launch(_hyper_attention_bwd_preprocess_kernel, (triton.cdiv(B * H * T, BM),),
            o, do, dlse, delta, B * H * T, V=V, BV=max(16, triton.next_power_of_2(V)), BM=BM)
    return delta


def _hyper_attention_bwd(do, q, k, v, lse, delta, dq, dk, dv, perm_q, perm_k, smp_k, smp_blk,
                         block_size: int, scale: float, log_w: float, causal: bool, acc: bool, nodes: int = 1):
    """dq, dk, dv of one attention call, from the final lse and delta of its queries: written (or,
    with acc, added) into the views dq [B, H, T, K] (rows like do, lse, delta) and dk, dv (the
    keys' rows). Every key set the forward saw gives its share with the same final lse, so the
    causal recursion's merges (5) need no derivative of their own. nodes: as in _hyper_attention_fwd."""
    B, H, _, K = q.shape
    H = H * nodes
    T, gather, samples = _call_rows(q, perm_q, smp_k)
    V = v.shape[-1]
    q, k, v = (_unit_last_dim(x) for x in (q, k, v))
    t = _tiles(K, V, q.dtype)
    S = smp_k.shape[-1] if samples else 0
    RS, RSK = _row_stride(dq), _row_stride(dk)
    assert _row_stride(do) == _row_stride(lse) == _row_stride(delta) == RS and _row_stride(dv) == RSK
    strides = (*_strides(q), *_strides(k), *_strides(v))
    with _on_device(q):
        launch(_hyper_attention_bwd_dq_kernel, (triton.cdiv(T, t.BM), B * H),
            q, k, v, do, lse, delta, dq, perm_q, perm_k, smp_k, smp_blk, *strides, H, nodes, T, RS, S,
            block_size, scale, log_w, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM, BN=t.BN, GATHER=gather,
            SAMPLES=samples, CAUSAL=causal, BLOCK_MASK=_block_mask(T, block_size, t.BM), ACC=acc, UPCAST=INTERPRET,
            num_warps=t.warps, num_stages=t.stages)
        launch(_hyper_attention_bwd_dkdv_block_kernel, (triton.cdiv(T, t.BN1), B * H),
            q, k, v, do, lse, delta, dk, dv, perm_q, perm_k, *strides, H, nodes, T, RS, RSK, block_size, scale,
            K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM1, BN=t.BN1, GATHER=gather, CAUSAL=causal,
            BLOCK_MASK=_block_mask(T, block_size, t.BN1), ACC=acc, UPCAST=INTERPRET,
            num_warps=t.bwd_warps, num_stages=t.stages)
        if samples:
            splits = triton.cdiv(T, t.QSPLIT)
            dk_part = torch.empty(B * H, splits, S, K, dtype=torch.float32, device=q.device)
            dv_part = torch.empty(B * H, splits, S, V, dtype=torch.float32, device=q.device)
            launch(_hyper_attention_bwd_dkdv_sample_kernel, (triton.cdiv(S, t.BN1), splits, B * H),
                q, k, v, do, lse, delta, dk_part, dv_part, perm_q, smp_k, smp_blk, *strides, H, nodes, T, RS, S,
                block_size, scale, log_w, t.QSPLIT, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM1, BN=t.BN1,
                UPCAST=INTERPRET, num_warps=t.bwd_warps, num_stages=t.stages)
    if samples:  # a key sampled c times gets c contributions; index_add_ sums duplicates
        at = (torch.arange(B * H, device=q.device)[:, None] * RSK + smp_k.view(B * H, S).long()).view(-1)
        for grad, part in ((dk, dk_part), (dv, dv_part)):
            d = grad.shape[-1]  # the heads' rows as one [B·H·RSK, d] matrix from the view's first row
            rows = grad.as_strided((B * H * RSK, d), (d, 1))
            rows.index_add_(0, at, part.sum(1).view(-1, d).to(grad.dtype))


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.compile sees opaque ops with fakes and autograd formulas)
# ------------------------------------------------------------------------------------------------
def _new_o_lse(q: torch.Tensor, v: torch.Tensor):
    """The outputs every forward op writes: o [B, H, T, V] in q's dtype, lse [B, H, T] fp32."""
    B, H, T, _ = q.shape
    return q.new_empty(B, H, T, v.shape[-1]), q.new_empty(B, H, T, dtype=torch.float32)


def _bwd_prologue(do: torch.Tensor, o: torch.Tensor, dlse: torch.Tensor):
    """do as the kernels read it (contiguous) and delta = Σ o·do − dlse."""
    do = do.contiguous()
    return do, _delta(o.contiguous(), do, dlse.float().contiguous())


@torch.library.custom_op("zoo::hyper_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, perm_q: torch.Tensor, perm_k: torch.Tensor,
            smp_k: torch.Tensor, smp_blk: torch.Tensor, block_size: int, scale: float,
            log_w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal (o [B, H, T, V], lse [B, H, T] fp32) on heads-first q, k, v. Empty perm_*:
    identity order; empty smp_*: no sampled part."""
    o, lse = _new_o_lse(q, v)
    _hyper_attention_fwd(q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk, block_size, scale, log_w, False, False)
    return o, lse


@_fwd_op.register_fake
def _(q, k, v, perm_q, perm_k, smp_k, smp_blk, block_size, scale, log_w):
    return _new_o_lse(q, v)


@torch.library.custom_op("zoo::hyper_attention_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            o: torch.Tensor, lse: torch.Tensor, perm_q: torch.Tensor, perm_k: torch.Tensor,
            smp_k: torch.Tensor, smp_blk: torch.Tensor, block_size: int, scale: float,
            log_w: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    do, delta = _bwd_prologue(do, o, dlse)
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    _hyper_attention_bwd(do, q, k, v, lse, delta, dq, dk, dv, perm_q, perm_k, smp_k, smp_blk, block_size,
                         scale, log_w, False, False)
    return dq, dk, dv


@_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk, block_size, scale, log_w):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the kernels write them


def _setup_context(ctx, inputs, output):
    q, k, v, perm_q, perm_k, smp_k, smp_blk, block_size, scale, log_w = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], perm_q, perm_k, smp_k, smp_blk)
    ctx.args = (block_size, scale, log_w)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk = ctx.saved_tensors
    do = torch.zeros_like(o) if do is None else do
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv = _bwd_op(do, dlse, q, k, v, o, lse, perm_q, perm_k, smp_k, smp_blk, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _causal_pieces(leaf: int, levels: int):
    """The calls of the causal recursion (7) on its padded layout, in the order the forward merges
    them: the exact causal leaves, then the lower-left blocks from the deepest level up (the
    order of the zoo's draws). Yields (level index or None for the leaves, nodes a head, node rows)."""
    yield None, 2 ** levels, leaf
    for i, ell in enumerate(range(levels, 0, -1)):
        yield i, 2 ** (ell - 1), leaf * 2 ** (levels - ell + 1)


def _inputs(x: torch.Tensor, n: int, part: slice) -> torch.Tensor:
    """Rows `part` of the first node of n rows of q, k or v [B, H, T, d] (any strides): the kernels
    reach the other nodes n rows apart."""
    return x[:, :, :n][:, :, part]


def _rows(x: torch.Tensor, nodes: int, part: slice) -> torch.Tensor:
    """Rows `part` of every node of a contiguous per-row buffer [B, H, T(, d)]: [B, H·nodes, ·(, d)]."""
    return x.view(x.shape[0], x.shape[1] * nodes, x.shape[2] // nodes, *x.shape[3:])[:, :, part]


def _parts(i, n: int):
    """(query rows, key rows) of a node: the whole leaf, or the lower-left block (second-half
    queries, first-half keys)."""
    return (slice(None), slice(None)) if i is None else (slice(n // 2, None), slice(None, n // 2))


@torch.library.custom_op("zoo::hyper_attention_causal_fwd", mutates_args=())
def _causal_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, perms_q: list[torch.Tensor],
                   perms_k: list[torch.Tensor], smps_k: list[torch.Tensor], smps_blk: list[torch.Tensor],
                   blocks: list[int], log_ws: list[float], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (7) on the padded layout q, k, v [B, H, leaf·2^L, *] (L = len(perms_q)): every call
    writes into one o, lse; each lower-left kernel starts from the diagonal half's (o, lse) in
    place, so the merge (5) is fused and nothing is copied between levels."""
    T = q.shape[2]
    o, lse = _new_o_lse(q, v)
    none = torch.empty(0, dtype=torch.int32, device=q.device)
    for i, nodes, n in _causal_pieces(T >> len(perms_q), len(perms_q)):
        pq, pk = _parts(i, n)
        args = (_inputs(q, n, pq), _inputs(k, n, pk), _inputs(v, n, pk), _rows(o, nodes, pq), _rows(lse, nodes, pq))
        if i is None:  # exact causal attention on each leaf
            _hyper_attention_fwd(*args, none, none, none, none, n, scale, 0.0, True, False, nodes)
        else:
            _hyper_attention_fwd(*args, perms_q[i], perms_k[i], smps_k[i], smps_blk[i], blocks[i], scale, log_ws[i],
                                 False, True, nodes)
    return o, lse


@_causal_fwd_op.register_fake
def _(q, k, v, perms_q, perms_k, smps_k, smps_blk, blocks, log_ws, scale):
    return _new_o_lse(q, v)


@torch.library.custom_op("zoo::hyper_attention_causal_bwd", mutates_args=())
def _causal_bwd_op(do: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   o: torch.Tensor, lse: torch.Tensor, perms_q: list[torch.Tensor], perms_k: list[torch.Tensor],
                   smps_k: list[torch.Tensor], smps_blk: list[torch.Tensor], blocks: list[int],
                   log_ws: list[float], scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every call of the forward, with the final lse and delta of its queries, adds its share to
    fp32 dq, dk, dv (a query or key takes part in one call a level)."""
    do, delta = _bwd_prologue(do, o, dlse)
    dq, dk, dv = (torch.zeros(x.shape, dtype=torch.float32, device=x.device) for x in (q, k, v))
    none = torch.empty(0, dtype=torch.int32, device=q.device)
    for i, nodes, n in _causal_pieces(q.shape[2] >> len(perms_q), len(perms_q)):
        pq, pk = _parts(i, n)
        args = (_rows(do, nodes, pq), _inputs(q, n, pq), _inputs(k, n, pk), _inputs(v, n, pk), _rows(lse, nodes, pq),
                _rows(delta, nodes, pq), _rows(dq, nodes, pq), _rows(dk, nodes, pk), _rows(dv, nodes, pk))
        if i is None:
            _hyper_attention_bwd(*args, none, none, none, none, n, scale, 0.0, True, True, nodes)
        else:
            _hyper_attention_bwd(*args, perms_q[i], perms_k[i], smps_k[i], smps_blk[i], blocks[i], scale, log_ws[i],
                                 False, True, nodes)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@_causal_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, perms_q, perms_k, smps_k, smps_blk, blocks, log_ws, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the kernels write them


def _causal_setup_context(ctx, inputs, output):
    q, k, v, perms_q, perms_k, smps_k, smps_blk, blocks, log_ws, scale = inputs
    ctx.levels = len(perms_q)
    ctx.save_for_backward(q, k, v, output[0], output[1], *perms_q, *perms_k, *smps_k, *smps_blk)
    ctx.args = (blocks, log_ws, scale)


def _causal_backward(ctx, do, dlse):
    q, k, v, o, lse, *plans = ctx.saved_tensors
    n = ctx.levels
    do = torch.zeros_like(o) if do is None else do
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv = _causal_bwd_op(do, dlse, q, k, v, o, lse, plans[:n], plans[n:2 * n], plans[2 * n:3 * n],
                                plans[3 * n:], *ctx.args)
    # a list of tensors gets a list of None; blocks and log_ws are lists of tensors too when empty
    empty = [] if n == 0 else None
    return dq, dk, dv, *([None] * n for _ in range(4)), empty, empty, None


_causal_fwd_op.register_autograd(_causal_backward, setup_context=_causal_setup_context)


# ------------------------------------------------------------------------------------------------
# The method: the zoo's steps with the kernels in place of the torch ones
# ------------------------------------------------------------------------------------------------
def _check_fast(q: torch.Tensor, v: torch.Tensor) -> None:
    check_device_and_dtype(q, "fast HyperAttention", INTERPRET, zoo="zoo.hyper_attention")
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"the fast kernels take head dims K, V <= {MAX_HEAD_DIM}, got q "
                         f"[B, T, H, K] = {tuple(q.shape)}, v [B, T, H, V] = {tuple(v.shape)}")
    if q.shape[1] >= 2**31:
        raise ValueError(f"T = {q.shape[1]} does not fit the kernels' int32 token indices")


def _plan(codes_q, codes_k, T: int, block_size: int, sample_size: int, min_seq_len: int, generator,
          device):
    """zoo _noncausal_chunk's steps before its attention, on the LSH codes [B, H, T] (None when
    T < min_seq_len): sort (1) and draw (4). -> (perm_q, perm_k, smp_k, smp_blk, block, log_w);
    T < min_seq_len (6): empty permutations and one block covering T."""
    none = torch.empty(0, dtype=torch.int32, device=device)
    if T < min_seq_len:
        return none, none, none, none, T, 0.0
    B, H, _ = codes_q.shape
    perm_q = torch.sort(codes_q, dim=-1, stable=True).indices  # (1) [B, H, T]
    perm_k = torch.sort(codes_k, dim=-1, stable=True).indices
    smp_k = smp_blk = none
    log_w = 0.0
    if sample_size > 0 and T > block_size:
        samples = zh.draw_samples(B, H, T, sample_size, generator, device)  # (4) sorted positions
        smp_k = perm_k.gather(-1, samples).to(torch.int32)  # the tokens they are
        smp_blk = (samples // block_size).to(torch.int32)  # the blocks they lie in
        log_w = math.log(T / sample_size)
    return perm_q.to(torch.int32), perm_k.to(torch.int32), smp_k, smp_blk, block_size, log_w


def _causal_layout(T: int, min_seq_len: int):
    """Where the zoo's recursion (7) puts every row. It appends one zero row to each node of odd
    length, so all nodes of a level have one length; lay the nodes out at the size their own
    children will need, and every level is one [B, H·nodes, n] view of one padded buffer.
    -> (leaf, halves, slots): 2^L leaves of `leaf` rows a head (L = len(halves)); halves[j] =
    (h, rows) for level j from the top, whose nodes have halves of h rows (zero rows of upper
    levels included), which sit at `rows` [h] (int64, CPU) inside a half of the layout, or None
    when rows = 0..h-1; slots [T] the same for the T tokens in the whole layout, or None."""
    if T <= min_seq_len:
        return T, [], None
    h = (T + 1) // 2  # top half: rows 0..h-1; bottom half: the other T - h rows and, if T is odd, a zero row
    leaf, halves, rows = _causal_layout(h, min_seq_len)
    size = leaf * 2 ** len(halves)  # a half's rows in the layout (>= h)
    slots = None
    if rows is not None or T != 2 * h:
        r = torch.arange(h) if rows is None else rows
        slots = torch.cat([r, size + r[: T - h]])
    return leaf, [(h, rows)] + halves, slots


def _causal(q, k, v, proj, scale, block_size, sample_size, min_seq_len, generator):
    """zoo causal_recursion (7) on heads-first q, k, v: the same calls with the same draws in the
    same order, on a layout where every level is one launch (_causal_layout): the zero rows the
    zoo appends to odd nodes are placed once, up front (no copy when T = leaf·2^L); the tokens are
    hashed once (a row's code is the same at every level); one op runs every kernel in place.
    A level whose rows do not fill its halves gives the kernels its rows through the permutations."""
    B, H, T, _ = q.shape
    leaf, halves, slots = _causal_layout(T, min_seq_len)
    L = len(halves)
    if slots is not None:
        slots = slots.to(q.device)
        q, k, v = (x.new_zeros(B, H, leaf * 2 ** L, x.shape[-1]).index_copy(2, slots, x) for x in (q, k, v))
    codes_q = codes_k = None
    if L and halves[0][0] >= min_seq_len:  # some lower-left block is hashed
        codes_q, codes_k = _lsh_codes(q, proj), _lsh_codes(k, proj)
    plans = []
    for ell in range(L, 0, -1):  # the deepest level first: the zoo draws in this order
        nodes = 2 ** (ell - 1)
        h, rows = halves[ell - 1]
        rows = None if rows is None else rows.to(q.device)
        cq = ck = None
        if h >= min_seq_len:  # the codes of the lower-left block's queries and keys [B, H·nodes, h]
            n = 2 * leaf * 2 ** (L - ell)
            cq, ck = _rows(codes_q, nodes, slice(n // 2, None)), _rows(codes_k, nodes, slice(None, n // 2))
            if rows is not None:
                cq, ck = cq[..., rows], ck[..., rows]
        plan = _plan(cq, ck, h, block_size, sample_size, min_seq_len, generator, q.device)
        if rows is not None:  # the level's rows, in sorted order, are layout rows through `rows`
            # (a half of h < min_seq_len rows is a leaf, laid out as it is: rows is None there)
            perm_q, perm_k, smp_k, smp_blk, block, log_w = plan
            perm_q, perm_k = (rows.to(torch.int32)[p.long()] for p in (perm_q, perm_k))
            if smp_k.numel():
                smp_k = rows.to(torch.int32)[smp_k.long()]
            plan = (perm_q, perm_k, smp_k, smp_blk, block, log_w)
        plans.append(plan)
    perms_q, perms_k, smps_k, smps_blk, blocks, log_ws = (list(x) for x in zip(*plans)) if plans else ([],) * 6
    o, lse = _causal_fwd_op(q, k, v, perms_q, perms_k, smps_k, smps_blk, blocks, log_ws, scale)
    _dry_backward(_causal_bwd_op, o, lse, q, k, v, perms_q, perms_k, smps_k, smps_blk, blocks, log_ws, scale)
    if slots is not None:
        o, lse = o.index_select(2, slots), lse.index_select(2, slots)
    return o, lse


_dry = threading.local()  # .backward: inside a dry run that also compiles the backward


def _precompile(q, k, v, proj, causal, scale, block_size, sample_size, min_seq_len, generator):
    """First calls (fast/_compile.py): the kernel variants a call uses depend on T, the block and
    sample sizes and min_seq_len (which levels of the causal recursion hash and sample, which
    tiles straddle blocks), so the dry run is this very call, on the same q, k, v: the hash runs
    as a warmup too, so the sorts see garbage codes, but a sort of anything is a permutation and
    the draws are valid indices, so every torch step between the launches is safe. With gradients
    on, the dry run also calls the backward op right after the forward op, on this thread (not
    through autograd, which runs a CUDA backward on its own thread, outside the dry run: tried in
    run 23, the backward's kernels still compiled in series). It draws from a copy of the
    generator (or of the global RNG, restored after), so the real call draws what it would have
    drawn. Measured before this (H100, run 20, B = 1, T = 131072, H = 32, D = 64): causal fwd +
    bwd 8.0 s, 9 compiles of 0.16-0.92 s in series; forward 1.9 s."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    key = ("hyper", q.dtype, q.device, tuple(q.shape[1:]), tuple(k.shape[1:]), v.shape[-1], causal, block_size,
           sample_size, min_seq_len, grad)

    def dry():
        gen = None
        if generator is not None:
            gen = torch.Generator(device=generator.device)
            gen.set_state(generator.get_state())
        _dry.backward = grad
        try:
            with torch.random.fork_rng(devices=[q.device] if q.is_cuda else []), torch.no_grad():
                hyper_attention_chunk(q, k, v, proj=proj, causal=causal, scale=scale, block_size=block_size,
                                      sample_size=sample_size, min_seq_len=min_seq_len, generator=gen)
        finally:
            _dry.backward = False

    precompile({key: dry})


def _dry_backward(bwd_op, o, lse, *args):
    """Inside a dry run with gradients on: the backward op, on this thread, right after its forward."""
    if getattr(_dry, "backward", False):
        bwd_op(torch.zeros_like(o), torch.zeros_like(lse), *args[:3], o, lse, *args[3:])


def hyper_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                          proj: torch.Tensor, causal: bool = False, scale: float | None = None,
                          return_lse: bool = False, block_size: int = 256, sample_size: int = 256,
                          min_seq_len: int = 2048, generator: torch.Generator | None = None):
    """zoo.hyper_attention.hyper_attention_chunk with Triton kernels (hash, fused block + sampled
    attention forward and backward). Same arguments and results; the same proj and generator
    state give the same samples as the zoo, so the two agree to rounding."""
    zh._check_inputs(q, k, v, proj, scale, block_size, sample_size, min_seq_len)
    _check_fast(q, v)
    if not torch.compiler.is_compiling():
        _precompile(q, k, v, proj, causal, scale, block_size, sample_size, min_seq_len, generator)
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q_, k_, v_ = (x.transpose(1, 2) for x in (q, k, v))  # heads-first views [B, H, T, *]
    proj_ = proj.to(device=q.device, dtype=torch.float32)
    if causal:
        o, lse = _causal(q_, k_, v_, proj_, scale, block_size, sample_size, min_seq_len, generator)
    else:
        T = q_.shape[2]
        codes = (_lsh_codes(q_, proj_), _lsh_codes(k_, proj_)) if T >= min_seq_len else (None, None)
        plan = _plan(*codes, T, block_size, sample_size, min_seq_len, generator, q.device)
        perm_q, perm_k, smp_k, smp_blk, block, log_w = plan
        o, lse = _fwd_op(q_, k_, v_, perm_q, perm_k, smp_k, smp_blk, block, scale, log_w)
        _dry_backward(_bwd_op, o, lse, q_, k_, v_, perm_q, perm_k, smp_k, smp_blk, block, scale, log_w)
    o = o.transpose(1, 2).to(dtype)  # [B, T, H, V]
    return (o, lse.transpose(1, 2)) if return_lse else o


class HyperAttention(zh.HyperAttention):
    """zoo.hyper_attention.HyperAttention with the Triton op; same buffers, same calls."""

    chunk_op = staticmethod(hyper_attention_chunk)


class HyperAttentionLayer(zh.HyperAttentionLayer):
    """zoo.hyper_attention.HyperAttentionLayer with the Triton op; same parameters, same state dict."""

    chunk_op = staticmethod(hyper_attention_chunk)


__all__ = ["hyper_attention_chunk", "HyperAttention", "HyperAttentionLayer"]


# ================================================================================================
# Benchmark beside the kernels (GPU): `python -m fast.hyper_attention [T ...]` (default 4096 ...
# 131072; B = 1, H = 32, D = 64, bf16, the shapes). For each T and causal mode: SDPA
# (flash) and fast HyperAttention, forward and forward + backward (median ms, triton's do_bench),
# the speed-up, the stages of the non-causal forward (hash, sort, attention kernel), and the
# relative RMS error of each output against exact attention in float64 on 256 random query rows
# of the first and last head (the full [T, T] reference would not fit). Prints a markdown table
# and, with $OUT set, writes $OUT/hyper_attention_bench.json. The project-wide comparison is
# `python -m benchmarks`; this is the view for the targets (≤ 6.3 / 19 / 96 ms at 131k).
# ================================================================================================
def _exact_rows(q, k, v, rows, causal):
    """Exact softmax attention in float64 for query rows `rows` of heads 0 and H-1 [B, T, H, D]."""
    out = []
    for h in (0, q.shape[2] - 1):
        qh, kh, vh = (x[0, :, h].double() for x in (q, k, v))  # [T, D]
        s = (qh[rows] @ kh.T) * q.shape[-1] ** -0.5  # [R, T]
        if causal:
            s = s.masked_fill(torch.arange(kh.shape[0], device=q.device)[None, :] > rows[:, None], float("-inf"))
        out.append(torch.softmax(s, -1) @ vh)
    return torch.stack(out)  # [2, R, D]


def _benchmark(Ts=(4096, 16384, 65536, 131072), B=1, H=32, D=64, dtype=torch.bfloat16):
    import json
    from triton.testing import do_bench
    dev = "cuda"
    sdpa = torch.nn.functional.scaled_dot_product_attention
    proj = zh.lsh_projections(D, 8, seed=0, device=dev)
    records = []
    print("| T | causal | dir | SDPA ms | hyper ms | speed-up | err hyper | err SDPA |")
    print("|---|---|---|---|---|---|---|---|")
    for T in Ts:
        gen = torch.Generator(device=dev).manual_seed(T)
        q, k, v = (torch.randn(B, T, H, D, device=dev, generator=gen).to(dtype) for _ in range(3))
        do = torch.randn_like(q)
        rows = torch.randperm(T, device=dev, generator=gen)[:256]
        for causal in (False, True):
            hyper = lambda q, k, v: hyper_attention_chunk(q, k, v, proj=proj, causal=causal)
            flash = lambda q, k, v: sdpa(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=causal).transpose(1, 2)
            ref = _exact_rows(q, k, v, rows, causal)
            errs = {}
            for name, fn in (("sdpa", flash), ("hyper", hyper)):
                with torch.no_grad():
                    o = fn(q, k, v)
                got = torch.stack([o[0, rows, 0], o[0, rows, H - 1]]).double()
                errs[name] = ((got - ref).norm() / ref.norm()).item()
            for direction in ("fwd", "fwdbwd"):
                ms = {}
                for name, fn in (("sdpa", flash), ("hyper", hyper)):
                    if direction == "fwd":
                        def step(fn=fn):
                            with torch.no_grad():
                                fn(q, k, v)
                    else:
                        xs = [x.detach().requires_grad_() for x in (q, k, v)]

                        def step(fn=fn, xs=xs):
                            fn(*xs).backward(do)
                    ms[name] = do_bench(step, warmup=3, rep=30)
                rec = dict(T=T, causal=causal, direction=direction, B=B, H=H, D=D, dtype=str(dtype),
                           sdpa_ms=ms["sdpa"], hyper_ms=ms["hyper"], speedup=ms["sdpa"] / ms["hyper"],
                           err_hyper=errs["hyper"], err_sdpa=errs["sdpa"])
                records.append(rec)
                print(f"| {T} | {causal} | {direction} | {ms['sdpa']:.3f} | {ms['hyper']:.3f} | "
                      f"{rec['speedup']:.1f}× | {errs['hyper']:.3g} | {errs['sdpa']:.2g} |", flush=True)
        # the stages of the non-causal forward
        q_, k_, v_ = (x.transpose(1, 2) for x in (q, k, v))
        codes = _lsh_codes(q_, proj)
        perm = torch.sort(codes, dim=-1, stable=True).indices.to(torch.int32)
        smp = zh.draw_samples(B, H, T, 256, None, dev)
        smp_k, smp_blk = perm.gather(-1, smp.long()).to(torch.int32), (smp // 256).to(torch.int32)
        o_, lse_ = q_.new_empty(q_.shape), q_.new_empty(q_.shape[:3], dtype=torch.float32)
        stages = {
            "hash q": lambda: _lsh_codes(q_, proj),
            "sort q": lambda: torch.sort(codes, dim=-1, stable=True),
            "attention kernel": lambda: _hyper_attention_fwd(q_, k_, v_, o_, lse_, perm, perm, smp_k, smp_blk,
                                                             256, D ** -0.5, math.log(T / 256), False, False),
        }
        for name, fn in stages.items():
            t = do_bench(fn, warmup=3, rep=30)
            records.append(dict(T=T, stage=name, ms=t))
            print(f"|   T = {T} stage: {name} | {t:.3f} ms |", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "hyper_attention_bench.json"), "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    import sys
    _benchmark(tuple(int(a) for a in sys.argv[1:]) or (4096, 16384, 65536, 131072))
