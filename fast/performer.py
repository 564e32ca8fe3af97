"""Triton mirror of zoo/performer.py; the math, shapes and equation numbers (1)-(5) are there.

Kernel plan
-----------
The positive feature φ̂(u)_r = exp(ω_rᵀu − ‖u‖²/2 − a)/√M is computed on chip from q and k
([BT, K], what the layer produced): the exponents θ = u Ωᵀ come from a "tf32x3" dot, fp32-accurate
(a tf32 error of 1e-3·|θ| inside an exp is a 1e-3·|θ| relative error of the feature),
and no feature is ever written to memory.

The stabilisers need maxima over all M frequencies, and each frequency tile must use the same
shift (the tiles' shares are summed), so a small first kernel computes, per token, the row max
max_r ω_rᵀu for q and for k (one more read of q and k, a [B, T, H] result each). The host turns
them into the query shift a_q and the keys' prefix max c_t (constants to autograd: the output
does not depend on them).

Causal forward, parallel over chunks (the default: CHUNK_PARALLEL = True)
-------------------------------------------------------------------------
fast/hrc_la.py's two-launch plan with one real feature block instead of the cos/sin pair, and no
mass (FAVOR+'s floor is eps alone). Chunks of BT = PARALLEL_BT = 64 tokens (NT = ⌈T/BT⌉; fixed,
not keyed on T or chunk_size: the same function, only the summation order moves). Between the
launches, one record per (batch·head, chunk), hs [B, H, NT, R], R = M·V + M: S, z of the state
BEFORE the chunk, at the scale c_last(n−1) of the previous chunk's last token (c0 first).
  walk, grid (⌈M/BM⌉, B·H), _performer_chunk_h_kernel (fla's chunk_fwd_h): each program holds its
    frequency slice S [BM, V], z [BM] in fp32 registers and walks the chunks in order: store the
    state into chunk n's record, then (4) a chunk at a time
        S ← e^{c_last(n−1) − c_last(n)} S + Σ_j exp(ℓ(k_j) − c_last(n))/√M v_jᵀ,  ℓ = θ − ‖u‖²/2,
    (each key's weight e^{c_j − c_last} folded into its exponent: <= 1/√M, c a prefix max), the
    keys' features on chip; the last state goes straight to ht, zt.
  phase 3, grid (NT, B·H), _performer_chunk_out_kernel: (5) for the chunk's queries, all M
    frequencies walked BM at a time (queries' and keys' features on chip):
        A = Σ_m φ̂_q φ̄_kᵀ ⊙ Γ,  num_t = (A v)_t + e^{c⁻−c_t} φ̂_tᵀS⁻,  den_t likewise with z⁻;
    then (3) o_t = num_t / max(den_t, eps) in v's dtype: o and den written once (num never), no
    atomics. The op returns (o, den, ht, zt) on every path (the serial kernels' launcher divides
    after them, _random_features.divide); the backward takes o's cotangent to num's and den's on
    the host (_random_features.output_cotangents) for the unchanged backward kernels.
Features transposed [BM, BT] (θᵀ = Ω uᵀ, _random_features.phases_t: bf16/fp16 inputs split only Ω,
two tf32 products) so the chunk's q and k are the dots' right-hand operands; ‖u‖²/2 comes from the
same loaded rows. Switches (module globals, read at each call; benchmarks/results/h100-2026-11-23/run24-perf_sweep.py flips them):
  FEATURE_DOTS_16 (on): bf16/fp16 inputs feed phase 3's A, A v and read-out dots in the input
    dtype (features, A and the records' S rounded to it; fp32 accumulation; the exponents stay
    fp32-accurate; fp32 inputs unchanged). HALF_RECORDS (off): records in bf16 for bf16/fp16
    inputs (the walk still adds in fp32). WALK_TILE (32, 4 warps, 2 stages), OUT_TILE (32, 4
    warps, 2 stages): HRC-LA's measured winners, taken over untimed. Head dims under 64 run both
    kernels at _random_features.SMALL_HEAD_TILE (2 warps) instead: Triton 3.6's ptxas miscompiled
    them there (run 43: illegal addresses at head dims 16 and 32, NaN at 16 with M 128; the
    reason and the price are in fast/hrc_la.py's card, "Small head dims").
sm_90 registers (ptxas, Triton 3.9, K = V = 64, M = 256, bf16, BT = 64; tests/test_performer.py's AOT script compiles the defaults):
  walk: BM 32 at 4 warps, 2 stages: 168, no spill (1 stage: 168 + 24 B); BM 64: 226, no spill;
    BM 16: 128.
  phase 3: BM 32 at 4 warps, 2 stages: 255 + 152 B of spill (264 B with FEATURE_DOTS_16 off;
    tests/test_performer.py bounds them); BM 16: 255 + 32 B; BM 32 at 8 warps: 186, no spill
    (220 with the dots in fp32); BM 64 at 4 warps: 255 + 352 B.
Cost at the issue's size (B·T = 32768, H = 16, D = 64, M = 256, BT = 64, NT = 128 a sequence):
  bytes: records 8192 × R × 4 B = 0.55 GB, written (walk) and read (phase 3): 1.09 GB; q, k, v
    67 MB each (k, v read by the walk's 8 frequency tiles of one head, adjacent programs: mostly
    from L2; q, k, v again by phase 3), o 67 MB, a_q, c, den 2 MB each: ~0.4 GB. ~1.5 GB in the
    two kernels: 0.5 ms at 3.0 TB/s (HALF_RECORDS: ~1 GB, 0.33 ms). The host passes around them
    (row maxima of q and k: 0.14 GB; the prefix max) add ~0.15 GB (o = num/den, 0.2 GB more, was
    one until session 13).
  FLOPs a token and head: exponents 2 products × 2·K·M = 66 K (keys, walk) + 131 K (queries and
    keys, phase 3), tf32; dS 2·M·V = 33 K (tf32); A 2·BT·M = 33 K; A v 2·BT·V = 8 K; the read-out
    2·M·V = 33 K (these three bf16 under FEATURE_DOTS_16): ~300 KFLOP, 160 GFLOP in all: 0.44 ms
    at half the bf16 ceiling; and 3·M = 768 exp a token and head (0.4 G on the SFU, ~0.1 ms).
  floor: ~0.53 ms for the two kernels (memory bound, the tf32 exponent products close behind);
    ~0.65 ms for the op with the host passes.
  Measured (H100, run 24, benchmarks/results/h100-2026-11-23/run24-perf-sweep.log; B = 4,
    T = 8192, H = 16, D = 64, M = 256, bf16): the serial walk (below) 6.11 ms for the op (kernel
    4.61 ms, row max 1.08); this plan 3.41 ms at the walk's BM 32 (walk 0.86, phase 3 1.21, row max
    1.10), 3.10 ms at BM 64 (walk 0.55: the default now); FEATURE_DOTS_16 off 3.45 ms (error vs the
    fp64 zoo 1.9e-3 against 2.5e-3 on), HALF_RECORDS 3.30 ms (2.7e-3; left off), phase 3 (16, 4, 2)
    3.28 ms, (32, 8, 2) 3.61 ms. The row-max pass over q and k took 1.1 ms of that, a third of the
    op; in the transposed form at 4 warps (run 25, run25-rowmax.log) 0.39 ms (0.67 at 8
    warps), and the op **2.40 ms** (against 3.12 in the same script). Floor of the op ~0.65 ms.
    Session 13 (runs 48-50, benchmarks/results/h100-2026-11-23/run48-hrc-fused.log): the division
    in phase 3, 2.22 ms against 2.43 for 1dedd13's op in the same run (B = 1, T = 65536: 6.17
    against 6.58); benchmarks.hrc_seed 2.27-2.40 ms.

Serial walk (non-causal, and causal with CHUNK_PARALLEL = False)
----------------------------------------------------------------
As in fast/hrc_la.py: one program per (frequency tile of BM, batch·head) walks the chunks of
BT tokens holding its slice S [BM, V] of the state in fp32 registers and adds its share of
    num_t = Σ_j A_tj v_j + e^{c⁻−c_t} φ̂_tᵀS,   den_t likewise with v = 1,
    A = (φ̂_q φ̄_kᵀ) ⊙ Γ,  Γ_tj = e^{c_j − c_t} [j ≤ t],  φ̄_k = exp(θ − ‖u‖²/2 − c_j)/√M <= 1/√M,
into fp32 buffers (tl.atomic_add; a plain store when one tile holds all M). o = num / max(den, eps)
is one torch line after the kernel (_random_features.divide, inside the op). Non-causal: a first
sweep builds the state, a second reads it.

Backward (the same grid with half the frequencies a tile: it also holds dS): sweep 1 forward in
time gives dφ̂_q, sweep 2 backward in time carries dS and
gives dφ̄_k and dv; through the exponential, dℓ = dφ·φ, so dθ = dℓ and du = dℓ Ω − (Σ_r dℓ_r)·u
(the −‖u‖²/2 term). dq, dk, dv are shared by the tiles (atomics); dΩ is written per (batch, head,
tile) and summed over the batch on the host. Nothing but the inputs is saved for backward.
The recurrent op (decoding) has a token-loop kernel, forward only; its gradient is the chunk backward.

Tile rule (no autotuning; nothing keyed on T or B): V in one tile (BV = next power of two >= 16,
V <= 256), BM from a register budget of 4096 fp32 state elements (BM·BV): BM = 64 at V = 64 (32
in the backward, which also holds dS). BT = min(chunk_size, 32): see MAX_BT for the ptxas register
counts that chose it. num_warps 8, num_stages 2.
Large head dims and shared memory (an H100 block has 232448 B): at K = V = 64 every tile fits and
is unchanged; at larger K, V the walk, phase 3, the chunk backward, the serial forward and the row
max asked for 245-393 KB and would fail at launch, so the rule steps down there alone (fast/hrc_la.py's
card and _random_features.parallel_tiles have the steps and bytes; the row max: _row_max_tiles).
K > 256 is refused. Compiled for sm_90 on a CPU (tests/test_performer.py's AOT_SHARED_SCRIPT checks
K = V = 256); not run on a GPU, and the smaller tiles are untimed.

Naming legend (fla's prefixes, STYLE rule 29):
    i_   program ids and loop indices (i_m frequency tile, i_bh batch·head, i_t chunk)
    p_   pointers          b_   blocks held on chip (zoo names after the prefix: b_S, b_A, ...)
    offs_ offsets          mask_ masks (mask_t rows inside T, mask_A the causal mask)
    BT   chunk length (the zoo's L)   BK, BV, BM  tiles of K, V and of the M frequencies   NT chunks
    h0/ht the initial/final state S [B, H, M, V] (z0/zt its normaliser [B, H, M])
    hs, R the chunk-parallel path's records [B, H, NT, R] (S, z flattened)
    s_u  √scale (u = s_u·x);  r_m  1/√M
"""

