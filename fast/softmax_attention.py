"""Triton mirror of zoo/softmax_attention.py; the math (equations (1)–(8)) and shapes are there.

Kernel plan (FlashAttention-2, Dao 2023, arXiv:2307.08691):
- Forward: one program per (query block of BM rows, batch·head). The program loads its q block
  once and keeps it in registers, then walks the key blocks of BN keys, keeping the running max
  m, the normaliser l and the un-normalised output acc of the zoo's (5)–(7) in fp32 registers;
  it never writes a score to memory. It stores o and lse (fp32). Scores are kept in log2 units
  (scale·log2 e folded into one multiply) because exp2 is the GPU's native exponential.
- Causal split: key blocks wholly below the diagonal need no mask and run in a loop with none;
  only the BM/BN key blocks on the diagonal build the j <= i mask (the idea of the Triton
  fused-attention tutorial). Without causal, the full key blocks run unmasked and only the
  last, ragged block masks keys >= Tk. Causal programs start with the heaviest query blocks
  (the last ones) so the short blocks fill the tail of the launch.
- Backward stores nothing beyond o and lse: P is recomputed from q, k and lse.
  (a) dq kernel: one program per (query block, batch·head), holding q, do, dq and looping over
      the key blocks it sees; it first computes delta_i = Σ o_i·do_i − dlse_i for its rows and
      stores it (a separate preprocess kernel would cost one more compile on first call);
  (b) dk/dv kernel, launched after it: one program per (key block, batch·head), holding k, v,
      dk, dv and looping over the query blocks that see its keys.
  With ds_ij = P_ij·(dp_ij − delta_i), dp_ij = do_i·v_j: dv = Pᵀdo, dk = scale·dsᵀq,
  dq = scale·ds·k. The −dlse_i in delta is lse's own gradient: ∂lse_i/∂s_ij = P_ij.
  Why two kernels rather than FlashAttention-2's single pass with atomic adds into dq: every
  output is written once, by one program: no atomics, no races, bit-reproducible gradients.
  The price is computing q·kᵀ and P twice (7 matmuls per tile instead of 5).
- Tiles come from a rule on the head dims, the dtype and the GPU (`_tiles`), never from
  autotuning on T or B; T and Tk are marked do_not_specialize, so a new length reuses the
  compiled kernels. Head dims pad to a power of two >= 16 (tl.dot's minimum) through masks, so
  any K, V <= 256 works; K and V may differ.
- Hopper (sm_90+, the section at the end): the forward's k/v loads go through TMA tensor
  descriptors when the head dims are powers of two; the kernel and the tests are the same.
- Negative scales: the kernels need scale >= 0 (the row max of scale·s is scale·max s); the
  public op negates q instead, which autograd differentiates for free.

Measured (H100, torch 2.11, Triton 3.6, bf16, B=4, T=8192, H=16, D=128, the tile rule's TMA
path): causal forward 2.15 ms = 511 TFLOP/s against SDPA's 1.75 ms (0.82×); non-causal forward
570 TFLOP/s; causal forward + backward 12.75 ms against SDPA's 7.12 ms (the backward is the
slow part). `python -m fast.softmax_attention` sweeps the forward's tiles on a GPU.

Legend (fla's prefixes): i_ program ids, p_ pointers, b_ on-chip blocks, offs_ offsets,
mask_ masks; BM/BN query/key block sizes, BK/BV padded head dims; m_i/l_i/acc the zoo's m/l/acc.
"""

import contextlib
import os
from typing import NamedTuple

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~2 s): pay it here, at import
import triton
import triton.language as tl

from zoo import softmax_attention as zsa
from fast._checks import check_device_and_dtype

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
    BM: int  # forward: queries per program
    BN: int  # forward: keys per loop step; BM % BN == 0 so the causal split is whole blocks
    BM1: int  # dk/dv kernel: queries per loop step
    BN1: int  # dk/dv kernel: keys per program; BN1 % BM1 == 0
    BM2: int  # dq kernel: queries per program
    BN2: int  # dq kernel: keys per loop step; BM2 % BN2 == 0
    warps: int
    stages: int
    bwd_warps: int
    bwd_stages: int


