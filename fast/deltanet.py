"""Triton mirror of zoo/deltanet.py (the delta rule); math, shapes and the layer's meaning there.

This file also holds the one chunkwise kernel set of the whole delta-rule family: the gated delta
rule S_t = e^{g_t}(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀ(s q_t). DeltaNet is the
gate-free case (USE_G = False: every gate line is compiled out), fast/gated_deltanet.py passes g,
and fast/deltaproduct.py runs it over T·n_h micro-steps. Zoo equation numbers below are those of
zoo/gated_deltanet.py (4): the chunk form; with g ≡ 0 they are zoo/deltanet.py's (4).

Kernel plan (chunk L = BT = 64 rows; Γ = chunk-local cumsum of g; X = (I + A)⁻¹):
  forward   1. _chunk_wy_fwd_kernel, grid (NT, B·H), parallel over chunks:
               A = strict_tril(diag(β) K Kᵀ ⊙ e^{Γ_i−Γ_j}); X by blocked forward substitution on
               16×16 blocks (fp32, exact dots); W = X diag(β e^Γ) K, U = X diag(β) V. Stores W, U
               (input dtype) and Γ (fp32).
            2. _chunk_state_fwd_kernel, grid (V/BV, B·H), sequential over chunks, S in fp32
               registers: V_new = U − W S; o = e^Γ ⊙ sQS + (sQKᵀ ⊙ D) V_new;
               S ← e^{Γ_L} S + (e^{Γ_L−Γ} ⊙ K)ᵀ V_new. The output is read on the way, so the
               per-chunk states are never written in the forward.
  backward  recomputes 1 (now also storing X) and 2 (now storing the chunk-entry states h and
            V_new instead of o), then
            3. _chunk_state_bwd_kernel, grid (V/BV, B·H), sequential over chunks in reverse:
               dV_new = (sQKᵀ⊙D)ᵀ dO + (e^{Γ_L−Γ}⊙K) dS,  dS ← e^{Γ_L} dS + (e^Γ⊙sQ)ᵀ dO − Wᵀ dV_new.
            4. _chunk_bwd_dqkw_kernel, grid (K/BKS, NT, B·H): dq (final), the dk and dw terms that
               come through the state and the output, and the gate terms of dΓ.
            5. _chunk_wy_bwd_kernel, grid (NT, B·H): back through W, U and X = (I + A)⁻¹
               (dA = −Xᵀ dX Xᵀ): dk (final), dv, dβ, and dg = reverse cumsum of dΓ in the chunk.
  Stored by the forward for the backward: only the inputs (q, k, v, g, β, h0). Recomputed in
  the backward: W, U, X, Γ, the chunk-entry states h [B, NT, H, K, V] and V_new.
  decode    _recurrent_fwd_kernel, grid (V/BV, B·H): token loop with S in registers (fla's
            fused_recurrent scheme), n_h micro-steps per token for DeltaProduct. Its gradient is the
            chunk backward (same function), so the recurrent op has forward and backward.

Tile rule (head dims only; T is never a compile key: it is in do_not_specialize):
  BT = 64 always (the chunk_size option is checked and accepted; the result does not depend on it
  beyond rounding). BK = next power of two ≥ K, whole K in one tile (K, V ≤ 256). BV = 32 for the
  sequential kernels when K ≥ 128 (S is a [BK, BV] fp32 register tile: 4K floats), else 64;
  num_warps 4 (8 for the WY backward, which holds [BT, BK] fp32 tiles), num_stages 2 (Hopper:
  loads of chunk n+1 overlap the dots of chunk n in the sequential loops).

Numerics: every accumulator is fp32 (the state, the dots' outputs). The 16×16 inverses and
their merges run in fp32 with exact (ieee) dots: the solve is the precision-sensitive step. Other
dots take operands in the input dtype (bf16/fp16 tensor cores; fp32 inputs use exact fp32 dots,
so fp32 results match the zoo to rounding). The final state is fp32.

Cost (per head; N = T/BT chunks, D = K = V):  FLOPs (1 FMA = 2) forward ≈ T·(6·BT·D + 6·D² +
  2·BT²/3·…) — see _flops() — and bytes: forward reads q, k, v, β, g once in step 2 and k, v in
  step 1, writes W, U once and reads them once, writes o: ≈ (3+2+2+2+1)·T·D·elt. The floor
  (each input read once, o written once) is 4·T·D·elt per head: the forward moves ≈ 2.5× the floor.

Legend: i_ program ids · p_ pointers · b_ on-chip blocks (b_S, b_A, b_X, b_w, b_u, b_v_new ...
names as in the zoo) · offs_ index vectors · mask_ masks · BT BK BV tile sizes · NT number of
chunks · h0/ht initial/final state · DT the input dtype inside a kernel.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

import zoo.deltanet as zoo_deltanet

CHUNK = 64  # BT: rows per chunk; 4 solve blocks of 16 (tl.dot's smallest tile side)
SOLVE_BLOCK = 16  # the diagonal blocks inverted by forward substitution
MAX_HEAD_DIM = 256  # whole K (and V in step 1) in one register tile
NUM_STAGES = 2


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _tiles(K: int, V: int) -> dict:
    """The tile rule: a function of the head dims only (never of B or T)."""
    BK, BVF = _pow2(K), _pow2(V)
    return dict(BK=BK, BVF=BVF, BV=min(BVF, 32 if BK >= 128 else 64), BKS=min(BK, 64))


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 dots (the zoo's numbers). 16-bit inputs: operands are 16-bit, so
    tf32 only touches the fp32-operand dots of the WY backward."""
    return "ieee" if dtype == torch.float32 else "tf32"


# ================================================================================================
# Kernels
# ================================================================================================
@triton.jit
def _load_tile(p, offs_t, mask_t, stride_t, offs_d, mask_d):
    """Rows offs_t (stride stride_t) and columns offs_d of a row-major tile; zeros outside."""
    return tl.load(p + offs_t[:, None] * stride_t + offs_d[None, :],
                   mask=mask_t[:, None] & mask_d[None, :], other=0.)