import os

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

import zoo.performer as zperf
from zoo.performer import EPS_DENOMINATOR, PerformerAttention as _ZooLayer, _check_inputs

from fast._random_features import (
    EMPTY_SCALE, PHASE_PRECISION, causal_decay, chunk_end, chunk_program, chunk_record, chunk_state_in, chunk_rows,
    frequency_tile, half_operand, load_rows, omega_tile, phases_t, record_operand, state_or_zeros, state_ptrs,
    store_chunk_out, store_share, store_state,
)
from fast import _random_features as _rf

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as @triton.jit does
ROW_MAX_BT = 64  # tokens per program of the row-max kernel
ROW_MAX_WARPS = 4  # 0.39 ms for q and k at the size against 0.67 at 8 warps (run 25)
# The causal chunk forward: True runs the chunk-parallel kernels (two launches, the card's state
# walk and phase 3), False the serial walk per frequency tile (_performer_chunk_fwd_kernel).
# Read at each call.
CHUNK_PARALLEL = True
PARALLEL_BT = 64  # their chunk, whatever chunk_size asks (the same function; only summation order moves)
# (BM, num_warps, num_stages) of the state walk and of phase 3 (BM capped at M's power of two), read
# at each call. Measured on the H100 (run 24, the card): the walk at BM 64 0.55 ms against 0.86 at
# 32 (226 registers, no spill); phase 3 at fast/hrc_la.py's (32, 4, 2) 1.21 ms ((16, 4, 2) 1.07,
# (32, 8, 2) 1.41; the pair (64, 4, 2) + (16, 4, 2) not timed together, so phase 3 keeps its tile).
WALK_TILE = (64, 4, 2)
OUT_TILE = (32, 4, 2)
# FEATURE_DOTS_16: for bf16/fp16 inputs, the features, A and the records' S enter phase 3's dots in
#   the input dtype (tensor cores at 2x tf32; fp32 accumulation; the exponents stay fp32-accurate).
#   fp32 inputs unchanged. Read at each call.
# HALF_RECORDS: the per-chunk records between the walk and phase 3 in bf16 for bf16/fp16 inputs
#   (the walk still adds in fp32; each stored state rounded once, 2⁻⁹ relative). Off, as in HRC-LA.
FEATURE_DOTS_16 = True
HALF_RECORDS = False


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
def _tile_rule(K: int, V: int, M: int):
    """(BK, BV, BM, num_warps, num_stages) from the head dims and M alone (see the card): the state
    budget holds one block, S."""
    return _rf.tile_rule(K, V, M, 1)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _exponents(x, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K: tl.constexpr):
    """u = s_u·x [BT, BK], ℓ = u Ωᵀ − ‖u‖²/2 [BT, BM] (fp32-accurate, PHASE_PRECISION)."""
    b_u = s_u * load_rows(x, p_t, mask_t, offs_k, mask_k, K)
    b_h = 0.5 * tl.sum(b_u * b_u, 1)
    return b_u, tl.dot(b_u, tl.trans(b_omega), input_precision=PHASE_PRECISION) - b_h[:, None]


