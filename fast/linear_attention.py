"""Triton mirror of zoo/linear_attention.py; the math, shapes and equation numbers (1)-(4) are there.

Kernel plan
-----------
One kernel does the training work: a *sweep* over the chunks of one (batch, head), computing
the zoo's chunk form (4) in the forward's names,

    o_t = s_q · q_tᵀ (h0 + s_k · Σ_{j ≤ t} k_j v_jᵀ)                  (j ≥ t when REVERSE)

with the running state S [K, BV] in fp32 registers for the whole sweep: it is never written to
memory per chunk (fla's chunk op writes every S_n to HBM and reads it back; that traffic is what
this design removes). Launch grid: one program per (V-tile, batch·head); each program walks the
NT chunks of BT tokens in order, and per chunk computes
    o_c = (s_q·s_k · q_c k_cᵀ ⊙ M) v_c + s_q · q_c S     then     S += s_k · k_cᵀ v_c.
Without the mask (causal=False) every query needs the whole sequence's state: the program first
sweeps k, v to build it, then sweeps q to read it out (two passes, still q, k, v read once).

The backward is three more sweeps of the same kernel, because the gradients of linear attention
are themselves linear attentions (with s = scale, S_0 = h0, dS_T = dht):
    dq = s · sweep(q=do, k=v,  v=k,  h0=S_0ᵀ)                  forwards in time
    dk =     sweep(q=v,  k=do, v=q,  h0=dS_Tᵀ, s_k=s)          backwards (REVERSE); final state = dS_0ᵀ
    dv =     sweep(q=k,  k=q,  v=do, h0=dS_T,  s_k=s)          backwards (REVERSE)
Backward keeps q, k, v and the initial state (plus o and den when normalised); the states S
are recomputed by the sweeps, never stored.

normalize=True. The normaliser is the numerator with a column of ones appended to v:
den_t = s_q·q_tᵀ(z_0 + Σ k_j) + ε = (A 1)_t + s_q·q_t·z + ε, so the forward sweep carries the key
sum z [K] beside S and stores den [B, T, H] (fp32) for backward. Backward of o = n / den:
dn = do / den and dd = −(do·o) / den (one small kernel), and the ones column moves into the
contraction: dq's query becomes [dn | dd] against keys [v | 1], dk's query [v | 1] against keys
[dn | dd]. The sweep takes that extra coordinate as two per-token scalars a (query side) and
b (key side) and carries its state row u [BV] beside S, instead of widening K by one (which would
double the K tile at K = 128). dz_0 is the dk sweep's final u.

The recurrent op (decoding) has its own token-loop kernel, forward only; its backward is the chunk
backward above, since both forms compute the same function.

Cost at the headline size (bf16, B = 4, T = 8192, H = 16, K = V = 128, causal, normalize=False):
    bytes, forward: q, k, v read + o written = 4 × 134 MB = 537 MB; at 3.0 TB/s: 0.18 ms (the floor).
        (q, k are read once per V-tile, V/BV = 2 times; the second read mostly hits L2.)
    FLOPs, forward: per token and head 2·BT·K (q kᵀ) + 2·BT·V (A v) + 2·K·V (q S) + 2·K·V (kᵀ v)
        = 98 k, + 2·BT·K for q kᵀ recomputed by the second V-tile = 115 k; × 524 k token-heads
        = 60 GFLOP (A counted on the full BT × BT block): ~0.12 ms at 500 TFLOP/s, so the forward
        is bound by memory (0.18 ms) and by the chunk-to-chunk latency of one sweep, not by FLOPs.
    backward: three sweeps, each 3 tensors read + 1 written = 12 × 134 MB = 1.6 GB: floor 0.54 ms;
        FLOPs 3 × 52 G. So forward + backward ≥ 0.72 ms from memory traffic.
    first call: one compiled kernel for the forward (~1-3 s to compile for sm_90 on a CPU); the
        backward adds one or two more variants (REVERSE; the dq sweep may reuse the forward's).

Tile rule (no autotuning, nothing keyed on T or B): the contraction dim K sits in one tile (BK =
next power of two >= 16, up to 256), because S needs every row of k to update. BV takes the rest
of a budget of 8192 fp32 state elements per program (64 registers a thread at 4 warps), capped
at 64 so K = V = 128 gives two V-tiles: B·H·2 programs (128 at the headline size, about one per
H100 SM). 4 warps, 8 where the tile is full and the sweep also carries z or u, or is fp32
(never at K = 256: see _tile_rule); as many stages of q, k, v loads (up to 3) as fit 128 KB of
shared memory: 3 for bf16 at K = V = 128 (one program per SM, so loads in flight are what hides memory latency; measured on
the H100, see _tile_rule). Checked by
compiling ahead of time for sm_90 (Triton 3.9, no GPU; cuobjdump -res-usage), bf16, K = V = 128,
3 stages, 139 KB of shared memory at most:
    plain sweep (forward; dq, dk, dv when normalize=False)  4 warps: 238 registers, no spill
    non-causal                                              4 warps: 249 registers, no spill
    normalised forward (carries z)                          8 warps: 246 registers, no spill
    normalised backward sweeps (carry u)                    8 warps: 250 registers, no spill
    (at 4 warps the last two spill 168-192 bytes; at 2 stages the normalised forward spills 56)
    K = V = 64: 4 warps, 160 registers; K = 256: [256, 32] tiles at 4 warps, 1 stage, spill 104
    bytes (248 normalised): at 8 warps they would not, but that build faulted on the H100.
    fp32 inputs spill (80-300 B at 8 warps): they are for checking, not for speed.
The rule is a guess from those counts, not a measurement: `python -m fast.linear_attention` on the
GPU times the forward under other tiles beside it.
chunk_size above the default runs as a chunk of BT = _chunk_rows(...) tokens: chunk_size halved
while one chunk's staged q, k, v rows pass the H100's 227 KB of shared memory a block (bf16 K = 256
asked 272 KB at chunk 256, fp32 K = V = 128 448 KB at 256, fp32 K = 256 400 KB at 128; now 136,
224, 200 KB); the result differs from chunk_size's only by rounding. Compiled for sm_90 on a CPU;
not run on a GPU. The timed shape (bf16, K = V = 128, chunk 64) is unchanged.
T is in do_not_specialize, so a new length never recompiles.

Naming legend (fla's prefixes, STYLE rule 29):
    i_   program ids and loop indices (i_v V-tile, i_bh batch·head, i_t chunk)
    p_   pointers          b_   blocks held on chip (b_q, b_S, b_A ... zoo names after the prefix)
    offs_ offsets          mask_ masks (mask_t rows inside T, mask_A the causal mask)
    BT   chunk length (the zoo's L)    BK, BV  tiles of K and V    NT  number of chunks
    h0, ht   initial and final state S;  z0, zt  the normaliser state z;  u0, ut  the extra row u
    s_q, s_k  scales applied to q·(...) and to each k v outer product
"""