def _tiles(K: int, V: int, dtype: torch.dtype, device: torch.device) -> Tiles:
    """Block sizes from the head dims, the dtype and the GPU generation. The forward holds q
    [BM, BK] and acc [BM, BV] in registers for the whole loop and streams k/v [BN, BK|BV]
    through shared memory, num_stages deep; the backward holds two [BN1, D] accumulators.
    Every row below was compiled ahead of time for sm_90 (Triton 3.9, no GPU needed) and
    reads 0 bytes of register spill (cuobjdump -res-usage); the speed of the headline row is
    what `python -m fast.softmax_attention` measures on the GPU."""
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    if INTERPRET:
        # The interpreter runs programs one after another: small blocks, so tests with T of a
        # few dozen still cross block edges, split BM/BN and run several loop steps.
        return Tiles(BK, BV, 32, 16, 16, 32, 32, 16, 1, 1, 1, 1)
    D = max(BK, BV)
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    if dtype == torch.float32:  # 4-byte tiles: half the rows fit (tf32 dots)
        if D <= 64:
            return Tiles(BK, BV, 64, 32, 32, 64, 64, 32, 4, 2, 4, 2)
        if D <= 128:
            return Tiles(BK, BV, 64, 32, 16, 32, 32, 16, 4, 2, 4, 2)
        return Tiles(BK, BV, 32, 16, 16, 32, 32, 16, 8, 1, 8, 1)
    # fp16 / bf16. D = 128: BM = 128 rows of q and acc over 8 warps (two Hopper warpgroups)
    # is FlashAttention-2's shape; on Hopper BN = 128 keys a step ([128, 128] fp32 scores beside
    # acc; 3 stages of k and v through TMA, 3·2·128·128·2 B = 192 KB): measured on the H100
    # (bf16, B = 4, T = 8192, H = 16, causal) 2.10 ms against 2.27 ms at BN = 64 (which other GPUs
    # keep: less shared memory); 3 stages hide the loads.
    # The backward holds dk, dv [128, D] fp32 over 8 warps (4 warps spill at D = 64).
    stages = 3 if hopper else 2
    if D <= 64:
        return Tiles(BK, BV, 128, 64, 32, 128, 128, 32, 4, stages, 8, stages)
    if D <= 128:
        return Tiles(BK, BV, 128, 128 if hopper else 64, 32, 128, 128, 32, 8, stages, 8, 2)
    return Tiles(BK, BV, 64, 32, 16, 32, 32, 16, 8, 2 if hopper else 1, 8, 1)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(p, offs_row, n_rows, offs_col, n_cols, CHECK_ROWS: tl.constexpr,
               CHECK_COLS: tl.constexpr):
    """Load a [rows, cols] tile, masking only what can be out of range (0 where masked). The
    choice is a constexpr, so a tile that needs no mask compiles to a plain vectorised load."""
    if CHECK_ROWS and CHECK_COLS:
        b_x = tl.load(p, mask=(offs_row[:, None] < n_rows) & (offs_col[None, :] < n_cols), other=0.0)
    elif CHECK_ROWS:
        b_x = tl.load(p, mask=offs_row[:, None] < n_rows, other=0.0)
    elif CHECK_COLS:
        b_x = tl.load(p, mask=offs_col[None, :] < n_cols, other=0.0)
    else:
        b_x = tl.load(p)
    return b_x


@triton.jit
def _load_kv_block(p_k, p_v, start_n, offs_n, TK, stride_k, stride_v, row0, col_k, col_v,
                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   MASKED: tl.constexpr, TMA: tl.constexpr):
    """A key block k [BN, BK] and its values v [BN, BV]. Pointer loads mask the rows past Tk
    (only in the masked loop) and padded head-dim columns. TMA loads (the Hopper section at
    the end) read whole boxes of a [B·Tk, H·D] view: rows past Tk belong to the next sequence,
    so the masked loop zeroes their values (their scores are masked to -inf anyway)."""
    if TMA:
        b_k = p_k.load([row0 + start_n, col_k])
        b_v = p_v.load([row0 + start_n, col_v])
        if MASKED:
            b_v = tl.where(offs_n[:, None] < TK, b_v, 0.0)
    else:
        offs_k = tl.arange(0, BK)
        offs_v = tl.arange(0, BV)
        b_k = _load_tile(p_k + start_n * stride_k, offs_n, TK, offs_k, K, MASKED, BK != K)
        b_v = _load_tile(p_v + start_n * stride_v, offs_n, TK, offs_v, V, MASKED, BV != V)
    return b_k, b_v