@triton.jit(do_not_specialize=["T"])
def _performer_row_max_kernel(x, omega, out, s_u, T, H, K: tl.constexpr, M: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
    """out_t = max_r ω_rᵀu_t − ‖u_t‖²/2 over all M frequencies: the stabiliser a of (2), with θᵀ =
    Ω uᵀ [BM, BT] as the two-launch forward computes its exponents (phases_t: two tf32 products for
    bf16/fp16 inputs) and ‖u‖²/2 as _features_t does. (θ = u Ωᵀ at three tf32 products and 8 warps,
    the serial walk's form, took 1.11 ms for q and k at the issue's size against 0.39: run 25.)"""
    # -- map the program to BT tokens of one (batch, head) -----------------------------------------
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    s_u = tl.cast(s_u, tl.float32)
    offs_t = i_t * BT + tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    mask_t, mask_k = offs_t < T, offs_k < K
    p_t = (i_b.to(tl.int64) * T + offs_t) * H + i_h
    b_xT = tl.trans(load_rows(x, p_t, mask_t, offs_k, mask_k, K))  # [BK, BT], unscaled (see phases_t)
    b_h = (0.5 * s_u * s_u) * tl.sum(b_xT * b_xT, 0)  # ‖u‖²/2 [BT]
    # -- the running max over frequency tiles ------------------------------------------------------
    b_max = tl.full([BT], float("-inf"), dtype=tl.float32)
    for i_m in range(tl.cdiv(M, BM)):
        offs_m = i_m * BM + tl.arange(0, BM)
        mask_m = offs_m < M
        b_omega = tl.load(omega + (i_h * M + offs_m[:, None]) * K + offs_k[None, :],
                          mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        b_th = phases_t(b_xT, b_omega, s_u, x.dtype.element_ty != tl.float32)  # [BM, BT]
        b_max = tl.maximum(b_max, tl.max(tl.where(mask_m[:, None], b_th, float("-inf")), 0))
    tl.store(out + p_t, b_max - b_h, mask=mask_t)


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _performer_chunk_fwd_kernel(
    q, k, v, omega, a_q, c,  # [B, T, H, K] ×2, [B, T, H, V], [H, M, K], [B, T, H] ×2 (fp32)
    num, den,  # [B, T, H, V], [B, T, H] fp32 (zeroed when ATOMIC)
    h0, z0, c0, ht, zt,  # [B, H, M, V], [B, H, M], [B, H] fp32 (h0, z0 may be None)
    s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    CAUSAL: tl.constexpr, ATOMIC: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    DOT: tl.constexpr,
):
    """This tile's share of num_t = φ̂_tᵀS_t and den_t = φ̂_tᵀz_t (zoo (5))."""
    # -- map the program to a frequency tile of one (batch, head) ----------------------------------
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)
    NT = tl.cdiv(T, BT)

    # -- the state slice: S [BM, BV], z [BM] at log-scale c, fp32 ----------------------------------
    p_S, p_z, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, M, V)
    b_S, b_z = state_or_zeros(h0, z0, p_S, p_z, mask_S, mask_m, HAS_H0, BM, BV)
    b_crun = tl.load(c0 + i_bh)

    # -- non-causal: build the whole state first (every c_t is the global maximum) ----------------
    if not CAUSAL:
        b_cT = tl.load(c + row0 * H + i_h)
        b_dec = tl.exp(b_crun - b_cT)
        b_S, b_z = b_S * b_dec, b_z * b_dec
        b_crun = b_cT
        for i_t in range(NT):
            offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
            _, b_l = _exponents(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
            b_k = tl.where(mask_t[:, None], tl.exp(b_l - b_cT), 0.0) * b_rm[None, :]  # φ̄_k [BT, BM]
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            b_S += tl.dot(tl.trans(b_k), b_v, input_precision=DOT)  # (4) Σ_j w_j φ̂(k_j) v_jᵀ
            b_z += tl.sum(b_k, 0)

    # -- the sweep, chunk by chunk -----------------------------------------------------------------
    for i_t in range(NT):
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        _, b_l = _exponents(q, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
        b_aq = tl.load(a_q + p_t, mask=mask_t, other=0.0)
        b_q = tl.exp(b_l - b_aq[:, None]) * b_rm[None, :]  # φ̂(q) <= 1/√M: e^{a(q)} cancels (2)
        if CAUSAL:
            b_c = tl.load(c + p_t, mask=mask_t, other=0.0)  # c_t, the prefix max [BT]
            _, b_l = _exponents(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
            b_k = tl.where(mask_t[:, None], tl.exp(b_l - b_c[:, None]), 0.0) * b_rm[None, :]  # <= 1/√M
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            # (3) intra-chunk: Γ_tj = e^{c_j − c_t} for j <= t
            b_G = causal_decay(offs_t, mask_t, b_c)
            b_A = tl.dot(b_q, tl.trans(b_k), input_precision=DOT) * b_G  # [BT, BT]
            # (5) inter-chunk: the state at scale c⁻, brought to c_t
            b_dec = tl.exp(tl.where(mask_t, b_crun - b_c, float("-inf")))
            b_o = tl.dot(b_A, b_v, input_precision=DOT) + b_dec[:, None] * tl.dot(b_q, b_S, input_precision=DOT)
            b_d = tl.sum(b_A, 1) + b_dec * tl.sum(b_q * b_z[None, :], 1)
            # (4) state pass: to the scale of the chunk's last token
            b_clast, b_gl = chunk_end(b_c, mask_t)
            b_dS = tl.exp(b_crun - b_clast)
            b_S = b_S * b_dS + tl.dot(tl.trans(b_k * b_gl[:, None]), b_v, input_precision=DOT)
            b_z = b_z * b_dS + tl.sum(b_k * b_gl[:, None], 0)
            b_crun = b_clast
        else:
            b_o = tl.dot(b_q, b_S, input_precision=DOT)
            b_d = tl.sum(b_q * b_z[None, :], 1)
        store_share(num, den, p_t, mask_t, offs_v, mask_v, b_o, b_d, V, ATOMIC)  # the tiles of one head add

    # -- the final state ---------------------------------------------------------------------------
    if STORE_HT:
        store_state(ht, zt, p_S, p_z, mask_S, mask_m, b_S, b_z)


# ------------------------------------------------------------------------------------------------
# Causal forward, parallel over chunks (the default causal path: CHUNK_PARALLEL)
# ------------------------------------------------------------------------------------------------
# One chunk's record in the state buffer hs [B, H, NT, R], R = M·V + M: S (M rows of V), then z.
# FAVOR+ needs no mass: its floor is eps alone.
@triton.jit
def _features_t(b_xT, b_omega, b_rm, s_u, b_shift, mask_t, X_IS_TF32: tl.constexpr):
    """φ̂ᵀ = exp(θᵀ − ‖u‖²/2 − shift)/√M [BM, BT] for the chunk's xᵀ [BK, BT] as loaded: θᵀ = Ω uᵀ
    fp32-accurate (phases_t), the shift a scalar or one per token [BT]; 0 on tokens outside T and
    on padding frequencies (b_rm = 0)."""
    b_h = (0.5 * s_u * s_u) * tl.sum(b_xT * b_xT, 0)  # ‖u‖²/2 [BT]
    b_l = phases_t(b_xT, b_omega, s_u, X_IS_TF32) - (b_h + b_shift)[None, :]
    return tl.where(mask_t[None, :], tl.exp(b_l), 0.0) * b_rm[:, None]


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
})
@triton.jit(do_not_specialize=["T", "NT"])
def _performer_chunk_h_kernel(
    k, v, omega, c, hs,  # [B, T, H, K], [B, T, H, V], [H, M, K], [B, T, H] (fp32), [B, H, NT, R] (records)
    h0, z0, c0, ht, zt,  # [B, H, M, V], [B, H, M], [B, H] fp32 (h0, z0, ht, zt may be None)
    s_u, r_m, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, DOT: tl.constexpr,
):
    """The state walk (fla's chunk_fwd_h), one program per (frequency tile of BM, batch·head), its
    slice S [BM, BV], z [BM] in fp32 registers, walking the chunks in order. Per chunk n, (4) a
    chunk at a time:
        record n  <-  the state before the chunk, at scale c_last(n−1) (c0 for the first),
        S <- e^{c_last(n−1) − c_last(n)} S + Σ_j φ̂(k_j) e^{−c_last(n)} v_jᵀ,   z likewise with v = 1,
    the keys' features exp(ω·u_j − ‖u_j‖²/2 − c_last(n))/√M <= 1/√M (c is a prefix max) on chip,
    transposed [BM, BT] so the dot's k is the right-hand operand (see phases_t). The records are
    written once (here) and read once (phase 3). WALK_TILE: BM 32 at 4 warps, 2 stages (the card)."""
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)  # b_rm = 0 on padding frequencies

    # -- the state slice, fp32, at the log-scale b_crun ----------------------------------------------
    p_S, p_z, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, M, V)
    b_S, b_z = state_or_zeros(h0, z0, p_S, p_z, mask_S, mask_m, HAS_H0, BM, BV)
    b_crun = tl.load(c0 + i_bh)
    o_S = offs_m[:, None] * V + offs_v[None, :]  # a record's S rows, then z at M·V (see chunk_record)

    for i_t in range(NT):
        # -- record n: the state before the chunk, as phase 3 reads it -------------------------------
        p_h = chunk_record(hs, i_bh, i_t, NT, R)
        tl.store(p_h + o_S, b_S.to(hs.dtype.element_ty), mask=mask_S)
        tl.store(p_h + M * V + offs_m, b_z.to(hs.dtype.element_ty), mask=mask_m)
        # -- (4) the chunk's keys, at the scale of its last token ------------------------------------
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_xkT = tl.trans(load_rows(k, p_t, mask_t, offs_k, mask_k, K))  # [BK, BT], unscaled (see phases_t)
        b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
        b_clast = tl.load(c + (row0 + tl.minimum(i_t * BT + BT, T) - 1) * H + i_h)  # c is a prefix max
        b_kT = _features_t(b_xkT, b_omega, b_rm, s_u, b_clast, mask_t, k.dtype.element_ty != tl.float32)
        b_dec = tl.exp(b_crun - b_clast)  # e^{c_last(n−1) − c_last(n)}
        b_S = b_S * b_dec + tl.dot(b_kT, b_v, input_precision=DOT)
        b_z = b_z * b_dec + tl.sum(b_kT, 1)
        b_crun = b_clast

    # -- the final state -------------------------------------------------------------------------------
    if STORE_HT:
        store_state(ht, zt, p_S, p_z, mask_S, mask_m, b_S, b_z)