@triton.jit
def _store_tile(p, x, offs_t, mask_t, stride_t, offs_d, mask_d):
    tl.store(p + offs_t[:, None] * stride_t + offs_d[None, :], x.to(p.dtype.element_ty),
             mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def _invert_unit_lower(b_a, BS: tl.constexpr):
    """(I + a)⁻¹ for a strictly lower-triangular [BS, BS] block, by forward substitution.

    Y = (I + a)⁻¹ − I satisfies Y_i = −a_i − Σ_{j<i} a_ij Y_j (row i from the rows above it).
    Row i of the running block still holds −a_i when its turn comes, and its entries j ≥ i are
    zero, so one masked vector-matrix product finishes it."""
    offs = tl.arange(0, BS)
    b_y = -b_a
    for i in range(1, BS):
        b_row = tl.sum(tl.where(offs[:, None] == i, b_y, 0.), 0)  # −a_i  [BS]
        b_row = b_row + tl.sum(b_row[:, None] * b_y, 0)  # −a_i − Σ_j a_ij Y_j  [BS]
        b_y = tl.where(offs[:, None] == i, b_row[None, :], b_y)
    return b_y + tl.where(offs[:, None] == offs[None, :], 1., 0.)


@triton.jit
def _kkt_block(b_ki, b_kj, b_bi, b_gi, b_gj, DIAG: tl.constexpr, USE_G: tl.constexpr,
               BS: tl.constexpr, PREC: tl.constexpr):
    """One 16×16 block of A = diag(β) K Kᵀ ⊙ e^{Γ_i − Γ_j}, strictly lower when DIAG."""
    b_a = tl.dot(b_ki, tl.trans(b_kj), input_precision=PREC) * b_bi[:, None]  # [BS, BS]
    offs = tl.arange(0, BS)
    if DIAG:
        mask = offs[:, None] > offs[None, :]
        if USE_G:
            b_a = b_a * tl.exp(tl.where(mask, b_gi[:, None] - b_gj[None, :], float('-inf')))
        b_a = tl.where(mask, b_a, 0.)
    elif USE_G:
        b_a = b_a * tl.exp(b_gi[:, None] - b_gj[None, :])  # rows after columns: Γ_i − Γ_j ≤ 0
    return b_a


@triton.jit
def _wy_rows(b_X0, b_X1, b_X2, b_X3, b_y0, b_y1, b_y2, b_y3, N: tl.constexpr, DT: tl.constexpr,
             PREC: tl.constexpr):
    """Row block N of X @ Y for the block-lower X (blocks X_N0..X_NN) and Y in 16-row slabs."""
    b_o = tl.dot(b_X0.to(DT), b_y0.to(DT), input_precision=PREC)
    if N >= 1:
        b_o += tl.dot(b_X1.to(DT), b_y1.to(DT), input_precision=PREC)
    if N >= 2:
        b_o += tl.dot(b_X2.to(DT), b_y2.to(DT), input_precision=PREC)
    if N >= 3:
        b_o += tl.dot(b_X3.to(DT), b_y3.to(DT), input_precision=PREC)
    return b_o


@triton.jit(do_not_specialize=["T"])
def _chunk_wy_fwd_kernel(k, v, beta, g, w, u, X, gam, T, H: tl.constexpr, K: tl.constexpr,
                         V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
                         USE_G: tl.constexpr, STORE_X: tl.constexpr, PREC: tl.constexpr):
    """Step 1: X = (I + A)⁻¹, W = X diag(β e^Γ) K, U = X diag(β) V for one chunk (zoo (4))."""
    # -------------------------------------------------------------- map program -> chunk, head
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    BS: tl.constexpr = 16
    DT = k.dtype.element_ty
    t0 = i_t * BT
    offs_s = tl.arange(0, BS)
    offs_k, offs_v = tl.arange(0, BK), tl.arange(0, BVF)
    mask_k, mask_v = offs_k < K, offs_v < V
    p_k, p_w = k + i_b * T * H * K + i_h * K, w + i_b * T * H * K + i_h * K
    p_v, p_u = v + i_b * T * H * V + i_h * V, u + i_b * T * H * V + i_h * V
    p_beta, p_g, p_gam = beta + i_b * T * H + i_h, g + i_b * T * H + i_h, gam + i_b * T * H + i_h
    # 16-row slabs r = 0..3 of the chunk
    offs_t0, offs_t1, offs_t2, offs_t3 = t0 + offs_s, t0 + BS + offs_s, t0 + 2 * BS + offs_s, t0 + 3 * BS + offs_s
    mask_t0, mask_t1, mask_t2, mask_t3 = offs_t0 < T, offs_t1 < T, offs_t2 < T, offs_t3 < T

    # -------------------------------------------------------------- load k, β, and Γ
    b_k0 = _load_tile(p_k, offs_t0, mask_t0, H * K, offs_k, mask_k)  # [BS, BK]
    b_k1 = _load_tile(p_k, offs_t1, mask_t1, H * K, offs_k, mask_k)
    b_k2 = _load_tile(p_k, offs_t2, mask_t2, H * K, offs_k, mask_k)
    b_k3 = _load_tile(p_k, offs_t3, mask_t3, H * K, offs_k, mask_k)
    b_b0 = tl.load(p_beta + offs_t0 * H, mask=mask_t0, other=0.).to(tl.float32)  # [BS]
    b_b1 = tl.load(p_beta + offs_t1 * H, mask=mask_t1, other=0.).to(tl.float32)
    b_b2 = tl.load(p_beta + offs_t2 * H, mask=mask_t2, other=0.).to(tl.float32)
    b_b3 = tl.load(p_beta + offs_t3 * H, mask=mask_t3, other=0.).to(tl.float32)
    b_g0 = tl.zeros([BS], dtype=tl.float32)
    b_g1, b_g2, b_g3 = b_g0, b_g0, b_g0
    if USE_G:  # Γ = cumsum of g inside the chunk; padded rows have g = 0, so Γ stays flat there
        b_g0 = tl.cumsum(tl.load(p_g + offs_t0 * H, mask=mask_t0, other=0.).to(tl.float32), 0)
        b_g1 = tl.cumsum(tl.load(p_g + offs_t1 * H, mask=mask_t1, other=0.).to(tl.float32), 0) + tl.sum(tl.where(offs_s == BS - 1, b_g0, 0.), 0)
        b_g2 = tl.cumsum(tl.load(p_g + offs_t2 * H, mask=mask_t2, other=0.).to(tl.float32), 0) + tl.sum(tl.where(offs_s == BS - 1, b_g1, 0.), 0)
        b_g3 = tl.cumsum(tl.load(p_g + offs_t3 * H, mask=mask_t3, other=0.).to(tl.float32), 0) + tl.sum(tl.where(offs_s == BS - 1, b_g2, 0.), 0)
        tl.store(p_gam + offs_t0 * H, b_g0, mask=mask_t0)
        tl.store(p_gam + offs_t1 * H, b_g1, mask=mask_t1)
        tl.store(p_gam + offs_t2 * H, b_g2, mask=mask_t2)
        tl.store(p_gam + offs_t3 * H, b_g3, mask=mask_t3)

    # -------------------------------------------------------------- (4) A, block by block
    b_A00 = _kkt_block(b_k0, b_k0, b_b0, b_g0, b_g0, True, USE_G, BS, PREC)
    b_A11 = _kkt_block(b_k1, b_k1, b_b1, b_g1, b_g1, True, USE_G, BS, PREC)
    b_A22 = _kkt_block(b_k2, b_k2, b_b2, b_g2, b_g2, True, USE_G, BS, PREC)
    b_A33 = _kkt_block(b_k3, b_k3, b_b3, b_g3, b_g3, True, USE_G, BS, PREC)
    b_A10 = _kkt_block(b_k1, b_k0, b_b1, b_g1, b_g0, False, USE_G, BS, PREC)
    b_A20 = _kkt_block(b_k2, b_k0, b_b2, b_g2, b_g0, False, USE_G, BS, PREC)
    b_A21 = _kkt_block(b_k2, b_k1, b_b2, b_g2, b_g1, False, USE_G, BS, PREC)
    b_A30 = _kkt_block(b_k3, b_k0, b_b3, b_g3, b_g0, False, USE_G, BS, PREC)
    b_A31 = _kkt_block(b_k3, b_k1, b_b3, b_g3, b_g1, False, USE_G, BS, PREC)
    b_A32 = _kkt_block(b_k3, b_k2, b_b3, b_g3, b_g2, False, USE_G, BS, PREC)

    # -------------------------------------------------------------- X = (I + A)⁻¹, blocked
    # Diagonal blocks by forward substitution; then block row r of (I + A) X = I gives
    # X_rj = −X_rr Σ_{j ≤ m < r} A_rm X_mj, one block diagonal further out at a time.
    b_X00 = _invert_unit_lower(b_A00, BS)
    b_X11 = _invert_unit_lower(b_A11, BS)
    b_X22 = _invert_unit_lower(b_A22, BS)
    b_X33 = _invert_unit_lower(b_A33, BS)
    b_X10 = -tl.dot(b_X11, tl.dot(b_A10, b_X00, input_precision="ieee"), input_precision="ieee")
    b_X21 = -tl.dot(b_X22, tl.dot(b_A21, b_X11, input_precision="ieee"), input_precision="ieee")
    b_X32 = -tl.dot(b_X33, tl.dot(b_A32, b_X22, input_precision="ieee"), input_precision="ieee")
    b_X20 = -tl.dot(b_X22, tl.dot(b_A20, b_X00, input_precision="ieee")
                    + tl.dot(b_A21, b_X10, input_precision="ieee"), input_precision="ieee")
    b_X31 = -tl.dot(b_X33, tl.dot(b_A31, b_X11, input_precision="ieee")
                    + tl.dot(b_A32, b_X21, input_precision="ieee"), input_precision="ieee")
    b_X30 = -tl.dot(b_X33, tl.dot(b_A30, b_X00, input_precision="ieee")
                    + tl.dot(b_A31, b_X10, input_precision="ieee")
                    + tl.dot(b_A32, b_X20, input_precision="ieee"), input_precision="ieee")
    if STORE_X:  # for the backward; the blocks above the diagonal are never read
        p_X = X + i_b * T * H * BT + i_h * BT
        mask_s = offs_s < BS
        _store_tile(p_X, b_X00, offs_t0, mask_t0, H * BT, offs_s, mask_s)
        _store_tile(p_X, b_X10, offs_t1, mask_t1, H * BT, offs_s, mask_s)
        _store_tile(p_X, b_X11, offs_t1, mask_t1, H * BT, BS + offs_s, mask_s)
        _store_tile(p_X, b_X20, offs_t2, mask_t2, H * BT, offs_s, mask_s)
        _store_tile(p_X, b_X21, offs_t2, mask_t2, H * BT, BS + offs_s, mask_s)
        _store_tile(p_X, b_X22, offs_t2, mask_t2, H * BT, 2 * BS + offs_s, mask_s)
        _store_tile(p_X, b_X30, offs_t3, mask_t3, H * BT, offs_s, mask_s)
        _store_tile(p_X, b_X31, offs_t3, mask_t3, H * BT, BS + offs_s, mask_s)
        _store_tile(p_X, b_X32, offs_t3, mask_t3, H * BT, 2 * BS + offs_s, mask_s)
        _store_tile(p_X, b_X33, offs_t3, mask_t3, H * BT, 3 * BS + offs_s, mask_s)

    # -------------------------------------------------------------- (4) W = X diag(β e^Γ) K
    b_c0, b_c1, b_c2, b_c3 = b_b0, b_b1, b_b2, b_b3
    if USE_G:
        b_c0, b_c1, b_c2, b_c3 = b_b0 * tl.exp(b_g0), b_b1 * tl.exp(b_g1), b_b2 * tl.exp(b_g2), b_b3 * tl.exp(b_g3)
    b_y0, b_y1 = b_k0.to(tl.float32) * b_c0[:, None], b_k1.to(tl.float32) * b_c1[:, None]
    b_y2, b_y3 = b_k2.to(tl.float32) * b_c2[:, None], b_k3.to(tl.float32) * b_c3[:, None]
    _store_tile(p_w, _wy_rows(b_X00, b_X00, b_X00, b_X00, b_y0, b_y1, b_y2, b_y3, 0, DT, PREC), offs_t0, mask_t0, H * K, offs_k, mask_k)
    _store_tile(p_w, _wy_rows(b_X10, b_X11, b_X11, b_X11, b_y0, b_y1, b_y2, b_y3, 1, DT, PREC), offs_t1, mask_t1, H * K, offs_k, mask_k)
    _store_tile(p_w, _wy_rows(b_X20, b_X21, b_X22, b_X22, b_y0, b_y1, b_y2, b_y3, 2, DT, PREC), offs_t2, mask_t2, H * K, offs_k, mask_k)
    _store_tile(p_w, _wy_rows(b_X30, b_X31, b_X32, b_X33, b_y0, b_y1, b_y2, b_y3, 3, DT, PREC), offs_t3, mask_t3, H * K, offs_k, mask_k)

    # -------------------------------------------------------------- (4) U = X diag(β) V
    b_y0 = _load_tile(p_v, offs_t0, mask_t0, H * V, offs_v, mask_v).to(tl.float32) * b_b0[:, None]
    b_y1 = _load_tile(p_v, offs_t1, mask_t1, H * V, offs_v, mask_v).to(tl.float32) * b_b1[:, None]
    b_y2 = _load_tile(p_v, offs_t2, mask_t2, H * V, offs_v, mask_v).to(tl.float32) * b_b2[:, None]
    b_y3 = _load_tile(p_v, offs_t3, mask_t3, H * V, offs_v, mask_v).to(tl.float32) * b_b3[:, None]
    _store_tile(p_u, _wy_rows(b_X00, b_X00, b_X00, b_X00, b_y0, b_y1, b_y2, b_y3, 0, DT, PREC), offs_t0, mask_t0, H * V, offs_v, mask_v)
    _store_tile(p_u, _wy_rows(b_X10, b_X11, b_X11, b_X11, b_y0, b_y1, b_y2, b_y3, 1, DT, PREC), offs_t1, mask_t1, H * V, offs_v, mask_v)
    _store_tile(p_u, _wy_rows(b_X20, b_X21, b_X22, b_X22, b_y0, b_y1, b_y2, b_y3, 2, DT, PREC), offs_t2, mask_t2, H * V, offs_v, mask_v)
    _store_tile(p_u, _wy_rows(b_X30, b_X31, b_X32, b_X33, b_y0, b_y1, b_y2, b_y3, 3, DT, PREC), offs_t3, mask_t3, H * V, offs_v, mask_v)


@triton.jit(do_not_specialize=["T"])
def _chunk_state_fwd_kernel(q, k, w, u, gam, h0, o, ht, h, v_new, scale, T, H: tl.constexpr,
                            K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr, USE_G: tl.constexpr, USE_H0: tl.constexpr,
                            COMPUTE_O: tl.constexpr, STORE_H: tl.constexpr, PREC: tl.constexpr):
    """Step 2: V_new = U − W S; o = e^Γ⊙sQS + (sQKᵀ⊙D)V_new; S ← e^{Γ_L}S + (e^{Γ_L−Γ}⊙K)ᵀV_new."""
    # -------------------------------------------------------------- map program -> (V tile, head)
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    DT = k.dtype.element_ty
    NT = tl.cdiv(T, BT)
    offs_r, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    p_q, p_k, p_w = (x + i_b * T * H * K + i_h * K for x in (q, k, w))
    p_u, p_o, p_vn = (x + i_b * T * H * V + i_h * V for x in (u, o, v_new))
    p_gam = gam + i_b * T * H + i_h
    mask_kv = mask_k[:, None] & mask_v[None, :]
    offs_kv = offs_k[:, None] * V + offs_v[None, :]
    # -------------------------------------------------------------- the state, fp32 registers
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh.to(tl.int64) * K * V + offs_kv, mask=mask_kv, other=0.)
    for i_t in range(NT):
        t0 = i_t * BT
        offs_t = t0 + offs_r
        mask_t = offs_t < T
        if STORE_H:  # the state entering chunk i_t, for the backward
            p_h = h + ((i_b * NT + i_t) * H + i_h) * K * V
            tl.store(p_h + offs_kv, b_S.to(p_h.dtype.element_ty), mask=mask_kv)
        # ---------------------------------------------------------- (4) V_new = U − W S
        b_w = _load_tile(p_w, offs_t, mask_t, H * K, offs_k, mask_k)  # [BT, BK]
        b_u = _load_tile(p_u, offs_t, mask_t, H * V, offs_v, mask_v).to(tl.float32)  # [BT, BV]
        b_v_new = b_u - tl.dot(b_w, b_S.to(DT), input_precision=PREC)  # [BT, BV]
        if STORE_H:
            _store_tile(p_vn, b_v_new, offs_t, mask_t, H * V, offs_v, mask_v)
        b_k = _load_tile(p_k, offs_t, mask_t, H * K, offs_k, mask_k)  # [BT, BK]
        if USE_G:
            b_g = tl.load(p_gam + offs_t * H, mask=mask_t, other=0.)  # Γ  [BT]
            b_g_last = tl.load(p_gam + (tl.minimum(t0 + BT, T) - 1) * H)  # Γ_L
        # ---------------------------------------------------------- (4) o = e^Γ⊙sQS + (sQKᵀ⊙D)V_new
        if COMPUTE_O:
            b_q = _load_tile(p_q, offs_t, mask_t, H * K, offs_k, mask_k)  # [BT, BK]
            b_o = tl.dot(b_q, b_S.to(DT), input_precision=PREC)  # [BT, BV]
            b_A = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)  # QKᵀ  [BT, BT]
            mask_c = (offs_r[:, None] >= offs_r[None, :]) & mask_t[:, None]  # causal, diag incl.
            if USE_G:
                b_o = b_o * tl.exp(b_g)[:, None]
                b_A = b_A * tl.exp(tl.where(mask_c, b_g[:, None] - b_g[None, :], float('-inf')))
            b_A = tl.where(mask_c, b_A, 0.)
            b_o += tl.dot(b_A.to(DT), b_v_new.to(DT), input_precision=PREC)
            _store_tile(p_o, b_o * scale, offs_t, mask_t, H * V, offs_v, mask_v)
        # ---------------------------------------------------------- (4) S ← e^{Γ_L}S + (e^{Γ_L−Γ}⊙K)ᵀV_new
        if USE_G:
            b_v_new = b_v_new * tl.exp(b_g_last - b_g)[:, None]
            b_S = b_S * tl.exp(b_g_last)
        b_S += tl.dot(tl.trans(b_k), b_v_new.to(DT), input_precision=PREC)
    tl.store(ht + i_bh.to(tl.int64) * K * V + offs_kv, b_S, mask=mask_kv)