@triton.jit
def _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, lo, hi, TK, stride_k, stride_v, row0,
                    col_k, col_v, qk_scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                    BV: tl.constexpr, BN: tl.constexpr, MASKED: tl.constexpr,
                    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """Zoo (5)–(7) over the key blocks [lo, hi): the online-softmax update of m, l, acc."""
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        # -- load: a key block and its values; rows need a mask only in the masked loop
        b_k, b_v = _load_kv_block(p_k, p_v, start_n, offs_n, TK, stride_k, stride_v, row0, col_k,
                                  col_v, K, V, BK, BV, MASKED, TMA)
        if UPCAST:  # interpreter: bf16 dots are wrong there, so dot in fp32
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        # -- compute: (1) scores q·kᵀ in fp32 (tensor cores, fp32 accumulate)
        b_s = tl.dot(b_q, tl.trans(b_k))  # [BM, BN]
        if MASKED:
            # (2) -inf for keys past Tk and, when causal, for keys after the query. Applied after
            # scaling, so it does not depend on the sign of scale.
            mask_s = offs_n[None, :] < TK
            if CAUSAL:
                mask_s = mask_s & (offs_n[None, :] <= offs_m[:, None])
            b_s = tl.where(mask_s, b_s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(b_s, 1))  # (5) in log2 units
            b_s = b_s - m_new[:, None]
        else:
            m_new = tl.maximum(m_i, tl.max(b_s, 1) * qk_scale)  # (5); scale >= 0 commutes with max
            b_s = b_s * qk_scale - m_new[:, None]  # one fused multiply-add per score
        b_p = tl.math.exp2(b_s)  # exp(s − m') <= 1, never overflows  [BM, BN]
        alpha = tl.math.exp2(m_i - m_new)  # exp(m − m'): how much the old sums shrink  [BM]
        l_i = l_i * alpha + tl.sum(b_p, 1)  # (6)
        acc = tl.dot(b_p.to(b_v.dtype), b_v, acc * alpha[:, None])  # (7) P in the input dtype, as FA2
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["T", "TK"])
def _softmax_attention_chunk_fwd_kernel(q, k, v, o, lse, H, T, TK, scale,
                                        K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                        BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                        CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                                        TMA: tl.constexpr):
    """o = softmax(scale·q·kᵀ (masked)) v and lse = log Σ exp(scale·q·kᵀ), one query block."""
    tl.static_assert(BM % BN == 0)  # the causal split falls on whole key blocks
    # -- map program -> (query block, batch, head); causal: the heaviest (last) blocks first
    i_m = tl.program_id(0)
    if CAUSAL:
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    # element (b, t, h, d) of a contiguous [B, T, H, D] tensor sits at ((b·T + t)·H + h)·D + d
    stride_q, stride_k, stride_v = H * K, H * K, H * V
    p_q = q + (i_b.to(tl.int64) * T * H + i_h) * K + offs_m[:, None] * stride_q + offs_k[None, :]
    if TMA:  # k, v are tensor descriptors of [B·Tk, H·D] views (the Hopper section at the end)
        p_k, p_v = k, v
    else:
        p_k = k + (i_b.to(tl.int64) * TK * H + i_h) * K + offs_n[:, None] * stride_k + offs_k[None, :]
        p_v = v + (i_b.to(tl.int64) * TK * H + i_h) * V + offs_n[:, None] * stride_v + offs_v[None, :]
    row0, col_k, col_v = i_b * TK, i_h * K, i_h * V  # where this sequence and head start in them
    # -- load q once; it stays in registers for the whole loop
    b_q = _load_tile(p_q, offs_m, T, offs_k, K, True, BK != K)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    qk_scale = scale * LOG2E  # scale arrives as a Python float: Triton passes it as fp32
    # -- the running statistics of the zoo's chunk form, fp32 accumulators
    m_i = tl.full([BM], float("-inf"), tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BM], tl.float32)  # running normaliser
    acc = tl.zeros([BM, BV], tl.float32)  # un-normalised output
    # -- compute: the key blocks every query of this block sees whole, then the masked ones
    if CAUSAL:
        free_hi = start_m  # keys < start_m precede every query here; a multiple of BN
        hi = tl.minimum(start_m + BM, TK)  # the diagonal blocks
    else:
        free_hi = (TK // BN) * BN  # the full key blocks
        hi = TK  # the last, ragged block
    acc, l_i, m_i = _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, 0, free_hi, TK,
                                    stride_k, stride_v, row0, col_k, col_v, qk_scale, K, V, BK,
                                    BV, BN, False, CAUSAL, UPCAST, TMA)
    acc, l_i, m_i = _fwd_key_blocks(acc, l_i, m_i, b_q, p_k, p_v, offs_m, free_hi, hi, TK,
                                    stride_k, stride_v, row0, col_k, col_v, qk_scale, K, V, BK,
                                    BV, BN, True, CAUSAL, UPCAST, TMA)
    # -- (8) normalise once at the end; lse back to natural log
    b_o = acc / l_i[:, None]
    b_lse = (m_i + tl.math.log2(l_i)) * LN2
    # -- store o [B, T, H, V] and lse [B, H, T]
    p_o = o + (i_b.to(tl.int64) * T * H + i_h) * V + offs_m[:, None] * stride_v + offs_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_v[None, :] < V))
    tl.store(lse + i_bh.to(tl.int64) * T + offs_m, b_lse, mask=offs_m < T)