import os

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

import zoo.linear_attention as zla
from zoo.linear_attention import check_inputs
from fast._checks import check_device_and_dtype

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as @triton.jit does
STATE_ELEMENTS = 8192  # fp32 state elements per program: 64 registers per thread at 4 warps
MAX_BV = 64  # two V-tiles at V = 128: enough programs to fill an H100 (132 SMs) at B·H = 64
SMEM_BUDGET = 128 * 1024  # bytes of shared memory for pipelined loads (H100: 228 KB per SM)
SMEM_LIMIT = 232448  # bytes of shared memory one block may use on the H100 (past it: OutOfResources at launch)
MAX_HEAD_DIM = 256  # K and V up to this: the whole of K must fit one tile
MIN_CHUNK = 16  # tl.dot needs every dimension >= 16


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
def _tile_rule(DK: int, DV: int, BT: int, element_size: int, carries: bool = False):
    """(BK, BV, num_warps, num_stages) from the head dims, the dtype and whether the sweep carries
    the normaliser z or the extra row u (`carries`). See the card for the register counts."""
    BK = max(16, triton.next_power_of_2(DK))
    BV = max(16, min(triton.next_power_of_2(DV), MAX_BV, STATE_ELEMENTS // BK))
    if BK == 256:
        # [256, 32] at 4 warps, 1 stage. Not 8 warps: on the H100 (Triton 3.6) [256, 16] and
        # [256, 32] tiles at 8 warps read shared memory out of bounds in q·S (compute-sanitizer,
        # 2026-11-23); at 4 warps they agree with the zoo. The price is a spill (sm_90 compile:
        # 104 bytes plain, 248 normalised; [256, 64] at 8 warps spills 208 / 336).
        return BK, 32, 4, 1
    big = BK * BV >= STATE_ELEMENTS  # a full state tile: [128, 64]
    num_warps = 8 if big and (carries or element_size == 4) else 4
    stage_bytes = BT * (2 * BK + BV) * element_size  # one chunk of q, k and v
    # Up to 3 stages. Measured on the H100 (bf16, B·T = 32768, H = 16, D = 128, causal): forward
    # 0.203-0.204 ms at 3 stages (two runs) against 0.314 ms at 2 for the plain sweep; and at 2 the
    # normalised forward spills.
    num_stages = max(1, min(3, SMEM_BUDGET // stage_bytes))
    return BK, BV, num_warps, num_stages


def _chunk_rows(DK: int, DV: int, chunk_size: int, element_size: int) -> int:
    """BT, the chunk the sweep runs: chunk_size, halved while one chunk's q, k, v rows would pass the
    H100's shared memory a block. As compiled for sm_90, a single-stage sweep asks BT·(2·BK + BV)
    elements, fp32 BT·(3·BK + BV) (every single-stage compile measured, K = 16-256, BT = 128-512).
    So the default chunk (64) always fits and only larger ones shrink: bf16 K = 256 from 256 to 128,
    fp32 K = 64-128 from 256 to 128, fp32 K = 256 from 128 to 64. Pipelined sweeps (2-3 stages)
    stay within 1.5·SMEM_BUDGET. The result differs from chunk_size's only by rounding (the chunk
    form (4) is exact for any chunk length)."""
    BK, BV, _, _ = _tile_rule(DK, DV, chunk_size, element_size)
    row = ((3 if element_size == 4 else 2) * BK + BV) * element_size
    BT = chunk_size
    while BT > MIN_CHUNK and BT * row > SMEM_LIMIT:
        BT //= 2
    return BT


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
    "AUGMENT": lambda args: args["a"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _linear_attention_chunk_kernel(
    q, k, v, o,  # [B, T, H, K], [B, T, H, K], [B, T, H, V], [B, T, H, V]
    h0, ht,  # [B, H, K, V] fp32 or None
    z0, zt, den,  # [B, H, K], [B, H, K], [B, T, H] fp32 (normalize) or None
    a, b, u0, ut,  # [B, T, H], [B, T, H], [B, H, V], [B, H, V] fp32 (extra coordinate) or None
    s_q, s_k,  # fp32 scales
    T, H, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, EPS: tl.constexpr,
    CAUSAL: tl.constexpr, REVERSE: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, NORMALIZE: tl.constexpr, AUGMENT: tl.constexpr,
):
    """o_t = s_q·q_tᵀ(h0 + s_k Σ_{j ≤ t} k_j v_jᵀ) chunk by chunk (zoo (4)); ÷ den when NORMALIZE."""
    # -- map the program to a V-tile of one (batch, head) ------------------------------------------
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    s_q, s_k = tl.cast(s_q, tl.float32), tl.cast(s_k, tl.float32)  # under Inductor a float may come as fp64
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    row0 = i_b.to(tl.int64) * T  # first token of this sequence; int64: B·T·H·K may pass 2³¹
    NT = tl.cdiv(T, BT)

    # -- the state: S [BK, BV] and its companions, fp32 accumulators for the whole sweep -----------
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)  # (1) z: S's column for a value of 1 (NORMALIZE)
    b_u = tl.zeros([BV], dtype=tl.float32)  # S's row for the extra key coordinate b (AUGMENT)
    p_S = i_bh.to(tl.int64) * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_S = mask_k[:, None] & mask_v[None, :]
    if HAS_H0:
        b_S += tl.load(h0 + p_S, mask=mask_S, other=0.0).to(tl.float32)
        if NORMALIZE:
            b_z += tl.load(z0 + i_bh * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if AUGMENT:
            b_u += tl.load(u0 + i_bh * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)

    # -- non-causal: every query reads the whole sequence's state, so build it first -------------
    if not CAUSAL:
        for i_t in range(NT):
            offs_t = i_t * BT + tl.arange(0, BT)
            mask_t = offs_t < T
            p_t = (row0 + offs_t) * H + i_h  # [BT] row index into the flattened [B·T·H, *]
            b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            b_S += s_k * tl.dot(tl.trans(b_k), b_v)  # (1) summed over every token
            if NORMALIZE:
                b_z += s_k * tl.sum(b_k.to(tl.float32), 0)
            if AUGMENT:
                b_b = tl.load(b + p_t, mask=mask_t, other=0.0)
                b_u += s_k * tl.sum(b_b[:, None] * b_v.to(tl.float32), 0)

    # -- the sweep: chunk by chunk, in time order (REVERSE: from the last chunk back) -------------
    for i_t in range(NT):
        i_c = NT - 1 - i_t if REVERSE else i_t
        offs_t = i_c * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        p_t = (row0 + offs_t) * H + i_h
        b_q = tl.load(q + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)

        # (4) inter-chunk: s_q · q_c S_{n-1}, what every earlier chunk left in the state.
        # S is rounded to q's dtype so the dot runs on tensor cores (fla does the same).
        b_o = s_q * tl.dot(b_q, b_S.to(b_q.dtype))  # [BT, BV] fp32
        if NORMALIZE:
            b_den = s_q * tl.sum(b_q.to(tl.float32) * b_z[None, :], 1)  # s_q · q_c z_{n-1} [BT]
        if AUGMENT:
            b_a = tl.load(a + p_t, mask=mask_t, other=0.0)
            b_o += s_q * b_a[:, None] * b_u[None, :]

        if CAUSAL:
            b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            # (4) intra-chunk: A = s_q·s_k · q_c k_cᵀ ⊙ M on the diagonal block, times v_c.
            b_A = tl.dot(b_q, tl.trans(b_k))  # [BT, BT] fp32
            if AUGMENT:
                b_b = tl.load(b + p_t, mask=mask_t, other=0.0)
                b_A += b_a[:, None] * b_b[None, :]  # the extra coordinate's a_t·b_j
            if REVERSE:
                mask_A = offs_t[:, None] <= offs_t[None, :]  # j ≥ t
            else:
                mask_A = offs_t[:, None] >= offs_t[None, :]  # j ≤ t
            b_A = tl.where(mask_A, (s_q * s_k) * b_A, 0.0)  # where, not ×: inf·0 would be NaN
            b_o += tl.dot(b_A.to(b_v.dtype), b_v)
            if NORMALIZE:
                b_den += tl.sum(b_A, 1)  # A 1: the ones column of v
            # (4) state pass: S_n = S_{n-1} + s_k · k_cᵀ v_c, after the chunk has read S_{n-1}.
            b_S += s_k * tl.dot(tl.trans(b_k), b_v)
            if NORMALIZE:
                b_z += s_k * tl.sum(b_k.to(tl.float32), 0)
            if AUGMENT:
                b_u += s_k * tl.sum(b_b[:, None] * b_v.to(tl.float32), 0)

        if NORMALIZE:
            b_den += EPS  # (2) the divisor s·qᵀz + ε, stored for backward
            b_o = b_o / b_den[:, None]
            if i_v == 0:
                tl.store(den + p_t, b_den, mask=mask_t)
        tl.store(o + p_t[:, None] * V + offs_v[None, :], b_o.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])

    # -- the final state ------------------------------------------------------------------------
    if STORE_HT:
        tl.store(ht + p_S, b_S, mask=mask_S)
        if NORMALIZE:
            if i_v == 0:
                tl.store(zt + i_bh * K + offs_k, b_z, mask=mask_k)
        if AUGMENT:
            tl.store(ut + i_bh * V + offs_v, b_u, mask=mask_v)


@triton.jit(do_not_specialize=["T"])
def _linear_attention_normalize_bwd_kernel(do, o, den, dn, dd, T, H, V: tl.constexpr,
                                           BT: tl.constexpr, BV: tl.constexpr):
    """o = n / den  ⇒  dn = do / den,  dd = −(do·o) / den   (rows of [B·T·H, V])."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t = i_t * BT + tl.arange(0, BT)
    offs_v = tl.arange(0, BV)
    mask_t = offs_t < T
    mask = mask_t[:, None] & (offs_v < V)[None, :]
    p_t = (i_b.to(tl.int64) * T + offs_t) * H + i_h
    p_x = p_t[:, None] * V + offs_v[None, :]
    b_do = tl.load(do + p_x, mask=mask, other=0.0).to(tl.float32)
    b_o = tl.load(o + p_x, mask=mask, other=0.0).to(tl.float32)
    b_den = tl.load(den + p_t, mask=mask_t, other=1.0)
    tl.store(dn + p_x, (b_do / b_den[:, None]).to(dn.dtype.element_ty), mask=mask)
    tl.store(dd + p_t, -tl.sum(b_do * b_o, 1) / b_den, mask=mask_t)


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _linear_attention_recurrent_fwd_kernel(
    q, k, v, o, h0, ht, z0, zt, den, scale,
    T, H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EPS: tl.constexpr, CAUSAL: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    """Token by token: S_t = S_{t-1} + k_t v_tᵀ, o_t = s·q_tᵀ S_t (÷ s·q_tᵀ z_t + ε) (zoo (1)-(2))."""
    # -- map the program to a V-tile of one (batch, head) ------------------------------------------
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    scale = tl.cast(scale, tl.float32)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    row0 = i_b.to(tl.int64) * T

    # -- the state, fp32 ---------------------------------------------------------------------------
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)
    p_S = i_bh.to(tl.int64) * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_S = mask_k[:, None] & mask_v[None, :]
    if HAS_H0:
        b_S += tl.load(h0 + p_S, mask=mask_S, other=0.0).to(tl.float32)
        if NORMALIZE:
            b_z += tl.load(z0 + i_bh * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    if not CAUSAL:  # every query reads the state after the whole sequence
        for t in range(T):
            p_t = (row0 + t) * H + i_h
            b_k = tl.load(k + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            b_v = tl.load(v + p_t * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
            b_S += b_k[:, None] * b_v[None, :]
            b_z += b_k

    # -- the token loop ----------------------------------------------------------------------------
    for t in range(T):
        p_t = (row0 + t) * H + i_h
        b_q = scale * tl.load(q + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if CAUSAL:
            b_k = tl.load(k + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            b_v = tl.load(v + p_t * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
            b_S += b_k[:, None] * b_v[None, :]  # (1) S_t = S_{t-1} + k_t v_tᵀ
            b_z += b_k  # (1) z_t = z_{t-1} + k_t
        b_o = tl.sum(b_q[:, None] * b_S, 0)  # (2) s·q_tᵀ S_t [BV]
        if NORMALIZE:
            b_den = tl.sum(b_q * b_z, 0) + EPS  # (2) s·q_tᵀ z_t + ε
            b_o = b_o / b_den
            if i_v == 0:
                tl.store(den + p_t, b_den)
        tl.store(o + p_t * V + offs_v, b_o.to(o.dtype.element_ty), mask=mask_v)

    # -- the final state ------------------------------------------------------------------------
    if STORE_HT:
        tl.store(ht + p_S, b_S, mask=mask_S)
        if NORMALIZE:
            if i_v == 0:
                tl.store(zt + i_bh * K + offs_k, b_z, mask=mask_k)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _sweep(q, k, v, *, h0=None, z0=None, a=None, b=None, u0=None, s_q=1.0, s_k=1.0, causal=True,
           reverse=False, normalize=False, store_final=False, chunk_size=64, tiles=None):
    """Launch one sweep (see the card). Returns (o, den, ht, zt, ut), None where not computed.
    `tiles` = (BK, BV, num_warps, num_stages) overrides the rule (for the benchmark below only)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    BT = _chunk_rows(DK, DV, chunk_size, q.element_size())
    BK, BV, num_warps, num_stages = tiles or _tile_rule(DK, DV, BT, q.element_size(), normalize or a is not None)
    f32 = dict(device=q.device, dtype=torch.float32)
    o = torch.empty(B, T, H, DV, device=q.device, dtype=v.dtype)
    den = torch.empty(B, T, H, **f32) if normalize else None
    ht = torch.empty(B, H, DK, DV, **f32) if store_final else None
    zt = torch.empty(B, H, DK, **f32) if store_final and normalize else None
    ut = torch.empty(B, H, DV, **f32) if store_final and a is not None else None
    grid = (triton.cdiv(DV, BV), B * H)
    _linear_attention_chunk_kernel[grid](
        q, k, v, o, h0, ht, z0, zt, den, a, b, u0, ut, float(s_q), float(s_k),
        T, H, K=DK, V=DV, BT=BT, BK=BK, BV=BV, EPS=zla.EPS, CAUSAL=causal, REVERSE=reverse,
        num_warps=num_warps, num_stages=num_stages)
    return o, den, ht, zt, ut


def _linear_attention_chunk_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state, chunk_size):
    """Forward: one sweep. Returns (o, ht, zt, den), None where not computed."""
    o, den, ht, zt, _ = _sweep(q, k, v, h0=h0, z0=z0, s_q=scale, causal=causal, normalize=normalize,
                               store_final=output_final_state, chunk_size=chunk_size)
    return o, ht, zt, den


def _linear_attention_chunk_bwd(do, dht, dzt, q, k, v, o, den, h0, z0, scale, causal, normalize, chunk_size):
    """Backward: (normalize: dn, dd) then the dq, dk, dv sweeps of the card. Returns (dq, dk, dv, dh0, dz0)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dn, extra_dq, extra_dk = do, {}, {}
    if normalize:
        # The state is the pair (S, z): if only one half has a cotangent, the other's is zero.
        if dht is not None or dzt is not None:
            dht = q.new_zeros(B, H, K, V, dtype=torch.float32) if dht is None else dht
            dzt = q.new_zeros(B, H, K, dtype=torch.float32) if dzt is None else dzt
        if h0 is not None and z0 is None:
            z0 = q.new_zeros(B, H, K, dtype=torch.float32)
        dn, dd = torch.empty_like(do), torch.empty(B, T, H, device=do.device, dtype=torch.float32)
        BT, BV = 64, max(16, triton.next_power_of_2(V))
        _linear_attention_normalize_bwd_kernel[(triton.cdiv(T, BT), B * H)](do, o, den, dn, dd, T, H, V=V, BT=BT,
                                                                            BV=BV)
        ones = torch.ones_like(dd)  # the ones column of v, as a per-token coordinate
        extra_dq = dict(a=dd, b=ones, u0=z0)  # dq's query [dn | dd] against keys [v | 1]
        extra_dk = dict(a=ones, b=dd, u0=dzt)  # dk's query [v | 1] against keys [dn | dd]
    S0_T = None if h0 is None else h0.transpose(-1, -2).contiguous()  # [B, H, V, K]
    dht_T = None if dht is None else dht.transpose(-1, -2).contiguous()  # [B, H, V, K]
    dq = _sweep(dn, v, k, h0=S0_T, s_q=scale, causal=causal, chunk_size=chunk_size, **extra_dq)[0]
    # dk's sweep ends holding dS_0ᵀ = (dS_T + s Σ q dnᵀ)ᵀ and, normalised, dz_0 = dz_T + s Σ dd q.
    dk, _, dh0_T, _, dz0 = _sweep(v, dn, q, h0=dht_T, s_k=scale, causal=causal, reverse=True,
                                  store_final=h0 is not None, chunk_size=chunk_size, **extra_dk)
    dv = _sweep(k, q, dn, h0=dht, s_k=scale, causal=causal, reverse=True, chunk_size=chunk_size)[0]
    dh0 = None if dh0_T is None else dh0_T.transpose(-1, -2).contiguous()  # [B, H, K, V]
    return dq, dk, dv, dh0, dz0


def _linear_attention_recurrent_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, _, _ = _tile_rule(K, V, 1, q.element_size())
    num_warps = 4  # a [BK, BV] state and [BK], [BV] vectors: 115-122 registers, no spill (sm_90)
    f32 = dict(device=q.device, dtype=torch.float32)
    o = torch.empty_like(v)
    den = torch.empty(B, T, H, **f32) if normalize else None
    ht = torch.empty(B, H, K, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, K, **f32) if output_final_state and normalize else None
    _linear_attention_recurrent_fwd_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, o, h0, ht, z0, zt, den, float(scale), T, H, K=K, V=V, BK=BK, BV=BV, EPS=zla.EPS,
        CAUSAL=causal, num_warps=num_warps, num_stages=1)
    return o, ht, zt, den


# ------------------------------------------------------------------------------------------------
# Custom ops: what torch.compile(fullgraph=True) sees (the kernels stay opaque to it)
# ------------------------------------------------------------------------------------------------
# Optional outputs come back as empty tensors (a custom op cannot return None).
def _or_empty(x, ref):
    return ref.new_empty(0) if x is None else x


def _or_none(x):
    return None if x is None or x.numel() == 0 else x


def _fwd_outputs_like(q, v, causal, normalize, output_final_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    f32 = dict(dtype=torch.float32)
    ht = q.new_empty(B, H, K, V, **f32) if output_final_state else q.new_empty(0)
    zt = q.new_empty(B, H, K, **f32) if output_final_state and normalize else q.new_empty(0)
    den = q.new_empty(B, T, H, **f32) if normalize else q.new_empty(0)
    return torch.empty_like(v), ht, zt, den


@torch.library.custom_op("zoo::linear_attention_chunk_fwd", mutates_args=())
def _chunk_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None,
                  z0: torch.Tensor | None, scale: float, causal: bool, normalize: bool,
                  output_final_state: bool, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    h0, z0 = (None if x is None else x.contiguous() for x in (h0, z0))
    o, ht, zt, den = _linear_attention_chunk_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state,
                                                 chunk_size)
    return o, _or_empty(ht, q), _or_empty(zt, q), _or_empty(den, q)


@_chunk_fwd_op.register_fake
def _(q, k, v, h0, z0, scale, causal, normalize, output_final_state, chunk_size):
    return _fwd_outputs_like(q, v, causal, normalize, output_final_state)


@torch.library.custom_op("zoo::linear_attention_recurrent_fwd", mutates_args=())
def _recurrent_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None,
                      z0: torch.Tensor | None, scale: float, causal: bool, normalize: bool,
                      output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    h0, z0 = (None if x is None else x.contiguous() for x in (h0, z0))
    o, ht, zt, den = _linear_attention_recurrent_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state)
    return o, _or_empty(ht, q), _or_empty(zt, q), _or_empty(den, q)


@_recurrent_fwd_op.register_fake
def _(q, k, v, h0, z0, scale, causal, normalize, output_final_state):
    return _fwd_outputs_like(q, v, causal, normalize, output_final_state)


@torch.library.custom_op("zoo::linear_attention_chunk_bwd", mutates_args=())
def _chunk_bwd_op(do: torch.Tensor, dht: torch.Tensor | None, dzt: torch.Tensor | None, q: torch.Tensor,
                  k: torch.Tensor, v: torch.Tensor, o: torch.Tensor | None, den: torch.Tensor, h0: torch.Tensor | None,
                  z0: torch.Tensor | None, scale: float, causal: bool, normalize: bool,
                  chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # The saved q, k, v are the caller's tensors (any strides); the kernels index them densely.
    do, dht, dzt, q, k, v, h0, z0 = (None if x is None else x.contiguous() for x in (do, dht, dzt, q, k, v, h0, z0))
    dq, dk, dv, dh0, dz0 = _linear_attention_chunk_bwd(do, dht, dzt, q, k, v, o, den, h0, z0, scale, causal,
                                                       normalize, chunk_size)
    dh0 = q.new_empty(0) if dh0 is None else dh0.to(h0.dtype)
    dz0 = q.new_empty(0) if dz0 is None or z0 is None else dz0.to(z0.dtype)
    return dq, dk, dv, dh0, dz0


@_chunk_bwd_op.register_fake
def _(do, dht, dzt, q, k, v, o, den, h0, z0, scale, causal, normalize, chunk_size):
    dh0 = q.new_empty(0) if h0 is None else torch.empty_like(h0)
    dz0 = q.new_empty(0) if z0 is None or not normalize else torch.empty_like(z0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dh0, dz0


def _setup_context(ctx, inputs, output):
    q, k, v, h0, z0, scale, causal, normalize = inputs[:8]
    o, _, _, den = output
    ctx.save_for_backward(q, k, v, h0, z0, o if normalize else None, den)
    # The recurrent op has no chunk_size: its backward runs the chunk sweeps with the default.
    ctx.opts = (scale, causal, normalize, inputs[9] if len(inputs) > 9 else 64)


def _backward(ctx, do, dht, dzt, dden):
    q, k, v, h0, z0, o, den = ctx.saved_tensors
    scale, causal, normalize, chunk_size = ctx.opts
    dq, dk, dv, dh0, dz0 = torch.ops.zoo.linear_attention_chunk_bwd(
        do, _or_none(dht), _or_none(dzt), q, k, v, o, den, h0, z0, scale, causal, normalize, chunk_size)
    grads = (dq, dk, dv, _or_none(dh0), _or_none(dz0))
    return grads + (None,) * (len(ctx.needs_input_grad) - 5)


torch.library.register_autograd("zoo::linear_attention_chunk_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("zoo::linear_attention_recurrent_fwd", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# Public ops: the zoo's names and signatures
# ------------------------------------------------------------------------------------------------
def _check_fast(q, k, v, initial_state, normalize, chunk_size=None):
    """The zoo's checks, then what the kernels add: a device they can run on, fp16/bf16/fp32,
    head dims up to MAX_HEAD_DIM, chunks of at least MIN_CHUNK."""
    B, T, H, K, V = check_inputs(q, k, v, initial_state, normalize=normalize, chunk_size=chunk_size)
    check_device_and_dtype(q, "fast.linear_attention", INTERPRET, zoo="zoo.linear_attention")
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"head dims K = {K}, V = {V}: the kernels take K, V <= {MAX_HEAD_DIM}")
    if chunk_size is not None and chunk_size < MIN_CHUNK:
        raise ValueError(f"chunk_size must be a power of two >= {MIN_CHUNK} for tl.dot, got {chunk_size}")
    return K ** -0.5


def _split_state(initial_state, normalize):
    if initial_state is None:
        return None, None
    return tuple(initial_state) if normalize else (initial_state, None)


def _pack_state(ht, zt, normalize, output_final_state):
    if not output_final_state:
        return None
    return (ht, zt) if normalize else ht


def linear_attention_chunk(q, k, v, *, scale=None, causal=True, normalize=True, initial_state=None,
                           output_final_state=False, chunk_size=64):
    """zoo.linear_attention.linear_attention_chunk in Triton, forward and backward (the chunk sweep).
    Returns (o [B, T, H, V], final_state or None); the state is float32."""
    default_scale = _check_fast(q, k, v, initial_state, normalize, chunk_size)
    h0, z0 = _split_state(initial_state, normalize)
    o, ht, zt, _ = torch.ops.zoo.linear_attention_chunk_fwd(
        q, k, v, h0, z0, float(default_scale if scale is None else scale), causal, normalize, output_final_state,
        chunk_size)
    return o, _pack_state(ht, zt, normalize, output_final_state)


def linear_attention_recurrent(q, k, v, *, scale=None, causal=True, normalize=True, initial_state=None,
                               output_final_state=False):
    """zoo.linear_attention.linear_attention_recurrent in Triton: a token loop for decoding (forward
    kernel; its gradient runs the chunk backward sweeps). Returns (o, final_state or None)."""
    default_scale = _check_fast(q, k, v, initial_state, normalize)
    h0, z0 = _split_state(initial_state, normalize)
    o, ht, zt, _ = torch.ops.zoo.linear_attention_recurrent_fwd(
        q, k, v, h0, z0, float(default_scale if scale is None else scale), causal, normalize, output_final_state)
    return o, _pack_state(ht, zt, normalize, output_final_state)


# ------------------------------------------------------------------------------------------------
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ------------------------------------------------------------------------------------------------
class LinearAttention(zla.LinearAttention):
    """zoo.linear_attention.LinearAttention running the Triton chunk and recurrent ops
    (form="parallel" keeps the zoo's parallel form: there is no kernel for the oracle)."""

    chunk_op = staticmethod(linear_attention_chunk)
    recurrent_op = staticmethod(linear_attention_recurrent)


__all__ = ["linear_attention_chunk", "linear_attention_recurrent", "LinearAttention"]


# ------------------------------------------------------------------------------------------------
# Benchmark (GPU): python -m fast.linear_attention
# ------------------------------------------------------------------------------------------------
def _benchmark(B=4, T=8192, H=16, D=128, dtype=torch.bfloat16, causal=True, normalize=False, device="cuda"):
    """The headline numbers for the rule's tiles (first call, forward, forward + backward, fla beside
    them when it imports), then the forward under other tiles, so the rule can be checked."""
    import time

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(B, T, H, D, device=device, dtype=dtype, generator=g) for _ in range(4))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    q, k = zla.elu_feature_map(q), zla.elu_feature_map(k)
    kw = dict(causal=causal, normalize=normalize)
    start = time.perf_counter()
    linear_attention_chunk(q, k, v, **kw)
    sync()
    first_fwd = time.perf_counter() - start
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    start = time.perf_counter()
    torch.autograd.backward(linear_attention_chunk(qg, kg, vg, **kw)[0], do)
    sync()
    first_bwd = time.perf_counter() - start
    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200)  # noqa: E731
    fwd = bench(lambda: linear_attention_chunk(q, k, v, **kw))
    fwdbwd = bench(lambda: torch.autograd.backward(linear_attention_chunk(qg, kg, vg, **kw)[0], do))
    floor = 4 * q.numel() * q.element_size() / 3.0e12 * 1e3  # q, k, v read and o written at 3.0 TB/s
    print(f"B={B} T={T} H={H} D={D} {dtype} causal={causal} normalize={normalize}; floor {floor:.3f} ms; "
          f"tiles {_tile_rule(D, D, 64, q.element_size(), normalize)}")
    print(f"fast  fwd {fwd:.3f} ms  fwd+bwd {fwdbwd:.3f} ms  first call fwd {first_fwd:.2f} s, +bwd {first_bwd:.2f} s")
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError:
        chunk_linear_attn = None
    if chunk_linear_attn is not None:
        fla_fwd = bench(lambda: chunk_linear_attn(q, k, v, normalize=normalize))
        fla_fwdbwd = bench(lambda: torch.autograd.backward(chunk_linear_attn(qg, kg, vg, normalize=normalize)[0], do))
        print(f"fla   fwd {fla_fwd:.3f} ms  fwd+bwd {fla_fwdbwd:.3f} ms")
    o_rule = _sweep(q, k, v, s_q=D ** -0.5, normalize=normalize, causal=causal)[0]
    BK = max(16, triton.next_power_of_2(D))
    for BV, num_warps, num_stages in [(64, 4, 2), (64, 4, 3), (64, 8, 2), (32, 4, 2), (32, 4, 3), (32, 8, 2),
                                      (128, 8, 2), (64, 4, 1)]:
        tiles = (BK, BV, num_warps, num_stages)
        fn = lambda: _sweep(q, k, v, s_q=D ** -0.5, normalize=normalize, causal=causal, tiles=tiles)  # noqa: E731
        err = (fn()[0].float() - o_rule.float()).abs().max().item()
        print(f"  fwd BV={BV:3d} warps={num_warps} stages={num_stages}: {bench(fn):.3f} ms (diff vs rule {err:.1e})")


if __name__ == "__main__":
    _benchmark()
    _benchmark(normalize=True)
    _benchmark(causal=False)
    _benchmark(D=64)