@triton.jit(do_not_specialize=["T"])
def _chunk_state_bwd_kernel(q, k, w, gam, do, dht, dh, dv_new, dh0, scale, T, H: tl.constexpr,
                            K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                            PREC: tl.constexpr):
    """Step 3, chunks in reverse: dV_new = (sQKᵀ⊙D)ᵀdO + (e^{Γ_L−Γ}⊙K) dS;
    dS ← e^{Γ_L} dS + (e^Γ⊙sQ)ᵀ dO − Wᵀ dV_new. dS is the gradient of the state leaving the chunk."""
    # -------------------------------------------------------------- map program -> (V tile, head)
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    DT = k.dtype.element_ty
    NT = tl.cdiv(T, BT)
    offs_r, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    p_q, p_k, p_w = (x + i_b * T * H * K + i_h * K for x in (q, k, w))
    p_do, p_dvn = (x + i_b * T * H * V + i_h * V for x in (do, dv_new))
    p_gam = gam + i_b * T * H + i_h
    mask_kv = mask_k[:, None] & mask_v[None, :]
    offs_kv = offs_k[:, None] * V + offs_v[None, :]
    b_dS = tl.zeros([BK, BV], dtype=tl.float32)  # fp32 accumulator
    if USE_DHT:
        b_dS += tl.load(dht + i_bh.to(tl.int64) * K * V + offs_kv, mask=mask_kv, other=0.)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        t0 = i_t * BT
        offs_t = t0 + offs_r
        mask_t = offs_t < T
        p_dh = dh + ((i_b * NT + i_t) * H + i_h) * K * V
        tl.store(p_dh + offs_kv, b_dS.to(p_dh.dtype.element_ty), mask=mask_kv)
        # ---------------------------------------------------------- load
        b_q = _load_tile(p_q, offs_t, mask_t, H * K, offs_k, mask_k)  # [BT, BK]
        b_k = _load_tile(p_k, offs_t, mask_t, H * K, offs_k, mask_k)
        b_w = _load_tile(p_w, offs_t, mask_t, H * K, offs_k, mask_k)
        b_do = _load_tile(p_do, offs_t, mask_t, H * V, offs_v, mask_v)  # [BT, BV]
        # ---------------------------------------------------------- dV_new
        b_A = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale  # sQKᵀ  [BT, BT]
        mask_c = (offs_r[:, None] >= offs_r[None, :]) & mask_t[:, None]
        b_qs = b_q.to(tl.float32) * scale  # sQ  [BT, BK]
        b_dSk = tl.dot(b_k, b_dS.to(DT), input_precision=PREC)  # K dS  [BT, BV]
        if USE_G:
            b_g = tl.load(p_gam + offs_t * H, mask=mask_t, other=0.)
            b_g_last = tl.load(p_gam + (tl.minimum(t0 + BT, T) - 1) * H)
            b_A = b_A * tl.exp(tl.where(mask_c, b_g[:, None] - b_g[None, :], float('-inf')))
            b_dSk = b_dSk * tl.exp(b_g_last - b_g)[:, None]
            b_qs = b_qs * tl.exp(b_g)[:, None]
        b_A = tl.where(mask_c, b_A, 0.)
        b_dv = tl.dot(tl.trans(b_A).to(DT), b_do, input_precision=PREC) + b_dSk  # [BT, BV]
        _store_tile(p_dvn, b_dv, offs_t, mask_t, H * V, offs_v, mask_v)
        # ---------------------------------------------------------- dS of the state entering the chunk
        if USE_G:
            b_dS = b_dS * tl.exp(b_g_last)
        b_dS += tl.dot(tl.trans(b_qs).to(DT), b_do, input_precision=PREC)
        b_dS -= tl.dot(tl.trans(b_w), b_dv.to(DT), input_precision=PREC)
    tl.store(dh0 + i_bh.to(tl.int64) * K * V + offs_kv, b_dS, mask=mask_kv)