@triton.jit
def _bwd_dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, lse, delta, offs_n, lo, hi, T,
                           stride_q, stride_do, qk_scale, K: tl.constexpr, V: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
                           MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """dv += Pᵀdo and dk += dsᵀq over the query blocks [lo, hi), in transposed form [BN, BM]."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for start_m in range(lo, hi, BM):
        offs_m = start_m + tl.arange(0, BM)
        # -- load; rows >= T read q = do = 0, lse = +inf, so their P is exactly 0
        b_q = _load_tile(p_q + start_m * stride_q, offs_m, T, offs_k, K, True, BK != K)
        b_do = _load_tile(p_do + start_m * stride_do, offs_m, T, offs_v, V, True, BV != V)
        if UPCAST:
            b_q = b_q.to(tl.float32)
            b_do = b_do.to(tl.float32)
        b_lse = tl.load(lse + offs_m, mask=offs_m < T, other=float("inf")) * LOG2E
        b_delta = tl.load(delta + offs_m, mask=offs_m < T, other=0.0)
        # -- recompute Pᵀ from the stored lse: (3) P_ij = exp(s_ij − lse_i)
        b_pT = tl.math.exp2(tl.dot(b_k, tl.trans(b_q)) * qk_scale - b_lse[None, :])  # [BN, BM]
        if MASKED:  # (2) the diagonal: query i sees key j only if j <= i
            b_pT = tl.where(offs_m[None, :] >= offs_n[:, None], b_pT, 0.0)
        b_dv = tl.dot(b_pT.to(b_do.dtype), b_do, b_dv)  # dv_j += Σ_i P_ij do_i
        b_dpT = tl.dot(b_v, tl.trans(b_do))  # dp_ij = do_i·v_j  [BN, BM]
        b_dsT = b_pT * (b_dpT - b_delta[None, :])  # ds_ij = P_ij (dp_ij − delta_i)
        b_dk = tl.dot(b_dsT.to(b_q.dtype), b_q, b_dk)  # dk_j += Σ_i ds_ij q_i (scale at the end)
    return b_dk, b_dv


@triton.jit(do_not_specialize=["T", "TK"])
def _softmax_attention_chunk_bwd_dkdv_kernel(q, k, v, o, do, lse, dlse, delta, dq, dk, dv, H, T, TK, scale,
                                             K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                             BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                             CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
    """dk = scale·dsᵀq and dv = Pᵀdo for one key block. (The dq kernel's argument list, o, dlse
    and dq unused: the same argument types share one compiled launcher on first call.)"""
    tl.static_assert(BN % BM == 0)  # the diagonal falls on whole query blocks
    # -- map program -> (key block, batch, head); causal: the first key blocks have most queries
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_n = i_n * BN
    offs_n = start_n + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    stride_q, stride_k, stride_v = H * K, H * K, H * V
    base_kv = i_b.to(tl.int64) * TK * H + i_h
    base_q = i_b.to(tl.int64) * T * H + i_h
    # -- load this program's keys and values once; rows >= Tk read 0 and are not stored
    p_k = k + base_kv * K + offs_n[:, None] * stride_k + offs_k[None, :]
    p_v = v + base_kv * V + offs_n[:, None] * stride_v + offs_v[None, :]
    b_k = _load_tile(p_k, offs_n, TK, offs_k, K, True, BK != K)
    b_v = _load_tile(p_v, offs_n, TK, offs_v, V, True, BV != V)
    if UPCAST:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    p_q = q + base_q * K + offs_m[:, None] * stride_q + offs_k[None, :]
    p_do = do + base_q * V + offs_m[:, None] * stride_v + offs_v[None, :]
    lse += i_bh.to(tl.int64) * T
    delta += i_bh.to(tl.int64) * T
    qk_scale = scale * LOG2E
    b_dk = tl.zeros([BN, BK], tl.float32)  # fp32 accumulators
    b_dv = tl.zeros([BN, BV], tl.float32)
    # -- compute: causal queries < start_n see none of these keys; the BN/BM query blocks on the
    #    diagonal take the mask; every later query sees all of them
    if CAUSAL:
        diag_hi = tl.minimum(start_n + BN, T)
        b_dk, b_dv = _bwd_dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, lse, delta, offs_n,
                                            start_n, diag_hi, T, stride_q, stride_v, qk_scale,
                                            K, V, BK, BV, BM, True, UPCAST)
        lo = start_n + BN
    else:
        lo = 0
    b_dk, b_dv = _bwd_dkdv_query_blocks(b_dk, b_dv, b_k, b_v, p_q, p_do, lse, delta, offs_n,
                                        lo, T, T, stride_q, stride_v, qk_scale,
                                        K, V, BK, BV, BM, False, UPCAST)
    # -- store
    p_dk = dk + base_kv * K + offs_n[:, None] * stride_k + offs_k[None, :]
    p_dv = dv + base_kv * V + offs_n[:, None] * stride_v + offs_v[None, :]
    tl.store(p_dk, (b_dk * scale).to(dk.dtype.element_ty), mask=(offs_n[:, None] < TK) & (offs_k[None, :] < K))
    tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=(offs_n[:, None] < TK) & (offs_v[None, :] < V))


@triton.jit
def _bwd_dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, lo, hi, TK, stride_k,
                       stride_v, qk_scale, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, BN: tl.constexpr, MASKED: tl.constexpr,
                       UPCAST: tl.constexpr):
    """dq += ds·k over the key blocks [lo, hi)."""
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        # -- load; keys >= Tk read k = v = 0: their ds may be nonzero but it multiplies k = 0
        b_k = _load_tile(p_k + start_n * stride_k, offs_n, TK, offs_k, K, True, BK != K)
        b_v = _load_tile(p_v + start_n * stride_v, offs_n, TK, offs_v, V, True, BV != V)
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_p = tl.math.exp2(tl.dot(b_q, tl.trans(b_k)) * qk_scale - b_lse[:, None])  # (3) [BM, BN]
        if MASKED:  # (2)
            b_p = tl.where(offs_n[None, :] <= offs_m[:, None], b_p, 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v))  # dp_ij = do_i·v_j  [BM, BN]
        b_ds = b_p * (b_dp - b_delta[:, None])  # ds_ij = P_ij (dp_ij − delta_i)
        b_dq = tl.dot(b_ds.to(b_k.dtype), b_k, b_dq)  # dq_i += Σ_j ds_ij k_j (scale at the end)
    return b_dq


@triton.jit(do_not_specialize=["T", "TK"])
def _softmax_attention_chunk_bwd_dq_kernel(q, k, v, o, do, lse, dlse, delta, dq, dk, dv, H, T, TK, scale,
                                           K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                           BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                           CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
    """delta = Σ o·do − dlse (stored for the dk/dv kernel) and dq = scale·ds·k, one query block."""
    tl.static_assert(BM % BN == 0)  # the causal split falls on whole key blocks
    # -- map program -> (query block, batch, head); causal: the heaviest (last) blocks first
    i_m = tl.program_id(0)
    if CAUSAL:
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    start_m = i_m * BM
    offs_m = start_m + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    stride_q, stride_k, stride_v = H * K, H * K, H * V
    base_q = i_b.to(tl.int64) * T * H + i_h
    base_kv = i_b.to(tl.int64) * TK * H + i_h
    # -- load this block's q, do, lse once
    b_q = _load_tile(q + base_q * K + offs_m[:, None] * stride_q + offs_k[None, :], offs_m, T,
                     offs_k, K, True, BK != K)
    p_ov = base_q * V + offs_m[:, None] * stride_v + offs_v[None, :]  # o and do share a layout
    b_do = _load_tile(do + p_ov, offs_m, T, offs_v, V, True, BV != V)
    if UPCAST:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    p_row = i_bh.to(tl.int64) * T + offs_m
    b_lse = tl.load(lse + p_row, mask=offs_m < T, other=float("inf")) * LOG2E
    # -- delta_i = Σ_v o_iv·do_iv − dlse_i, the row term of ds; stored, the dk/dv kernel reads it
    b_o = _load_tile(o + p_ov, offs_m, T, offs_v, V, True, BV != V).to(tl.float32)
    b_dlse = tl.load(dlse + p_row, mask=offs_m < T, other=0.0)
    b_delta = tl.sum(b_o * b_do.to(tl.float32), 1) - b_dlse
    tl.store(delta + p_row, b_delta, mask=offs_m < T)
    p_k = k + base_kv * K + offs_n[:, None] * stride_k + offs_k[None, :]
    p_v = v + base_kv * V + offs_n[:, None] * stride_v + offs_v[None, :]
    qk_scale = scale * LOG2E
    b_dq = tl.zeros([BM, BK], tl.float32)  # fp32 accumulator
    # -- compute: the same split as the forward
    if CAUSAL:
        free_hi = start_m
        hi = tl.minimum(start_m + BM, TK)
    else:
        free_hi = TK
        hi = TK
    b_dq = _bwd_dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, 0, free_hi, TK,
                              stride_k, stride_v, qk_scale, K, V, BK, BV, BN, False, UPCAST)
    b_dq = _bwd_dq_key_blocks(b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, offs_m, free_hi, hi, TK,
                              stride_k, stride_v, qk_scale, K, V, BK, BV, BN, True, UPCAST)
    # -- store
    p_dq = dq + base_q * K + offs_m[:, None] * stride_q + offs_k[None, :]
    tl.store(p_dq, (b_dq * scale).to(dq.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_k[None, :] < K))


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _on_device(x: torch.Tensor):
    """Launch on the tensors' GPU, not the current one (a no-op on the CPU)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _softmax_attention_chunk_fwd(q, k, v, causal: bool, scale: float, tiles: Tiles | None = None,
                                 tma: bool | None = None):
    B, T, H, K = q.shape
    TK, V = k.shape[1], v.shape[-1]
    t = tiles or _tiles(K, V, q.dtype, q.device)  # `tiles`, `tma`: for tests and the sweep only
    tma = _use_tma(k, v, t) if tma is None else tma
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    k_arg, v_arg = _kv_descriptors(k, v, t) if tma else (k, v)
    with _on_device(q):
        _softmax_attention_chunk_fwd_kernel[(triton.cdiv(T, t.BM), B * H)](
            q, k_arg, v_arg, o, lse, H, T, TK, scale, K=K, V=V, BK=t.BK, BV=t.BV, BM=t.BM,
            BN=t.BN, CAUSAL=causal, UPCAST=INTERPRET, TMA=tma, num_warps=t.warps,
            num_stages=t.stages)
    return o, lse