@triton.jit(do_not_specialize=["T", "NT"])
def _performer_chunk_out_kernel(
    q, k, v, omega, a_q, c, c0, hs,  # inputs as in the walk, a_q [B, T, H], c0 [B, H], hs: states before each chunk
    o, den,  # [B, T, H, V] in v's dtype, [B, T, H] fp32, written once
    s_u, eps, r_m, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr,
    DOTS_16: tl.constexpr,
):
    """Phase 3, one program per (chunk, batch·head): (5) for the chunk's queries, all M frequencies
    walked BM at a time (queries' and keys' features on chip), so o and den are written once,
    with no atomics (num_t / max(den_t, eps) divided here, (3)):
        A = Σ_m φ̂_q φ̄_kᵀ ⊙ Γ,  φ̂_q = exp(ℓ_q − a_q)/√M,  φ̄_k = exp(ℓ_k − c_j)/√M,  Γ_tj = e^{c_j − c_t} [j ≤ t],
        num_t = (A v)_t + e^{c⁻−c_t} φ̂_tᵀS⁻,  den_t likewise with z⁻.
    The features are transposed [BM, BT] (see phases_t); the chunk's record is read once, BM rows
    at a time. OUT_TILE: BM 32 at 4 warps, 2 stages; DOTS_16: the card's switch."""
    # the chunk's q, k transposed [BK, BT] (unscaled: see phases_t), c_t, e^{c⁻ − c_t}, its record
    i_t, i_bh, i_h, row0, s_u, r_m, offs_k, offs_v, mask_k, mask_v, offs_t, mask_t, p_t, b_xqT, b_xkT = \
        chunk_program(q, k, s_u, r_m, T, H, K, V, BT, BK, BV)
    b_c = tl.load(c + p_t, mask=mask_t, other=0.0)  # c_t, the prefix max [BT]
    b_dec, p_h = chunk_state_in(c, c0, hs, i_t, i_bh, i_h, row0, b_c, mask_t, H, NT, R, BT)
    b_aq = tl.load(a_q + p_t, mask=mask_t, other=0.0)  # the queries' row max: e^{a(q)} cancels (2)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)  # φ̂_q φ̄_kᵀ, summed over frequencies
    b_oi = tl.zeros([BT, BV], dtype=tl.float32)  # φ̂_tᵀ S⁻
    b_di = tl.zeros([BT], dtype=tl.float32)  # φ̂_tᵀ z⁻
    # the dots' operands: fp32 (tf32 products), or (DOTS_16, bf16/fp16 inputs) in the input dtype
    FT = q.dtype.element_ty if DOTS_16 else tl.float32
    for i_m in range(tl.cdiv(M, BM)):
        offs_m, mask_m, b_rm, b_omega = omega_tile(omega, i_h, i_m, r_m, offs_k, mask_k, K, M, BM)
        b_qT = half_operand(_features_t(b_xqT, b_omega, b_rm, s_u, b_aq, mask_t, q.dtype.element_ty != tl.float32), FT)
        b_kT = half_operand(_features_t(b_xkT, b_omega, b_rm, s_u, b_c, mask_t, k.dtype.element_ty != tl.float32), FT)
        b_A += tl.dot(tl.trans(b_qT), b_kT, input_precision=DOT)
        p_S = p_h + offs_m[:, None] * V + offs_v[None, :]
        b_S = record_operand(p_S, mask_m[:, None] & mask_v[None, :], FT)  # S⁻
        b_oi += tl.dot(tl.trans(b_qT), b_S, input_precision=DOT)  # (5) inter-chunk
        b_z = tl.load(p_h + M * V + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        b_di += tl.sum(b_qT.to(tl.float32) * b_z[:, None], 0)
    # (3) intra-chunk: A_tj = φ̂_t·φ̄_j e^{c_j − c_t} for j <= t
    b_A *= causal_decay(offs_t, mask_t, b_c)
    store_chunk_out(o, den, v, b_A, b_oi, b_di, b_dec, tl.cast(eps, tl.float32), p_t, mask_t, offs_v, mask_v, V, FT,
                    DOT)  # (3) the floor eps


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "HAS_DHT": lambda args: args["dht"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _performer_chunk_bwd_kernel(
    q, k, v, omega, a_q, c, dnum, dden,  # as in the forward; dnum [B, T, H, V], dden [B, T, H] fp32
    h0, z0, c0, dht, dzt,  # [B, H, M, V], [B, H, M], [B, H], [B, H, M, V], [B, H, M] (may be None)
    dq, dk, dv, domega, dh0, dz0,  # fp32: [B, T, H, K] ×2, [B, T, H, V] zeroed; [B, H, M, K]; ...
    s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, DOT: tl.constexpr,
):
    """This tile's share of dq, dk, dv, and its rows of dΩ, dh0, dz0 (the card's two sweeps)."""
    # -- map the program, as in the forward ----------------------------------------------------------
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)
    b_domega = tl.zeros([BM, BK], dtype=tl.float32)
    NT = tl.cdiv(T, BT)
    p_S, p_z, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, M, V)

    # -- sweep 1, forward in time: the state again, and dq ------------------------------------------
    b_S, b_z = state_or_zeros(h0, z0, p_S, p_z, mask_S, mask_m, HAS_H0, BM, BV)
    b_c0 = tl.load(c0 + i_bh)
    b_crun = b_c0
    b_cT = tl.load(c + (row0 + T - 1) * H + i_h)
    if not CAUSAL:
        b_dec = tl.exp(b_crun - b_cT)
        b_S, b_z = b_S * b_dec, b_z * b_dec
        for i_t in range(NT):
            offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
            _, b_l = _exponents(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
            b_k = tl.where(mask_t[:, None], tl.exp(b_l - b_cT), 0.0) * b_rm[None, :]
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            b_S += tl.dot(tl.trans(b_k), b_v, input_precision=DOT)
            b_z += tl.sum(b_k, 0)
    # the gradient of the state, for sweep 2
    b_dS_, b_dz_ = state_or_zeros(dht, dzt, p_S, p_z, mask_S, mask_m, HAS_DHT, BM, BV)

    for i_t in range(NT):
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_uq, b_l = _exponents(q, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
        b_q = tl.exp(b_l - tl.load(a_q + p_t, mask=mask_t, other=0.0)[:, None]) * b_rm[None, :]
        b_dn = load_rows(dnum, p_t, mask_t, offs_v, mask_v, V)
        b_dd = tl.load(dden + p_t, mask=mask_t, other=0.0)
        if CAUSAL:
            b_c = tl.load(c + p_t, mask=mask_t, other=0.0)
            _, b_l = _exponents(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
            b_k = tl.where(mask_t[:, None], tl.exp(b_l - b_c[:, None]), 0.0) * b_rm[None, :]
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            b_G = causal_decay(offs_t, mask_t, b_c)
            b_dA = (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT) + b_dd[:, None]) * b_G  # (ĝ_t·ṽ_j) Γ_tj
            b_dec = tl.exp(tl.where(mask_t, b_crun - b_c, float("-inf")))
            b_dq = tl.dot(b_dA, b_k, input_precision=DOT) + b_dec[:, None] * (tl.dot(b_dn, tl.trans(b_S), input_precision=DOT) + b_dd[:, None] * b_z[None, :])
            b_clast, b_gl = chunk_end(b_c, mask_t)
            b_dS = tl.exp(b_crun - b_clast)
            b_S = b_S * b_dS + tl.dot(tl.trans(b_k * b_gl[:, None]), b_v, input_precision=DOT)
            b_z = b_z * b_dS + tl.sum(b_k * b_gl[:, None], 0)
            b_crun = b_clast
        else:
            b_dq = tl.dot(b_dn, tl.trans(b_S), input_precision=DOT) + b_dd[:, None] * b_z[None, :]
            b_dS_ += tl.dot(tl.trans(b_q), b_dn, input_precision=DOT)  # Σ_t φ̂(q_t) dnum_tᵀ, at the final scale
            b_dz_ += tl.sum(b_q * b_dd[:, None], 0)
        # through φ̂(q) = exp(θ − ‖u‖²/2 − a_q)/√M: dℓ = dφ̂·φ̂, du = dℓ Ω − (Σ_r dℓ_r) u
        b_dl = b_dq * b_q
        b_du = tl.dot(b_dl, b_omega, input_precision=PHASE_PRECISION) - tl.sum(b_dl, 1)[:, None] * b_uq
        tl.atomic_add(dq + p_t[:, None] * K + offs_k[None, :], s_u * b_du, mask=mask_t[:, None] & mask_k[None, :])
        b_domega += tl.dot(tl.trans(b_dl), b_uq, input_precision=PHASE_PRECISION)

    # -- sweep 2, backward in time: dk, dv (causal: dS carried at the chunk end's scale) ------------
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_uk, b_lk = _exponents(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
        b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
        if CAUSAL:
            b_c = tl.load(c + p_t, mask=mask_t, other=0.0)
            b_k = tl.where(mask_t[:, None], tl.exp(b_lk - b_c[:, None]), 0.0) * b_rm[None, :]
            _, b_l = _exponents(q, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
            b_q = tl.exp(b_l - tl.load(a_q + p_t, mask=mask_t, other=0.0)[:, None]) * b_rm[None, :]
            b_dn = load_rows(dnum, p_t, mask_t, offs_v, mask_v, V)
            b_dd = tl.load(dden + p_t, mask=mask_t, other=0.0)
            b_G = causal_decay(offs_t, mask_t, b_c)
            b_dA = (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT) + b_dd[:, None]) * b_G
            b_A = tl.dot(b_q, tl.trans(b_k), input_precision=DOT) * b_G
            b_clast, b_gl = chunk_end(b_c, mask_t)
            b_dk = tl.dot(tl.trans(b_dA), b_q, input_precision=DOT) + b_gl[:, None] * (tl.dot(b_v, tl.trans(b_dS_), input_precision=DOT) + b_dz_[None, :])
            b_dv = tl.dot(tl.trans(b_A), b_dn, input_precision=DOT) + b_gl[:, None] * tl.dot(b_k, b_dS_, input_precision=DOT)
            # carry dS to the scale of the previous chunk's end (c0 before the first chunk)
            p_prev = (row0 + tl.maximum(i_t * BT - 1, 0)) * H + i_h
            b_cprev = tl.where(i_t > 0, tl.load(c + p_prev), b_c0)
            b_gq = tl.exp(tl.where(mask_t, b_cprev - b_c, float("-inf")))
            b_dS = tl.exp(b_cprev - b_clast)
            b_dS_ = b_dS_ * b_dS + tl.dot(tl.trans(b_q * b_gq[:, None]), b_dn, input_precision=DOT)
            b_dz_ = b_dz_ * b_dS + tl.sum(b_q * (b_gq * b_dd)[:, None], 0)
        else:
            b_k = tl.where(mask_t[:, None], tl.exp(b_lk - b_cT), 0.0) * b_rm[None, :]
            b_dk = tl.dot(b_v, tl.trans(b_dS_), input_precision=DOT) + b_dz_[None, :]
            b_dv = tl.dot(b_k, b_dS_, input_precision=DOT)
        # through φ̄_k = exp(θ − ‖u‖²/2 − c_j)/√M, as for the queries
        b_dl = b_dk * b_k
        b_du = tl.dot(b_dl, b_omega, input_precision=PHASE_PRECISION) - tl.sum(b_dl, 1)[:, None] * b_uk
        tl.atomic_add(dk + p_t[:, None] * K + offs_k[None, :], s_u * b_du, mask=mask_t[:, None] & mask_k[None, :])
        tl.atomic_add(dv + p_t[:, None] * V + offs_v[None, :], b_dv, mask=mask_t[:, None] & mask_v[None, :])
        b_domega += tl.dot(tl.trans(b_dl), b_uk, input_precision=PHASE_PRECISION)

    # -- dΩ rows of this tile, and the initial state's gradient ------------------------------------
    tl.store(domega + (i_bh.to(tl.int64) * M + offs_m[:, None]) * K + offs_k[None, :], b_domega,
             mask=mask_m[:, None] & mask_k[None, :])
    if HAS_H0:
        if not CAUSAL:  # the initial state entered at weight e^{c0 − c_T}
            b_dec = tl.exp(b_c0 - b_cT)
            b_dS_, b_dz_ = b_dS_ * b_dec, b_dz_ * b_dec
        store_state(dh0, dz0, p_S, p_z, mask_S, mask_m, b_dS_, b_dz_)


@triton.jit
def _performer_recurrent_update(k, v, c, b_omega, b_rm, S, z, crun, p_t, s_u, offs_k, mask_k, offs_v, mask_v,
                                K: tl.constexpr, V: tl.constexpr):
    """(4) for one token: c_t = max(c_{t−1}, a_t) (given), S = e^{c_{t−1}−c_t} S + φ̄(k_t) v_tᵀ, z likewise."""
    b_uk = s_u * tl.load(k + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_l = tl.sum(b_omega * b_uk[None, :], 1) - 0.5 * tl.sum(b_uk * b_uk, 0)  # [BM]
    b_c = tl.load(c + p_t)
    b_dec = tl.exp(crun - b_c)
    b_k = tl.exp(b_l - b_c) * b_rm
    b_v = tl.load(v + p_t * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    return S * b_dec + b_k[:, None] * b_v[None, :], z * b_dec + b_k, b_c


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _performer_recurrent_fwd_kernel(
    q, k, v, omega, a_q, c, num, den, h0, z0, c0, ht, zt,
    s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    """Token by token (zoo (4)): c_t = max(c_{t−1}, a_t), S_t = e^{c_{t−1}−c_t} S_{t−1} + φ̄(k_t) v_tᵀ."""
    # -- map the program to a frequency tile of one (batch, head) ----------------------------------
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)

    # -- the state slice, fp32 ---------------------------------------------------------------------
    p_S, p_z, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, M, V)
    b_S, b_z = state_or_zeros(h0, z0, p_S, p_z, mask_S, mask_m, HAS_H0, BM, BV)
    b_crun = tl.load(c0 + i_bh)

    # -- non-causal: a first loop builds the state from every key ----------------------------------
    if not CAUSAL:
        for t in range(T):
            b_S, b_z, b_crun = _performer_recurrent_update(k, v, c, b_omega, b_rm, b_S, b_z, b_crun,
                                                           (row0 + t) * H + i_h, s_u, offs_k, mask_k, offs_v,
                                                           mask_v, K, V)

    # -- the token loop ----------------------------------------------------------------------------
    for t in range(T):
        p_t = (row0 + t) * H + i_h
        if CAUSAL:
            b_S, b_z, b_crun = _performer_recurrent_update(k, v, c, b_omega, b_rm, b_S, b_z, b_crun, p_t, s_u,
                                                           offs_k, mask_k, offs_v, mask_v, K, V)
        b_uq = s_u * tl.load(q + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        b_l = tl.sum(b_omega * b_uq[None, :], 1) - 0.5 * tl.sum(b_uq * b_uq, 0)
        b_q = tl.exp(b_l - tl.load(a_q + p_t)) * b_rm
        tl.atomic_add(num + p_t * V + offs_v, tl.sum(b_q[:, None] * b_S, 0), mask=mask_v)  # (4) φ̂ᵀS
        tl.atomic_add(den + p_t, tl.sum(b_q * b_z, 0))

    # -- the final state ---------------------------------------------------------------------------
    if STORE_HT:
        store_state(ht, zt, p_S, p_z, mask_S, mask_m, b_S, b_z)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _row_max_tiles(K: int, M: int, element_size: int):
    """(BK, BM) of the row-max kernel: 128 frequencies a step, fewer at K = 256, where [128, 256] Ω
    tiles in Triton's default 3 stages ask for 393216 B of shared memory in fp32 (327936 in bf16),
    over an H100 block's 232448; BM 64 fits in bf16 (196864), 32 in fp32 (196608; sm_90, compiled
    on a CPU, not run on a GPU)."""
    BK = max(16, triton.next_power_of_2(K))
    return BK, max(16, min(triton.next_power_of_2(M), 128 if BK <= 128 else 64 if element_size == 2 else 32))


def _launch_row_max(x, omega, s_u):
    B, T, H, K = x.shape
    M = omega.shape[1]
    BK, BM = _row_max_tiles(K, M, x.element_size())
    out = torch.empty(B, T, H, device=x.device, dtype=torch.float32)
    _performer_row_max_kernel[(triton.cdiv(T, ROW_MAX_BT), B * H)](
        x, omega, out, s_u, T, H, K=K, M=M, BT=ROW_MAX_BT, BK=BK, BM=BM, num_warps=ROW_MAX_WARPS)
    return out


def _launch_fwd(q, k, v, omega, a_q, c, h0, z0, c0, s_u, eps, causal, output_final_state, chunk_size):
    """o [B, T, H, V] in v's dtype, den [B, T, H] (fp32) and the final state (ht, zt) or Nones."""
    if causal and chunk_size is not None and CHUNK_PARALLEL:
        return _launch_parallel_fwd(q, k, v, omega, a_q, c, h0, z0, c0, s_u, eps, output_final_state)
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    tiles = _tile_rule(K, V, M)
    atomic = triton.cdiv(M, tiles[2]) > 1 or chunk_size is None  # the recurrent kernel always adds
    f32 = dict(device=q.device, dtype=torch.float32)
    alloc = torch.zeros if atomic else torch.empty
    num, den = alloc(B, T, H, V, **f32), alloc(B, T, H, **f32)
    ht = torch.empty(B, H, M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, M, **f32) if output_final_state else None
    args = (q, k, v, omega, a_q, c, num, den, h0, z0, c0, ht, zt, s_u, M ** -0.5, T, H)
    _rf.launch_fwd(_performer_chunk_fwd_kernel, _performer_recurrent_fwd_kernel, args, q, V, M, tiles, atomic,
                   causal, chunk_size)
    return _rf.divide(num, den, eps, v.dtype), den, ht, zt


def _launch_parallel_fwd(q, k, v, omega, a_q, c, h0, z0, c0, s_u, eps, output_final_state):
    """The causal forward in two launches (the card's plan): the state walk writes each chunk's
    starting state, then every chunk's outputs. Returns what _launch_fwd returns."""
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    BT, BK, BV, (BMh, warps_h, stages_h), (BMo, warps_o, stages_o) = _rf.parallel_tiles(
        K, V, M, PARALLEL_BT, WALK_TILE, OUT_TILE, q.dtype == torch.float32)
    NT, R = triton.cdiv(T, BT), M * V + M  # a chunk's record: S, z
    f32 = dict(device=q.device, dtype=torch.float32)
    half = HALF_RECORDS and q.dtype != torch.float32
    hs = torch.empty(B, H, NT, R, device=q.device, dtype=torch.bfloat16 if half else torch.float32)
    o, den = v.new_empty(B, T, H, V), torch.empty(B, T, H, **f32)
    ht = torch.empty(B, H, M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, M, **f32) if output_final_state else None
    r_m, dot = M ** -0.5, _rf.dot_precision(q)
    _performer_chunk_h_kernel[(triton.cdiv(M, BMh), B * H)](
        k, v, omega, c, hs, h0, z0, c0, ht, zt, s_u, r_m, T, H, NT, K=K, V=V, M=M, R=R, BT=BT, BK=BK, BV=BV,
        BM=BMh, DOT=dot, num_warps=warps_h, num_stages=stages_h)
    _performer_chunk_out_kernel[(NT, B * H)](
        q, k, v, omega, a_q, c, c0, hs, o, den, s_u, eps, r_m, T, H, NT, K=K, V=V, M=M, R=R, BT=BT, BK=BK, BV=BV,
        BM=BMo, DOT=dot, DOTS_16=FEATURE_DOTS_16 and q.dtype != torch.float32, num_warps=warps_o,
        num_stages=stages_o)
    return o, den, ht, zt


def _launch_bwd(dnum, dden, dht, dzt, q, k, v, omega, a_q, c, h0, z0, c0, s_u, causal, chunk_size):
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    f32 = dict(device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.zeros(B, T, H, K, **f32), torch.zeros(B, T, H, K, **f32), torch.zeros(B, T, H, V, **f32)
    domega = torch.empty(B, H, M, K, **f32)
    dh0 = torch.empty(B, H, M, V, **f32) if h0 is not None else None
    dz0 = torch.empty(B, H, M, **f32) if h0 is not None else None
    args = (q, k, v, omega, a_q, c, dnum, dden, h0, z0, c0, dht, dzt, dq, dk, dv, domega, dh0, dz0,
            s_u, M ** -0.5, T, H)
    _rf.launch_bwd(_performer_chunk_bwd_kernel, args, q, V, M, _tile_rule(K, V, M), causal, chunk_size)
    return dq, dk, dv, domega.sum(0), dh0, dz0


# ------------------------------------------------------------------------------------------------
# Custom ops: what torch.compile(fullgraph=True) sees (the kernels stay opaque to it)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::performer_row_max", mutates_args=())
def _row_max_op(x: torch.Tensor, omega: torch.Tensor, s_u: float) -> torch.Tensor:
    return _launch_row_max(x.contiguous(), omega.contiguous(), s_u)


@_row_max_op.register_fake
def _(x, omega, s_u):
    return x.new_empty(x.shape[:3], dtype=torch.float32)


def _fwd_like(q, v, omega, output_final_state):
    B, T, H, _ = q.shape
    V, M = v.shape[-1], omega.shape[1]
    f32 = dict(dtype=torch.float32)
    e = q.new_empty(0, **f32)
    st = (q.new_empty(B, H, M, V, **f32), q.new_empty(B, H, M, **f32))
    return (v.new_empty(B, T, H, V), q.new_empty(B, T, H, **f32), *(st if output_final_state else (e, e)))


_FWD_SIG = ("(Tensor q, Tensor k, Tensor v, Tensor omega, Tensor a_q, Tensor c, Tensor? h0, Tensor? z0, "
            "Tensor c0, float s_u, float eps, bool causal, bool output_final_state, int chunk_size) "
            "-> (Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("zoo::performer_chunk_bwd", mutates_args=())
def _chunk_bwd_op(dnum: torch.Tensor, dden: torch.Tensor, dht: torch.Tensor | None, dzt: torch.Tensor | None,
                  q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, a_q: torch.Tensor,
                  c: torch.Tensor, h0: torch.Tensor | None, z0: torch.Tensor | None, c0: torch.Tensor,
                  s_u: float, causal: bool, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor, torch.Tensor, torch.Tensor]:
    dnum, dden, dht, dzt, h0, z0 = _rf.contig(dnum, dden, dht, dzt, h0, z0)
    q, k, v, omega, a_q, c, c0 = _rf.contig(q, k, v, omega, a_q, c, c0)  # saved inputs may be views (an expanded Ω)
    dq, dk, dv, domega, dh0, dz0 = _launch_bwd(dnum, dden, dht, dzt, q, k, v, omega, a_q, c, h0, z0, c0, s_u,
                                               causal, chunk_size)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), domega.to(omega.dtype), _rf.or_empty(dh0, c),
            _rf.or_empty(dz0, c))


@_chunk_bwd_op.register_fake
def _(dnum, dden, dht, dzt, q, k, v, omega, a_q, c, h0, z0, c0, s_u, causal, chunk_size):
    e = c.new_empty(0)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(omega),
            e if h0 is None else torch.empty_like(h0), e if z0 is None else torch.empty_like(z0))


def _setup_context(ctx, inputs, output):
    q, k, v, omega, a_q, c, h0, z0, c0, s_u, eps, causal, _, chunk_size = inputs
    ctx.save_for_backward(q, k, v, omega, a_q, c, h0, z0, c0, *output[:2])
    ctx.opts = (s_u, eps, causal, chunk_size if chunk_size > 0 else 64)


def _backward(ctx, do, dden, dht, dzt):
    q, k, v, omega, a_q, c, h0, z0, c0, o, den = ctx.saved_tensors
    s_u, eps, causal, chunk_size = ctx.opts
    dht, dzt = _rf.state_cotangents(dht, dzt, q, omega.shape[1], v.shape[-1])  # a missing half gets zeros
    dnum, dden = _rf.output_cotangents(do, dden, o, den, eps, v.shape[-1])  # (3) backwards, the floor constant
    dq, dk, dv, domega, dh0, dz0 = torch.ops.zoo.performer_chunk_bwd(
        dnum, dden, dht, dzt, q, k, v, omega, a_q, c, h0, z0, c0, s_u, causal, chunk_size)
    return (dq, dk, dv, domega, None, None, _rf.or_none(dh0), _rf.or_none(dz0), None, None, None, None, None, None)


_chunk_fwd_op, _recurrent_fwd_op = _rf.register_fwd_ops(
    "performer", _FWD_SIG, _launch_fwd, lambda *args: _fwd_like(args[0], args[2], args[3], args[-2]),
    _setup_context, _backward)


# ------------------------------------------------------------------------------------------------
# Public ops: the zoo's names and signatures
# ------------------------------------------------------------------------------------------------
def _check_fast(q, k, v, omega, initial_state, chunk_size=None):
    """The zoo's checks, then what the kernels add."""
    _check_inputs(q, k, v, omega, initial_state, chunk_size)
    _rf.check_kernel_inputs("performer", q, v, chunk_size, INTERPRET)


def _run(op, q, k, v, omega, scale, causal, eps, initial_state, output_final_state, chunk_size):
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    s_u = float(scale ** 0.5)
    omega32 = omega.float()
    # (2) the stabilisers, constants to autograd: the query shift a_q and the keys' prefix max c_t
    a_q = torch.ops.zoo.performer_row_max(q.detach(), omega32.detach(), s_u)  # [B, T, H]
    a_k = torch.ops.zoo.performer_row_max(k.detach(), omega32.detach(), s_u)
    if initial_state is None:
        h0 = z0 = None
        c0 = a_k.new_full((B, H), EMPTY_SCALE)
    else:
        h0, z0, c0 = initial_state[0].float(), initial_state[1].float(), initial_state[2].detach().float()
    c = _rf.running_scale(a_k, c0, causal)  # [B, T, H]
    o, _, ht, zt = op(q, k, v, omega32, a_q, c, h0, z0, c0, s_u, float(eps), causal, output_final_state,
                      chunk_size)  # (3) o = num / max(den, eps) in the op
    return o, ((ht, zt, c[:, -1]) if output_final_state else None)


def performer_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                    scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR, initial_state=None,
                    output_final_state: bool = False, chunk_size: int = 64):
    """zoo.performer.performer_chunk in Triton, forward and backward, feature map fused. Returns
    (o [B, T, H, V] in v's dtype, final_state (S, z, c) in float32, or None)."""
    _check_fast(q, k, v, omega, initial_state, chunk_size)
    return _run(torch.ops.zoo.performer_chunk_fwd, q, k, v, omega, scale, causal, eps, initial_state,
                output_final_state, chunk_size)


def performer_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                        scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                        initial_state=None, output_final_state: bool = False):
    """zoo.performer.performer_recurrent in Triton: a token loop for decoding (forward kernel; its
    gradient runs the chunk backward). Returns (o, final_state or None)."""
    _check_fast(q, k, v, omega, initial_state)
    return _run(torch.ops.zoo.performer_recurrent_fwd, q, k, v, omega, scale, causal, eps, initial_state,
                output_final_state, 0)


# ------------------------------------------------------------------------------------------------
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ------------------------------------------------------------------------------------------------
class PerformerAttention(_ZooLayer):
    """zoo.performer.PerformerAttention running the Triton chunk and recurrent ops
    (form="parallel" keeps the zoo's parallel form: there is no kernel for the oracle)."""

    chunk_op = staticmethod(performer_chunk)
    recurrent_op = staticmethod(performer_recurrent)


orthogonal_random_features = zperf.orthogonal_random_features
favor_feature_map = zperf.favor_feature_map
__all__ = ["performer_chunk", "performer_recurrent", "PerformerAttention", "orthogonal_random_features",
           "favor_feature_map"]