@triton.jit(do_not_specialize=["T"])
def _chunk_bwd_dqkw_kernel(q, k, gam, h, dh, v_new, do, dv_new, dq, dk, dw, dgam, scale, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BKS: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr,
                           PREC: tl.constexpr):
    """Step 4, one K slice of one chunk: dq = s(e^Γ⊙dO Sᵀ + dR K), dk = s dRᵀQ + e^{Γ_L−Γ}⊙V_new dS_outᵀ,
    dw = −dV_new Sᵀ, with dR = (dO V_newᵀ) ⊙ D; and this slice's share of dΓ."""
    # -------------------------------------------------------------- map program -> (K slice, chunk, head)
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    DT = k.dtype.element_ty
    NT = tl.cdiv(T, BT)
    t0 = i_t * BT
    offs_r = tl.arange(0, BT)
    offs_t = t0 + offs_r
    mask_t = offs_t < T
    offs_k = i_k * BKS + tl.arange(0, BKS)
    mask_k = offs_k < K
    p_q, p_k, p_dq, p_dk, p_dw = (x + i_b * T * H * K + i_h * K for x in (q, k, dq, dk, dw))
    p_vn, p_do, p_dvn = (x + i_b * T * H * V + i_h * V for x in (v_new, do, dv_new))
    p_h, p_dh = (x + ((i_b * NT + i_t) * H + i_h) * K * V for x in (h, dh))
    # -------------------------------------------------------------- loop over V tiles (fp32 accumulators)
    b_dq = tl.zeros([BT, BKS], dtype=tl.float32)  # dO Sᵀ
    b_dkb = tl.zeros([BT, BKS], dtype=tl.float32)  # V_new dS_outᵀ
    b_dw = tl.zeros([BT, BKS], dtype=tl.float32)  # dV_new Sᵀ
    b_dP = tl.zeros([BT, BT], dtype=tl.float32)  # dO V_newᵀ
    b_dSS = tl.zeros([BKS], dtype=tl.float32)  # Σ_v S ⊙ dS_out, for the chunk decay e^{Γ_L}
    for i_v in range(tl.cdiv(V, BV)):
        offs_v = i_v * BV + tl.arange(0, BV)
        mask_v = offs_v < V
        b_h = _load_tile(p_h, offs_k, mask_k, V, offs_v, mask_v)  # S  [BKS, BV]
        b_dh = _load_tile(p_dh, offs_k, mask_k, V, offs_v, mask_v)  # dS_out  [BKS, BV]
        b_vn = _load_tile(p_vn, offs_t, mask_t, H * V, offs_v, mask_v)  # [BT, BV]
        b_do = _load_tile(p_do, offs_t, mask_t, H * V, offs_v, mask_v)
        b_dvn = _load_tile(p_dvn, offs_t, mask_t, H * V, offs_v, mask_v)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dkb += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw += tl.dot(b_dvn, tl.trans(b_h), input_precision=PREC)
        b_dP += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        if USE_G:
            b_dSS += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 1)
    # -------------------------------------------------------------- intra-chunk terms
    b_q = _load_tile(p_q, offs_t, mask_t, H * K, offs_k, mask_k)  # [BT, BKS]
    b_k = _load_tile(p_k, offs_t, mask_t, H * K, offs_k, mask_k)
    mask_c = (offs_r[:, None] >= offs_r[None, :]) & mask_t[:, None]
    if USE_G:
        p_gam = gam + i_b * T * H + i_h
        b_g = tl.load(p_gam + offs_t * H, mask=mask_t, other=0.)
        t_last = tl.minimum(t0 + BT, T) - 1
        b_g_last = tl.load(p_gam + t_last * H)
        b_dR = b_dP * tl.exp(tl.where(mask_c, b_g[:, None] - b_g[None, :], float('-inf')))
    else:
        b_dR = b_dP
    b_dR = tl.where(mask_c, b_dR, 0.)  # dL/d(sQKᵀ)  [BT, BT]
    b_dq_inter = b_dq
    if USE_G:
        b_dq_inter = b_dq * tl.exp(b_g)[:, None]
    b_dq_out = (b_dq_inter + tl.dot(b_dR.to(DT), b_k, input_precision=PREC)) * scale
    _store_tile(p_dq, b_dq_out, offs_t, mask_t, H * K, offs_k, mask_k)
    b_dk_out = tl.dot(tl.trans(b_dR).to(DT), b_q, input_precision=PREC) * scale
    if USE_G:
        b_dk_out += b_dkb * tl.exp(b_g_last - b_g)[:, None]
    else:
        b_dk_out += b_dkb
    _store_tile(p_dk, b_dk_out, offs_t, mask_t, H * K, offs_k, mask_k)
    _store_tile(p_dw, -b_dw, offs_t, mask_t, H * K, offs_k, mask_k)
    # -------------------------------------------------------------- this slice's share of dΓ
    if USE_G:
        b_qf, b_kf = b_q.to(tl.float32), b_k.to(tl.float32)
        b_Y = b_dR * tl.dot(b_qf, tl.trans(b_kf), input_precision="ieee") * scale  # dR ⊙ R
        b_kdk = tl.sum(b_kf * b_dkb, 1) * tl.exp(b_g_last - b_g)  # k̄·dk̄ per row  [BT]
        b_dg = scale * tl.exp(b_g) * tl.sum(b_qf * b_dq, 1) + tl.sum(b_Y, 1) - tl.sum(b_Y, 0) - b_kdk
        b_dg += tl.where(offs_t == t_last, tl.sum(b_kdk, 0) + tl.exp(b_g_last) * tl.sum(b_dSS, 0), 0.)
        p_dgam = dgam + i_k.to(tl.int64) * tl.num_programs(2) * T + i_b * T * H + i_h  # [NK, B, T, H]
        tl.store(p_dgam + offs_t * H, b_dg, mask=mask_t)