def _softmax_attention_chunk_bwd(do, dlse, q, k, v, o, lse, causal: bool, scale: float):
    B, T, H, K = q.shape
    TK, V = k.shape[1], v.shape[-1]
    t = _tiles(K, V, q.dtype, q.device)
    delta = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with _on_device(q):
        # dq first: it also computes delta for every query row, which the dk/dv kernel reads
        _softmax_attention_chunk_bwd_dq_kernel[(triton.cdiv(T, t.BM2), B * H)](
            q, k, v, o, do, lse, dlse, delta, dq, dk, dv, H, T, TK, scale, K=K, V=V, BK=t.BK,
            BV=t.BV, BM=t.BM2, BN=t.BN2, CAUSAL=causal, UPCAST=INTERPRET, num_warps=t.bwd_warps,
            num_stages=t.bwd_stages)
        _softmax_attention_chunk_bwd_dkdv_kernel[(triton.cdiv(TK, t.BN1), B * H)](
            q, k, v, o, do, lse, dlse, delta, dq, dk, dv, H, T, TK, scale, K=K, V=V, BK=t.BK,
            BV=t.BV, BM=t.BM1, BN=t.BN1, CAUSAL=causal, UPCAST=INTERPRET, num_warps=t.bwd_warps,
            num_stages=t.bwd_stages)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.compile sees through them with the fakes) and autograd
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::softmax_attention_chunk_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, H, V], lse [B, H, T] fp32): head-first lse, as the kernels read it."""
    return _softmax_attention_chunk_fwd(q.contiguous(), k.contiguous(), v.contiguous(), causal, scale)


@_fwd_op.register_fake
def _(q, k, v, causal, scale):
    B, T, H, _ = q.shape
    return q.new_empty(B, T, H, v.shape[-1]), q.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("zoo::softmax_attention_chunk_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
            v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, causal: bool,
            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (x.contiguous() for x in (do, dlse, q, k, v, o, lse))
    return _softmax_attention_chunk_bwd(*args, causal, scale)


@_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    do = torch.zeros_like(o) if do is None else do
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv = _bwd_op(do, dlse, q, k, v, o, lse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# Public op and layer
# ------------------------------------------------------------------------------------------------
def _check_fast(q: torch.Tensor, v: torch.Tensor) -> None:
    check_device_and_dtype(q, "fast softmax attention", INTERPRET, zoo="zoo.softmax_attention")
    T, H, D = max(q.shape[1], v.shape[1]), q.shape[2], max(q.shape[-1], v.shape[-1])
    if T * H * D >= 2**31:  # offsets within one sequence are int32 in the kernels
        raise ValueError(f"one sequence of q or k, v holds T·H·D = {T * H * D} elements; the fast "
                         f"kernel takes fewer than 2**31 (got q {tuple(q.shape)}, v {tuple(v.shape)})")
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"the fast kernel takes head dims K, V <= {MAX_HEAD_DIM}, got q "
                         f"[B, T, H, K] = {tuple(q.shape)}, v [B, Tk, H, V] = {tuple(v.shape)}")


def softmax_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            causal: bool = True, scale: float | None = None,
                            return_lse: bool = False, chunk_size: int = 64):
    """zoo.softmax_attention.softmax_attention_chunk in Triton, with Triton backward kernels.

    Same arguments and results. `chunk_size` is checked and accepted for the same signature;
    the kernel's key block comes from the tile rule (results differ from the zoo's only by
    rounding). Gradients flow through o and, when returned, through lse.
    """
    scale, _ = zsa._prologue(q, k, v, causal, scale, chunk_size)
    _check_fast(q, v)
    if scale < 0:  # the kernels need scale >= 0; scale·q·k = (−scale)·(−q)·k
        q, scale = -q, -scale
    o, lse = _fwd_op(q, k, v, bool(causal), scale)
    return (o, lse.transpose(1, 2)) if return_lse else o  # lse [B, H, T] -> [B, T, H]


class SoftmaxAttention(zsa.SoftmaxAttention):
    """zoo.softmax_attention.SoftmaxAttention with the Triton chunk op (form="chunk", the
    default, prefill and decode alike); same parameters and state dict."""

    chunk_op = staticmethod(softmax_attention_chunk)


__all__ = ["softmax_attention_chunk", "SoftmaxAttention"]


# ------------------------------------------------------------------------------------------------
# Hopper section: TMA loads of k and v in the forward. The tensor-memory accelerator copies a
# whole [BN, D] box to shared memory in one instruction, with no per-thread address arithmetic
# and no registers spent on it, which is what the forward's inner loop is bound by on an H100.
# The same kernel and the same tests run it (under the interpreter too); only the loads differ.
# It needs sm_90+, a head dim that fills the box exactly (BK == K, BV == V: a box wider than D
# would read the next head) and 16-byte aligned rows; otherwise the pointer path runs.
# ------------------------------------------------------------------------------------------------
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4
    TensorDescriptor = None


def _use_tma(k: torch.Tensor, v: torch.Tensor, t: Tiles) -> bool:
    if TensorDescriptor is None or INTERPRET or not k.is_cuda:
        return False
    if torch.cuda.get_device_capability(k.device)[0] < 9:
        return False
    H, K, V = k.shape[2], k.shape[3], v.shape[3]
    rows_aligned = (H * K * k.element_size()) % 16 == 0 and (H * V * v.element_size()) % 16 == 0
    return t.BK == K and t.BV == V and rows_aligned and k.data_ptr() % 16 == 0 and v.data_ptr() % 16 == 0


def _kv_descriptors(k: torch.Tensor, v: torch.Tensor, t: Tiles):
    """k, v [B, Tk, H, D] contiguous, seen as [B·Tk, H·D]: a box [BN, D] at (b·Tk + j, h·D)."""
    B, TK, H, K = k.shape
    V = v.shape[-1]
    return (TensorDescriptor(k, [B * TK, H * K], [H * K, 1], [t.BN, t.BK]),
            TensorDescriptor(v, [B * TK, H * V], [H * V, 1], [t.BN, t.BV]))


# ------------------------------------------------------------------------------------------------
# Benchmark beside the kernel: `python -m fast.softmax_attention` on a GPU times the tile rule's
# forward against a few neighbouring tiles and against SDPA at the headline shape, and
# the first call (compilation included). The rule above should name the fastest correct row.
# ------------------------------------------------------------------------------------------------
def _sweep(B=4, T=8192, H=16, D=128, dtype=torch.bfloat16, causal=True):
    import time

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=dtype) for _ in range(3))
    start = time.perf_counter()
    o = softmax_attention_chunk(q, k, v, causal=causal)
    torch.cuda.synchronize()
    print(f"first call (compile included): {time.perf_counter() - start:.2f} s")
    flops = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200)  # noqa: E731
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        sdpa = lambda: F.scaled_dot_product_attention(  # noqa: E731
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        o_ref = sdpa().transpose(1, 2)
        ms_ref = bench(sdpa)
    print(f"B={B} T={T} H={H} D={D} {dtype} causal={causal}; error vs SDPA "
          f"{(o.float() - o_ref.float()).abs().max().item():.2e}")
    print(f"sdpa (flash)            {ms_ref:7.3f} ms  {flops / ms_ref * 1e-9:6.1f} TFLOP/s")
    rule = _tiles(D, D, dtype, q.device)
    configs = [(rule.BM, rule.BN, rule.warps, rule.stages), (128, 128, 8, 3), (128, 128, 8, 2),
               (128, 64, 8, 4), (128, 64, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3)]
    rule_tma = _use_tma(k, v, rule)
    for (BM, BN, warps, stages), tma in [(c, m) for c in configs for m in (True, False)]:
        t = rule._replace(BM=BM, BN=BN, warps=warps, stages=stages)
        fn = lambda: _softmax_attention_chunk_fwd(q, k, v, causal, D ** -0.5, t, tma)  # noqa: E731
        try:
            err = (fn()[0].float() - o_ref.float()).abs().max().item()
            ms = bench(fn)
        except Exception as e:  # e.g. more shared memory than the GPU has: report, go on
            print(f"BM={BM:3d} BN={BN:3d} w={warps} s={stages} tma={tma:d} failed: {type(e).__name__}: {e}")
            continue
        chosen = t == rule and tma == rule_tma
        print(f"BM={BM:3d} BN={BN:3d} w={warps} s={stages} tma={tma:d} {ms:7.3f} ms  "
              f"{flops / ms * 1e-9:6.1f} TFLOP/s  {ms_ref / ms:4.2f}x sdpa  err {err:.1e}"
              f"{'  <- rule' if chosen else ''}")


if __name__ == "__main__":
    _sweep()
    _sweep(causal=False)
    _sweep(D=64)