@triton.jit(do_not_specialize=["T"])
def _chunk_wy_bwd_kernel(k, v, beta, gam, X, dw, dv_new, dk_in, dgam, dk, dv, dbeta, dg, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                         BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
                         USE_G: tl.constexpr, PREC: tl.constexpr):
    """Step 5: back through W = X diag(β e^Γ) K, U = X diag(β) V and X = (I + A)⁻¹ (dA = −Xᵀ dX Xᵀ)."""
    # -------------------------------------------------------------- map program -> (chunk, head)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    t0 = i_t * BT
    offs_r = tl.arange(0, BT)
    offs_t = t0 + offs_r
    mask_t = offs_t < T
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    p_k, p_dw, p_dk_in, p_dk = (x + i_b * T * H * K + i_h * K for x in (k, dw, dk_in, dk))
    p_v, p_du, p_dv = (x + i_b * T * H * V + i_h * V for x in (v, dv_new, dv))
    p_X = X + i_b * T * H * BT + i_h * BT
    o_bh = i_b * T * H + i_h
    # -------------------------------------------------------------- load X, β, Γ, k, dw
    mask_low = offs_r[:, None] >= offs_r[None, :]
    b_X = tl.load(p_X + offs_t[:, None] * (H * BT) + offs_r[None, :], mask=mask_low & mask_t[:, None],
                  other=0.)  # [BT, BT]
    b_beta = tl.load(beta + o_bh + offs_t * H, mask=mask_t, other=0.).to(tl.float32)
    b_bg = b_beta  # β e^Γ
    if USE_G:
        b_g = tl.load(gam + o_bh + offs_t * H, mask=mask_t, other=0.)
        b_bg = b_beta * tl.exp(b_g)
    b_k = _load_tile(p_k, offs_t, mask_t, H * K, offs_k, mask_k).to(tl.float32)  # [BT, BK]
    b_dw = _load_tile(p_dw, offs_t, mask_t, H * K, offs_k, mask_k)  # fp32  [BT, BK]
    # -------------------------------------------------------------- W = X (β e^Γ ⊙ K)
    b_dX = tl.dot(b_dw, tl.trans(b_k * b_bg[:, None]), input_precision=PREC)  # dW (β e^Γ K)ᵀ  [BT, BT]
    b_dB = tl.dot(tl.trans(b_X), b_dw, input_precision=PREC)  # Xᵀ dW  [BT, BK]
    b_dk = tl.load(p_dk_in + offs_t[:, None] * (H * K) + offs_k[None, :],
                   mask=mask_t[:, None] & mask_k[None, :], other=0.) + b_dB * b_bg[:, None]
    b_kdB = tl.sum(b_k * b_dB, 1)  # [BT]
    b_dbeta = b_kdB  # dβ = e^Γ (k·dB)
    if USE_G:
        b_dbeta = b_kdB * tl.exp(b_g)
        b_dgam = b_bg * b_kdB  # dΓ = β e^Γ (k·dB)
    # -------------------------------------------------------------- U = X (β ⊙ V), tile by tile
    for i_v in range(tl.cdiv(V, BV)):
        offs_v = i_v * BV + tl.arange(0, BV)
        mask_v = offs_v < V
        b_v = _load_tile(p_v, offs_t, mask_t, H * V, offs_v, mask_v).to(tl.float32)  # [BT, BV]
        b_du = _load_tile(p_du, offs_t, mask_t, H * V, offs_v, mask_v).to(tl.float32)
        b_dX += tl.dot(b_du, tl.trans(b_v * b_beta[:, None]), input_precision=PREC)
        b_dC = tl.dot(tl.trans(b_X), b_du, input_precision=PREC)  # Xᵀ dU  [BT, BV]
        _store_tile(p_dv, b_dC * b_beta[:, None], offs_t, mask_t, H * V, offs_v, mask_v)
        b_dbeta += tl.sum(b_v * b_dC, 1)
    # -------------------------------------------------------------- X = (I + A)⁻¹: dA = −Xᵀ dX Xᵀ
    mask_s = (offs_r[:, None] > offs_r[None, :]) & mask_t[:, None]
    b_dA = -tl.dot(tl.dot(tl.trans(b_X), b_dX, input_precision=PREC), tl.trans(b_X), input_precision=PREC)
    b_dA = tl.where(mask_s, b_dA, 0.)
    b_G = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)  # K Kᵀ  [BT, BT]
    if USE_G:
        b_E = tl.exp(tl.where(mask_s, b_g[:, None] - b_g[None, :], float('-inf')))
    else:
        b_E = tl.where(mask_s, 1., 0.)
    # A = diag(β) (K Kᵀ ⊙ E): dβ, dk, and (gated) dΓ
    b_dAE = b_dA * b_E
    b_dbeta += tl.sum(b_dAE * b_G, 1)
    b_dG = b_dAE * b_beta[:, None]
    b_dk += tl.dot(b_dG + tl.trans(b_dG), b_k, input_precision=PREC)
    _store_tile(p_dk, b_dk, offs_t, mask_t, H * K, offs_k, mask_k)
    tl.store(dbeta + o_bh + offs_t * H, b_dbeta.to(dbeta.dtype.element_ty), mask=mask_t)
    if USE_G:
        b_Z = b_dG * b_G  # dA ⊙ A
        b_dgam += tl.sum(b_Z, 1) - tl.sum(b_Z, 0)
        for i_k in range(NK):  # the K slices' shares from step 4
            b_dgam += tl.load(dgam + i_k * tl.num_programs(1) * T + o_bh + offs_t * H, mask=mask_t, other=0.)
        # g_t enters Γ_i for every i ≥ t in its chunk: dg = reverse cumsum of dΓ
        b_dg = tl.sum(b_dgam, 0) - tl.cumsum(b_dgam, 0) + b_dgam
        tl.store(dg + o_bh + offs_t * H, b_dg.to(dg.dtype.element_ty), mask=mask_t)


@triton.jit(do_not_specialize=["T"])
def _recurrent_fwd_kernel(q, k, v, g, beta, h0, o, ht, scale, T, H: tl.constexpr, K: tl.constexpr,
                          V: tl.constexpr, NH: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          USE_G: tl.constexpr, USE_H0: tl.constexpr):
    """Decode: per token S ← e^{g_t}S, then NH times S ← S + k(β(v − Sᵀk))ᵀ; o_t = Sᵀ(s q_t)."""
    # -------------------------------------------------------------- map program -> (V tile, head)
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    offs_k, offs_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    mask_kv = mask_k[:, None] & mask_v[None, :]
    offs_kv = offs_k[:, None] * V + offs_v[None, :]
    p_q, p_o = q + i_b * T * H * K + i_h * K, o + i_b * T * H * V + i_h * V
    p_k, p_v = k + i_b * T * NH * H * K + i_h * K, v + i_b * T * NH * H * V + i_h * V
    p_beta, p_g = beta + i_b * T * NH * H + i_h, g + i_b * T * H + i_h
    b_S = tl.zeros([BK, BV], dtype=tl.float32)  # fp32 state in registers
    if USE_H0:
        b_S += tl.load(h0 + i_bh.to(tl.int64) * K * V + offs_kv, mask=mask_kv, other=0.)
    for t in range(T):
        if USE_G:  # (1) the decay, once per token
            b_S = b_S * tl.exp(tl.load(p_g + t * H).to(tl.float32))
        for j in tl.static_range(NH):  # (1) u = β(v − Sᵀk); S ← S + k uᵀ
            m = t * NH + j
            b_k = tl.load(p_k + m * H * K + offs_k, mask=mask_k, other=0.).to(tl.float32)  # [BK]
            b_v = tl.load(p_v + m * H * V + offs_v, mask=mask_v, other=0.).to(tl.float32)  # [BV]
            b_beta = tl.load(p_beta + m * H).to(tl.float32)
            b_u = b_beta * (b_v - tl.sum(b_S * b_k[:, None], 0))
            b_S += b_k[:, None] * b_u[None, :]
        b_q = tl.load(p_q + t * H * K + offs_k, mask=mask_k, other=0.).to(tl.float32) * scale
        b_o = tl.sum(b_S * b_q[:, None], 0)  # (2) o_t = Sᵀ(s q_t)  [BV]
        tl.store(p_o + t * H * V + offs_v, b_o.to(p_o.dtype.element_ty), mask=mask_v)
    tl.store(ht + i_bh.to(tl.int64) * K * V + offs_kv, b_S, mask=mask_kv)


# ================================================================================================
# Host launchers
# ================================================================================================
def _chunk_wy_fwd(k, v, beta, g, store_X: bool):
    B, T, H, K = k.shape
    V = v.shape[-1]
    t = _tiles(K, V)
    NT = triton.cdiv(T, CHUNK)
    w, u = torch.empty_like(k), torch.empty_like(v)
    X = k.new_empty(B, T, H, CHUNK, dtype=torch.float32) if store_X else w
    gam = k.new_empty(B, T, H, dtype=torch.float32) if g is not None else w
    _chunk_wy_fwd_kernel[(NT, B * H)](
        k, v, beta, g if g is not None else beta, w, u, X, gam, T, H, K, V, CHUNK, t["BK"], t["BVF"],
        USE_G=g is not None, STORE_X=store_X, PREC=_precision(k.dtype), num_warps=4,
        num_stages=1)
    return w, u, (X if store_X else None), (gam if g is not None else None)


def _chunk_state_fwd(q, k, w, u, gam, h0, scale, compute_o: bool):
    B, T, H, K = k.shape
    V = u.shape[-1]
    t = _tiles(K, V)
    NT = triton.cdiv(T, CHUNK)
    ht = k.new_empty(B, H, K, V, dtype=torch.float32)
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device) if compute_o else u
    h = k.new_empty(B, NT, H, K, V) if not compute_o else u
    v_new = torch.empty_like(u) if not compute_o else u
    _chunk_state_fwd_kernel[(triton.cdiv(V, t["BV"]), B * H)](
        q, k, w, u, gam if gam is not None else u, h0 if h0 is not None else ht, o, ht, h, v_new,
        scale, T, H, K, V, CHUNK, t["BK"], t["BV"], USE_G=gam is not None, USE_H0=h0 is not None,
        COMPUTE_O=compute_o, STORE_H=not compute_o, PREC=_precision(k.dtype), num_warps=4,
        num_stages=NUM_STAGES)
    return (o, ht) if compute_o else (h, v_new, ht)


def _chunk_fwd(q, k, v, g, beta, h0, scale):
    w, u, _, gam = _chunk_wy_fwd(k, v, beta, g, store_X=False)
    return _chunk_state_fwd(q, k, w, u, gam, h0, scale, compute_o=True)


def _chunk_bwd(q, k, v, g, beta, h0, do, dht, scale):
    B, T, H, K = k.shape
    V = v.shape[-1]
    t = _tiles(K, V)
    NT = triton.cdiv(T, CHUNK)
    NK = triton.cdiv(K, t["BKS"])
    prec = _precision(k.dtype)
    do = do.to(q.dtype).contiguous()
    # recompute step 1 (with X) and step 2 (storing the chunk-entry states and V_new)
    w, u, X, gam = _chunk_wy_fwd(k, v, beta, g, store_X=True)
    h, v_new, _ = _chunk_state_fwd(q, k, w, u, gam, h0, scale, compute_o=False)
    # step 3
    dh, dv_new = torch.empty_like(h), torch.empty_like(v)
    dh0 = k.new_empty(B, H, K, V, dtype=torch.float32)
    _chunk_state_bwd_kernel[(triton.cdiv(V, t["BV"]), B * H)](
        q, k, w, gam if gam is not None else dh0, do, dht if dht is not None else dh0, dh, dv_new,
        dh0, scale, T, H, K, V, CHUNK, t["BK"], t["BV"], USE_G=gam is not None,
        USE_DHT=dht is not None, PREC=prec, num_warps=4, num_stages=NUM_STAGES)
    # step 4
    dq = torch.empty_like(q)
    dk_part = k.new_empty(B, T, H, K, dtype=torch.float32)
    dw = k.new_empty(B, T, H, K, dtype=torch.float32)
    dgam = k.new_empty(NK, B, T, H, dtype=torch.float32) if g is not None else dw
    _chunk_bwd_dqkw_kernel[(NK, NT, B * H)](
        q, k, gam if gam is not None else dw, h, dh, v_new, do, dv_new, dq, dk_part, dw, dgam,
        scale, T, H, K, V, CHUNK, t["BKS"], t["BV"], USE_G=g is not None, PREC=prec, num_warps=4,
        num_stages=NUM_STAGES)
    # step 5
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    dg = torch.empty_like(g) if g is not None else dbeta.new_empty(0)
    _chunk_wy_bwd_kernel[(NT, B * H)](
        k, v, beta, gam if gam is not None else dw, X, dw, dv_new, dk_part, dgam, dk, dv, dbeta,
        dg if g is not None else dbeta, T, H, K, V, CHUNK, t["BK"], t["BV"], NK,
        USE_G=g is not None, PREC=prec, num_warps=8, num_stages=NUM_STAGES)
    return dq, dk, dv, dg, dbeta, (dh0 if h0 is not None else dh0.new_empty(0))


def _recurrent_fwd(q, k, v, g, beta, h0, scale, num_householder):
    B, T, H, K = q.shape
    V = v.shape[-1]
    t = _tiles(K, V)
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    ht = q.new_empty(B, H, K, V, dtype=torch.float32)
    _recurrent_fwd_kernel[(triton.cdiv(V, t["BV"]), B * H)](
        q, k, v, g if g is not None else beta, beta, h0 if h0 is not None else ht, o, ht, scale, T,
        H, K, V, num_householder, t["BK"], t["BV"], USE_G=g is not None, USE_H0=h0 is not None,
        num_warps=4, num_stages=1)
    return o, ht
