"""Triton mirror of zoo/based.py; the math (equations (1)-(5)), shapes and state layout are there.

Kernel plan
-----------
The 273-wide features φ never touch memory. The causal forward and backward run parallel over
chunks (their sections below); the rest (non-causal, or causal with CHUNK_PARALLEL = False /
CHUNK_PARALLEL_BWD = False) *sweeps*:
each program walks the chunks of one (batch, head) for one V-tile, in time order, holding the
state in fp32 registers split by the order of the Taylor map (the zoo's (5)):
    S⁰ [BV] = Σ v,    S¹ [BK, BV] = √c Σ k vᵀ,    S² [BK², BV] = (c/√2) Σ (k⊗k) vᵀ
and the normaliser z = (z⁰, z¹ [BK], z²[BK²]) beside it. These are exactly the rows of the zoo's
state S = Σ φ(k) vᵀ, so h0/ht load and store the zoo layout [B, H, M, V] with no conversion.
Per chunk of BT tokens:
    intra   s = c·q kᵀ, A = (1 + s + s²/2) ⊙ M on the fly from one [BT, K]·[K, BT] dot   (4)
    inter   o += S⁰ + √c·q S¹ + (c/√2)·(q⊗q) S²   with q⊗q built in registers [BT, BK²]   (5)
    state   S¹ += √c kᵀv, S² += (c/√2)(k⊗k)ᵀ v  (after the chunk has read the old state)   (2)
q⊗q is (q E_a) ⊙ (q E_b) with 0/1 selection matrices E_a[i, a·BK + b] = [i = a], E_b = [i = b]
(and (k⊗k)ᵀ = (E_aᵀkᵀ) ⊙ (E_bᵀkᵀ)): two tiny dots whose products are exactly the outer
product's, landing in the accumulator layout the next dot reads (FEATURES_BY_DOT; the backward
still builds them by broadcast and reshape, _outer).
Launch grid: one program per (V-tile, batch·head). Without the causal mask the program first
sweeps k, v to build the whole state, then reads it out.

Causal forward, parallel over chunks (the default: CHUNK_PARALLEL = True; issue 4)
----------------------------------------------------------------------------------
The sweep above is latency-bound (256 dependent ~5 µs steps a program, see below). The causal
forward instead runs two launches over chunks of BT = PARALLEL_BT = 128 tokens (fixed, whatever
chunk_size asks: the same function, only summation order moves), with a record between them, the
state before each chunk in the zoo's layout: hs [B, H, NT, M, V] in q's dtype, zs [B, H, NT, M] fp32.
φ's rows are handled uniformly, BR = 32 at a time (273 rows = 9 tiles at K = 16, 5% padding): row r
of φ(x) is w_r x̃_a x̃_b with x̃ = [x, 1] (row 0: 1·1; rows 1..K: √c x_a·1; the rest (c/√2) x_a x_b),
so a tile is (x̃ E_a) ⊙ (x̃ E_b)·w by two 0/1 selection dots, whichever orders it holds (_phi_rows).
  state walk, grid (φ row tiles, V-tiles, B·H), _based_chunk_state_kernel: phases 1 and 2 of
    fast/hrc_la.py fused as fla's chunk_fwd_h: each program walks the chunks in order, stores its
    [BR, BV] slice of the state before the chunk, then adds S += φ(K)ᵀ V, z += φ(K)ᵀ 1 (2). A step is
    one [BR, BT]·[BT, BV] dot and a store: short, with 576 programs (not one long sweep per tile).
  read-out, grid (V-tiles, chunks, B·H), _based_chunk_out_kernel: A = (1 + s + s²/2) ⊙ M from one
    q kᵀ, o = A v (4), then o += φ(q) S⁻, den += φ(q) z⁻ over the 9 row tiles of the record (5);
    o and den written once, no atomics. Non-causal and decode keep the sweeps.
Records in q's dtype (bf16 here): the sweep already rounds S¹ and S² to q's dtype before its
inter-chunk dots, so for them the record adds no rounding the sweep did not have; only S⁰ (row 0,
Σ v) is newly rounded, 2⁻⁹ relative, the size of the bf16 output's own rounding and far inside
tol_for(bf16, "cuda") (2e-2 relative RMS). z stays fp32, as in the sweep, and fp32
inputs keep fp32 records. ht, zt are the walk's fp32 registers.
Cost at the headline size (bf16, B = 4, T = 8192, H = 16, K = 16, V = 128; NT = 64, 4096 records):
  bytes: records 4096 × 273·128·2 B = 286 MB, written once and read once: 572 MB (fp32: 1.14 GB;
    BT = 64: twice); zs 2 × 4.5 MB; the walk reads k, v (151 MB: its 9 row-tile programs of one head
    read a chunk at about the same time, from L2), the read-out q, k, v (168 MB) and writes o, den
    (136 MB): ≈ 1.04 GB, 0.35 ms at 3 TB/s.
  FLOPs a token and head: walk 37 K (selection dots, x̃ padded to 32) + 74 K (φ(k)ᵀ v over 288 rows);
    read-out 37 K + 74 K (φ(q) S⁻) + 8 K (s) + 33 K (A v): ≈ 263 K, 138 GFLOP: 0.17-0.35 ms at
    800-400 TFLOP/s.  Floor ≈ 0.35 ms (bytes), 3.4× under the 1.2 ms target.
  sm_90 (ptxas, Triton 3.9, bf16, K = 16, V = 128): walk 199 registers at 4 warps (BV = 128), read-out
    190 at 8 warps, no spills; BR = 64 spills 136 B in the walk, the read-out at 4 warps 216 B.
  Measured (H100, 2026-11-23, run 17, benchmarks/results/h100-2026-11-23/run17-based-sweep.log):
    the op 0.894 ms against the sweep's 1.753 (state walk 0.457, read-out 0.434 ms); issue 4's
    forward target (<= 1.2 ms) met; 2.6x the ~0.35 ms floor. Of nine tile variants the rule's was
    the fastest (0.896; chunk 64: 1.04-1.39, chunk 256: 1.13, row tile 16: 1.20 ms). Output
    against the sweep: max |diff| 3.9e-3, rel RMS 2.0e-3 (bf16 ulp at max|o| 1.6e-2).

Causal backward, parallel over chunks (the default: CHUNK_PARALLEL_BWD = True; issue 4)
-------------------------------------------------------------------------------------
The sweeps (a), (b) below are latency-bound like the old forward (256 programs of 256 steps at 255
registers, ~8.4 ms at the headline size, run 18). The causal backward runs the math of (a), (b) in
four launches over the forward's chunks (BT = PARALLEL_BT = 128, BR = 32 rows of φ a tile):
  1. forward walk (_based_chunk_state_kernel, the forward's, recomputed: 0.46 ms measured in run 17)
     storing S⁻, z⁻ before each chunk;
  2. dq per (V-tile, chunk, batch·head) (_based_chunk_dq_kernel): dq = G k (intra) + ∂φ(q)/∂q ·
     (S⁻ dN + z⁻ dD) over the 9 row tiles of the record;
  3. reverse walk (the same kernel, REVERSE, over (q, do) in place of (k, v), last chunk first)
     storing the carry Q⁺ = dS_T + Σ_{later chunks} φ(q) dNᵀ and qz⁺ = dz_T + Σ φ(q) dD before each
     chunk; its final carry is dS₀, dz₀;
  4. dk, dv per (V-tile, chunk, batch·head) (_based_chunk_dkv_kernel): dk = Gᵀ q + ∂φ(k)/∂k ·
     (Q⁺ v + qz⁺), dv = Aᵀ dN + φ(k)ᵀ Q⁺.
One record buffer serves 1-2 and then 3-4 (S⁻ is dead once dq is written): 286 MB in q's dtype at
the headline size, plus 4.5 MB fp32 for z. Saving the forward's records instead would skip launch
1 (~0.46 ms) but hold those 286 MB from the forward to the backward; we recompute.
φ's Jacobian goes by row tile with the same selection matrices as φ (rows φ_r = w_r x̃_a x̃_b):
∂φ(x)/∂x · g = (g ⊙ w ⊙ x̃E_b) E_aᵀ + (g ⊙ w ⊙ x̃E_a) E_bᵀ, exact for any g, so user states and
cotangents need no symmetrising on this path (the sweeps' _sym_contract assumes symmetry; both give
the same function, as φ only sees the symmetric part). dN = do/den is never formed as a [BT, BV]
fp32 tile (at 4 warps that tile alone spilled the reverse walk): 1/den scales the rows of φ(q) in
the walk, of do vᵀ, A and do S⁻ᵀ in the per-chunk kernels. dq, dk are per-V-tile fp32 partials
the host sums (one tile at V = 128). Rounding is the sweeps': records in q's dtype (Q⁺ as the dk/dv
sweep rounded Q before its dots), dN·(q's dtype) at the dots; the Jacobian dots take fp32 at tf32.
Cost at the headline size (bf16, B = 4, T = 8192, H = 16, K = 16, V = 128; NT = 64):
  bytes: dD (reads do, o) 272 MB; walk 1: k, v 151 MB + records 291 MB; dq: q, k, v, do 302 MB +
    records 291 + dq fp32 34 MB; walk 3: q, do 151 + records 291 MB; dk/dv: q, k, v, do 302 +
    records 291 + dk fp32 34 + dv 134 MB; host sums of dq, dk 100 MB: ≈ 2.64 GB, 0.88 ms at 3 TB/s.
  FLOPs a token and head: each walk 111 K (as the forward's); dq 8 K (s) + 33 K (do vᵀ) + 8 K (G k)
    + 74 K (do S⁻ᵀ, 288 rows) + 37 K (selection) + 37 K (Jacobian, tf32); dk/dv the same 197 K with
    v Q⁺ᵀ for do S⁻ᵀ, plus 33 K (Aᵀ dN) + 74 K (φ(k)ᵀ Q⁺) = 303 K: ≈ 722 K, 378 GFLOP: 0.47-0.95 ms
    at 800-400 TFLOP/s.  Floor ≈ 0.9 ms (bytes and FLOPs alike); forward + backward ≈ 1.25 ms
    against the measured 0.9 ms forward, the target being 5 ms.
  sm_90 (ptxas, Triton 3.9, bf16, K = 16, V = 128, normalised): dq 182 registers, dk/dv 251 at 8
    warps (BV = 128), reverse walk 192 at 4 warps (BV = 128), no spills; the reverse walk with
    both state ends (dS_T in, dS₀ out) 255 registers, 8 B of spill at 2 stages, 16 B at the
    3 the launchers run (Triton's default). At 4 warps dq spills 952 B,
    dk/dv 928; BV = 64 at 8 warps spills nothing either (2 V-tiles, s and G computed twice).
  fp32 inputs take BV = 64 in dq and dk/dv (PARALLEL_BWD_BV_FP32): at 128 fp32 dk/dv asks 262 KB of
    shared memory, over the H100's 227 KB a block, at 64 it asks 164 KB (compiled for sm_90 on a
    CPU; not run on a GPU; the AOT test checks it). bf16 and fp16 keep 128.
  Measured (H100, 2026-11-23, run 19, benchmarks/results/h100-2026-11-23/run19-based-bwd-sweep.log;
    B 4, T 8192, H 16, V 128, bf16, causal, normalize): forward + backward 3.788 ms against 9.311
    with the sweeps (backward ≈ 2.89 against 8.41 ms); issue 4's fwd+bwd target (<= 5 ms) met.
    Gradients against the sweeps' in bf16: rel RMS 3.4-4.1e-3. The tile variants tried (V-tile 64
    in the read-out, 8 warps in the walk) were slower (4.77, 3.95 ms). The profiler's per-kernel sums
    (0.52 ms a step) fall far below the event time; where the rest goes was not found.

Backward (nothing but q, k, v, o and den = the normaliser is saved; the state is recomputed):
with dN = do/den, dD = −(do·o)/den (normalize; else dN = do, dD = 0) and G = (dN vᵀ + dD) ⊙
c(1 + s) ⊙ M (the kernel's derivative, 1 + s, times the gradient of A):
  (a) dq sweep, forwards: dq = G k  +  ∂φ(q)/∂q · (S dN + z dD)    (S, z: earlier chunks)
  (b) dk/dv sweep, backwards in time, carrying Q = dS_T + Σ φ(q) dNᵀ and its normaliser
      twin qz = dz_T + Σ φ(q) dD (later chunks):
         dk = Gᵀ q + ∂φ(k)/∂k · (Q v + qz),    dv = Aᵀ dN + φ(k)ᵀ Q;   the final Q is dS₀, qz dz₀.
The Jacobian of φ needs no features either: ∂φ(x)/∂x · g = √c·g¹ + 2(c/√2)·G² x, where G² is g's
second-order block as a K×K matrix, symmetric because k⊗k and q⊗q are (user-given states and
cotangents are symmetrised on the host first: φ(x) only sees their symmetric part).
dq and dk contract over all of V (through dN·v and S dN), so each V-tile writes a partial
[NV, B, T, H, K] fp32 that the host sums; dv and the state gradients are per tile.
The recurrent (decode) op is a token-loop kernel, forward only; its gradient runs the chunk
backward, since both forms compute the same function.

Cost at the headline size (bf16, B = 4, T = 8192, H = 16, K = d' = 16, V = 128, causal):
    bytes, forward: q, k (2 × 16.8 MB) + v, o (2 × 134 MB) = 302 MB: 0.10 ms at 3 TB/s.
    FLOPs, forward, per token and head and V-tile of 32 (at BT = 64): 2·BT·K (s) + 2·BT·BV (A v)
        + 2·2·BK²·BV (q⊗q S², S² update) + 2·2·BK·BV (order 1) = 2 k + 4 k + 32.8 k + 2 k
        ≈ 41 k, × 4 V-tiles × 524 k token-heads = 86 GFLOP (the s dot is repeated per tile):
        0.2 ms at 400 TFLOP/s. So the floor is the tensor cores on the d'²·V state term, about
        2× the bytes' 0.1 ms (fla's parallel_based spends O(T) per token instead: 2.83 ms here).
        In practice a sweep is latency-bound: T/BT = 256 dependent steps per program, 256 programs.
    backward: (a) ≈ 1.2×, (b) ≈ 2× the forward's FLOPs: floor ≈ 0.65 ms; fwd+bwd ≥ 0.85 ms.
Tile rule: BK = 16 (feature_dim ≤ 16, zero-padded), S² is BK² = 256 rows, BV from a budget
of 8192 fp32 state elements per program (BV = 32: 4 V-tiles at V = 128, B·H·4 = 256 programs),
BT = min(chunk_size, 32) rows per step, 8 warps, 2 load stages. Chosen from sm_90 compiles
(Triton 3.9, cuobjdump register counts): at BT = 64 the [BT, BK²] q⊗q block beside S² spills
(forward 240 B of stack at 8 warps, dk/dv 1.3 KB); at BT = 32, 8 warps the forward and dq
kernels spill nothing and dk/dv 200 B. The result differs from chunk_size's only by rounding.
Measured on the H100 with the reshape-built features: forward 2.79 ms, fwd+bwd 11.0 ms, about
5 µs per chunk step (255 registers at 8 warps: one program per SM, 256 programs in two waves),
so the sweep is bound by the instructions and barriers of one step, not by FLOPs or bytes.
The forward (bf16, BT = 32, BV = 32, 8 warps, 2 stages, sm_90) as compiled, by how φ's second
order is built:    registers  spill   SASS lines  shuffles  shared loads / stores  barriers
    reshape (_outer)         255      0       1976        298      213 / 96            51
    selection dots           255      0       1352         70       91 / 88            43
At BT = 64 the dots spill too (800 B). `python -m fast.based` on the GPU times the forward under
both and other tiles (BENCH_VARIANTS, with each one's compile counts) beside the rule. Measured
on the H100 (2026-11-23, bf16, the headline shape, forward): reshape 32/32 8 warps 2.77 ms,
dots 32/32 8 warps 1.91 ms, dots 32/32 4 warps 1.76 ms (the fastest of ten variants, although at
4 warps the forward spills 248 bytes: two programs share an SM), reshape 16/32 4 warps 1.80 ms.
So the forward runs the dots at 4 warps (_tile_rule(forward=True)); the backward keeps 8 (at 4 it spills more).
fwd+bwd 10.5 ms. Both stay above the issue's targets (1.2 ms, 5 ms).
T is in do_not_specialize: a new length never recompiles.

Naming legend (fla's prefixes, STYLE rule 29):
    i_   program ids and loop indices (i_v V-tile, i_bh batch·head, i_t chunk, i_r φ row tile)
    p_   pointers       b_   on-chip blocks (zoo names after the prefix: b_S2, b_A, b_o)
    offs_ offsets       mask_ masks (mask_t rows inside T, mask_f valid feature pairs)
    BT chunk (the zoo's L)  BK padded feature_dim  BV V-tile  NT number of chunks
    h0/ht, z0/zt initial/final state;  b_S0 b_S1 b_S2 / b_z0 b_z1 b_z2 its three orders
    hs, zs the chunk-parallel records (qs, qzs: the reverse walk's, Q⁺ and qz⁺);
    BR rows of φ a tile, BKX = x̃'s width;  b_F a tile of φ
    c the scale, s1 = √c, s2 = c/√2: the weights of the map's first and second order
"""

import os

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

import zoo.based as zb
from fast._checks import check_device_and_dtype

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as @triton.jit does
MAX_FEATURE_DIM = 16  # S² is feature_dim² rows: 16 → 256 rows, what one program's registers hold
STATE_ELEMENTS = 8192  # fp32 elements of S² per program (BK² · BV)
MIN_CHUNK = 16  # tl.dot needs every dimension >= 16
MAX_BT = 32  # chunk rows per step: at 64 the [BT, BK²] q⊗q block and S² spill registers (see card)
FEATURES_BY_DOT = True  # forward: q⊗q, k⊗k by selection dots (_outer_dot), not a reshape (see card)
INV_SQRT2 = tl.constexpr(0.7071067811865476)  # 1/√2, the second order's weight c/√2
# The causal chunk forward: True runs the chunk-parallel kernels (two launches, the card's
# "Causal forward, parallel over chunks"), False the serial sweep. Read at each call.
CHUNK_PARALLEL = True
PARALLEL_BT = 128  # their chunk (records every 128 tokens), whatever chunk_size asks: only rounding moves
PARALLEL_BR = 32  # rows of φ (of the state) a tile: 273 rows at K = 16 are 9 tiles, 5% padding
PARALLEL_BV = (128, 128)  # V-tile of the state walk and of the read-out (the card's sm_90 counts)
PARALLEL_WARPS = (4, 8)  # warps of the state walk and of the read-out
# The causal backward: True runs it parallel over chunks (two walks, the dq and dk/dv kernels per
# chunk, the card's "Causal backward, parallel over chunks"), False the dq and dk/dv sweeps.
CHUNK_PARALLEL_BWD = True
PARALLEL_BWD_BV = 128  # V-tile of the per-chunk dq and dk/dv kernels (the walks take PARALLEL_BV[0])
PARALLEL_BWD_BV_FP32 = 64  # ... for fp32 inputs: at 128 dk/dv asks 262 KB of shared memory (H100: 227 KB)
PARALLEL_BWD_WARPS = 8


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
def _tile_rule(V: int, chunk_size: int, forward: bool = False):
    """(BT, BK, BV, num_warps, num_stages) from the head dims alone (see the card); the forward
    sweep runs at 4 warps, the backward's at 8 (measured on the H100, see the card)."""
    BT = min(chunk_size, MAX_BT)
    BK = MAX_FEATURE_DIM
    BV = max(16, min(triton.next_power_of_2(V), STATE_ELEMENTS // (BK * BK)))
    if INTERPRET:
        return BT, BK, BV, 1, 1
    return BT, BK, BV, 4 if forward else 8, 2


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _outer(x, BT: tl.constexpr, BK: tl.constexpr):
    """[BT, BK] -> [BT, BK²]: each row's x⊗x, flattened row-major (index a·BK + b)."""
    return tl.reshape(x[:, :, None] * x[:, None, :], (BT, BK * BK))


@triton.jit
def _selectors(BK: tl.constexpr, dtype: tl.constexpr):
    """0/1 matrices that pick φ's second-order factors by a dot (FEAT_DOT): with f = a·BK + b,
    E_a[i, f] = [i = a], E_b[i, f] = [i = b] ([BK, BK²]) and their transposes ([BK², BK])."""
    offs_k = tl.arange(0, BK)
    offs_f = tl.arange(0, BK * BK)
    E_a = (offs_k[:, None] == offs_f[None, :] // BK).to(dtype)
    E_b = (offs_k[:, None] == offs_f[None, :] % BK).to(dtype)
    ET_a = (offs_f[:, None] // BK == offs_k[None, :]).to(dtype)
    ET_b = (offs_f[:, None] % BK == offs_k[None, :]).to(dtype)
    return E_a, E_b, ET_a, ET_b


@triton.jit
def _outer_dot(x, E_a, E_b, PREC: tl.constexpr):
    """[BT, BK] -> [BT, BK²]: x⊗x as (x E_a) ⊙ (x E_b). Each dot copies one entry of x (weights
    0/1, fp32 sums, "ieee" for fp32 inputs), so the products are _outer's exactly; the result sits
    in the tensor cores' accumulator layout, which the next dot takes as its A operand directly
    instead of through the reshape's shuffles and a shared-memory round trip."""
    return tl.dot(x, E_a, input_precision=PREC) * tl.dot(x, E_b, input_precision=PREC)


@triton.jit
def _outer_dot_t(x, ET_a, ET_b, PREC: tl.constexpr):
    """[BT, BK] -> [BK², BT]: (x⊗x)ᵀ as (E_aᵀ xᵀ) ⊙ (E_bᵀ xᵀ), the A operand of the state update."""
    xt = tl.trans(x)
    return tl.dot(ET_a, xt, input_precision=PREC) * tl.dot(ET_b, xt, input_precision=PREC)


@triton.jit
def _sym_contract(g2, x, BT: tl.constexpr, BK: tl.constexpr):
    """Σ_b G²[a, b] x_b per row, with G² = g2 viewed [BT, BK, BK] (symmetric)."""
    return tl.sum(tl.reshape(g2, (BT, BK, BK)) * x[:, None, :], 2)


@triton.jit
def _state_offsets(K: tl.constexpr, BK: tl.constexpr):
    """Rows of the zoo's state [M] for the first and second order, and their masks."""
    offs_k = tl.arange(0, BK)
    offs_f = tl.arange(0, BK * BK)
    offs_a, offs_b = offs_f // BK, offs_f % BK
    rows1 = 1 + offs_k  # φ's x block
    rows2 = 1 + K + offs_a * K + offs_b  # φ's vec(x xᵀ) block
    return rows1, offs_k < K, rows2, (offs_a < K) & (offs_b < K)


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _based_chunk_fwd_kernel(
    q, k, v, o,  # [B, T, H, K], [B, T, H, K], [B, T, H, V], [B, T, H, V]
    h0, ht, z0, zt,  # [B, H, M, V], [B, H, M] fp32 or None
    den,  # [B, T, H] fp32 (normalize) or None
    scale, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, EPS: tl.constexpr, CAUSAL: tl.constexpr,
    FEAT_DOT: tl.constexpr, PREC: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """o = [A V + φ(Q) S] / [A 1 + φ(Q) z + ε] chunk by chunk, φ never formed (zoo (4)-(5)).
    FEAT_DOT builds q⊗q and (k⊗k)ᵀ with selection dots (_outer_dot) instead of a reshape."""
    # -- map the program to a V-tile of one (batch, head) ------------------------------------------
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c = tl.cast(scale, tl.float32)  # under Inductor a float may arrive as fp64
    s1, s2 = tl.sqrt(c), c * INV_SQRT2
    rows1, mask_k, rows2, mask_f = _state_offsets(K, BK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    row0 = i_b.to(tl.int64) * T  # first token of this sequence; int64: B·T·H·V may pass 2³¹
    NT = tl.cdiv(T, BT)
    E_a, E_b, ET_a, ET_b = _selectors(BK, q.dtype.element_ty)  # used only under FEAT_DOT

    # -- the state by order, fp32 accumulators for the whole sweep --------------------------------
    b_S0 = tl.zeros([BV], dtype=tl.float32)
    b_S1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_S2 = tl.zeros([BK * BK, BV], dtype=tl.float32)
    b_z0 = tl.sum(tl.zeros([BK], dtype=tl.float32), 0)
    b_z1 = tl.zeros([BK], dtype=tl.float32)
    b_z2 = tl.zeros([BK * BK], dtype=tl.float32)
    if HAS_H0:
        p_S = h0 + i_bh.to(tl.int64) * M * V
        p_z = z0 + i_bh.to(tl.int64) * M
        b_S0 += tl.load(p_S + offs_v, mask=mask_v, other=0.0)
        b_S1 += tl.load(p_S + rows1[:, None] * V + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        b_S2 += tl.load(p_S + rows2[:, None] * V + offs_v[None, :], mask=mask_f[:, None] & mask_v[None, :], other=0.0)
        b_z0 += tl.load(p_z)
        b_z1 += tl.load(p_z + rows1, mask=mask_k, other=0.0)
        b_z2 += tl.load(p_z + rows2, mask=mask_f, other=0.0)

    # -- non-causal: every query reads the whole sequence's state, so build it first -------------
    if not CAUSAL:
        for i_t in range(NT):
            offs_t = i_t * BT + tl.arange(0, BT)
            mask_t = offs_t < T
            p_t = (row0 + offs_t) * H + i_h  # [BT] row index into the flattened [B·T·H, *]
            b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            b_kf = b_k.to(tl.float32)
            b_S0 += tl.sum(b_v.to(tl.float32), 0)  # (2) summed over every token
            b_S1 += tl.dot(tl.trans((s1 * b_kf).to(b_v.dtype)), b_v)
            if FEAT_DOT:
                b_kkT = s2 * _outer_dot_t(b_k, ET_a, ET_b, PREC)  # (1) φ(k)'s second order, [BK², BT]
                b_S2 += tl.dot(b_kkT.to(b_v.dtype), b_v)
                b_z2 += tl.sum(b_kkT, 1)
            else:
                b_kk = s2 * _outer(b_kf, BT, BK)  # (1) φ(k)'s second order [BT, BK²]
                b_S2 += tl.dot(tl.trans(b_kk.to(b_v.dtype)), b_v)
                b_z2 += tl.sum(b_kk, 0)
            b_z0 += tl.sum(mask_t.to(tl.float32), 0)  # φ(k)'s 1, for real tokens only
            b_z1 += s1 * tl.sum(b_kf, 0)

    # -- the sweep: chunk by chunk in time order ----------------------------------------------------
    for i_t in range(NT):
        offs_t = i_t * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        p_t = (row0 + offs_t) * H + i_h
        b_q = tl.load(q + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        b_qf = b_q.to(tl.float32)
        b_q1 = s1 * b_qf  # φ(q)'s first order [BT, BK]
        if FEAT_DOT:
            b_qq = s2 * _outer_dot(b_q, E_a, E_b, PREC)  # φ(q)'s second order [BT, BK²], registers only
        else:
            b_qq = s2 * _outer(b_qf, BT, BK)

        # (5) inter-chunk: φ(q)ᵀ S = S⁰ + √c q S¹ + (c/√2)(q⊗q) S². The state is rounded to q's
        # dtype so the dots run on tensor cores (fla does the same); accumulation stays fp32.
        b_o = b_S0[None, :] + tl.dot(b_q1.to(b_q.dtype), b_S1.to(b_q.dtype))
        b_o += tl.dot(b_qq.to(b_q.dtype), b_S2.to(b_q.dtype))  # [BT, BV] fp32
        b_den = b_z0 + tl.sum(b_q1 * b_z1[None, :], 1) + tl.sum(b_qq * b_z2[None, :], 1)  # [BT]

        if CAUSAL:
            b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            # (4) intra-chunk: the kernel 1 + s + s²/2 from one small dot, causal mask.
            b_s = c * tl.dot(b_q, tl.trans(b_k))  # [BT, BT] fp32
            b_A = tl.where(offs_t[:, None] >= offs_t[None, :], 1.0 + b_s + 0.5 * b_s * b_s, 0.0)
            b_o += tl.dot(b_A.to(b_v.dtype), b_v)
            b_den += tl.sum(b_A, 1)
            # (2) state pass, after the chunk has read the state of the chunks before it.
            b_kf = b_k.to(tl.float32)
            b_S0 += tl.sum(b_v.to(tl.float32), 0)
            b_S1 += tl.dot(tl.trans((s1 * b_kf).to(b_v.dtype)), b_v)
            if FEAT_DOT:
                b_kkT = s2 * _outer_dot_t(b_k, ET_a, ET_b, PREC)
                b_S2 += tl.dot(b_kkT.to(b_v.dtype), b_v)
                b_z2 += tl.sum(b_kkT, 1)
            else:
                b_kk = s2 * _outer(b_kf, BT, BK)
                b_S2 += tl.dot(tl.trans(b_kk.to(b_v.dtype)), b_v)
                b_z2 += tl.sum(b_kk, 0)
            b_z0 += tl.sum(mask_t.to(tl.float32), 0)  # padded keys are not neutral (φ(0)₀ = 1)
            b_z1 += s1 * tl.sum(b_kf, 0)

        if NORMALIZE:
            b_den += EPS  # (3) stored for backward
            b_o = b_o / b_den[:, None]
            if i_v == 0:
                tl.store(den + p_t, b_den, mask=mask_t)
        tl.store(o + p_t[:, None] * V + offs_v[None, :], b_o.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])

    # -- the final state, in the zoo's layout ---------------------------------------------------
    if STORE_HT:
        p_S = ht + i_bh.to(tl.int64) * M * V
        tl.store(p_S + offs_v, b_S0, mask=mask_v)
        tl.store(p_S + rows1[:, None] * V + offs_v[None, :], b_S1, mask=mask_k[:, None] & mask_v[None, :])
        tl.store(p_S + rows2[:, None] * V + offs_v[None, :], b_S2, mask=mask_f[:, None] & mask_v[None, :])
        if i_v == 0:
            p_z = zt + i_bh.to(tl.int64) * M
            tl.store(p_z, b_z0)
            tl.store(p_z + rows1, b_z1, mask=mask_k)
            tl.store(p_z + rows2, b_z2, mask=mask_f)


# ------------------------------------------------------------------------------------------------
# Causal forward, parallel over chunks (the default causal path: CHUNK_PARALLEL)
# ------------------------------------------------------------------------------------------------
# φ's rows as the zoo orders them (its state's rows), each the product of two entries of
# x̃ = [x, 1] (x̃_K = 1): row 0 is 1·1, rows 1..K are √c·x_a·1, the rest (c/√2)·x_a·x_b. So a tile of
# BR rows of φ(x) for a chunk is (x̃ E_a) ⊙ (x̃ E_b)·w with 0/1 selectors, whatever orders it holds.
@triton.jit
def _phi_rows(i_r, s1, s2, K: tl.constexpr, M: tl.constexpr, BR: tl.constexpr):
    """Rows [i_r·BR, i_r·BR + BR) of φ: (offs_r, mask_r, a, b, w) with φ_r(x) = w_r x̃_{a_r} x̃_{b_r};
    rows past M select nothing (a = b = −1), so their features are 0."""
    offs_r = i_r * BR + tl.arange(0, BR)
    mask_r = offs_r < M
    f = tl.maximum(offs_r - 1 - K, 0)  # index into vec(x xᵀ) for second-order rows
    a = tl.where(offs_r == 0, K, tl.where(offs_r <= K, offs_r - 1, f // K))
    b = tl.where(offs_r <= K, K, f % K)
    w = tl.where(offs_r == 0, 1.0, tl.where(offs_r <= K, s1, s2))
    return offs_r, mask_r, tl.where(mask_r, a, -1), tl.where(mask_r, b, -1), w


@triton.jit
def _load_x1(x, p_t, mask_t, one, K: tl.constexpr, BKX: tl.constexpr):
    """x̃ = [x, one] [BT, BKX] in x's dtype: the chunk's rows of x, column K set to `one` (1 for
    real tokens, 0 for padding rows where it matters), the rest zero. Also returns x alone."""
    offs_x = tl.arange(0, BKX)
    b_x = tl.load(x + p_t[:, None] * K + offs_x[None, :], mask=mask_t[:, None] & (offs_x < K)[None, :], other=0.0)
    b_x1 = tl.where(offs_x[None, :] == K, one[:, None].to(b_x.dtype), b_x)
    return b_x, b_x1


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
})
@triton.jit(do_not_specialize=["T", "NT"])
def _based_chunk_state_kernel(
    k, v, hs, zs,  # [B, T, H, K], [B, T, H, V]; records [B, H, NT, M, V] (q's dtype), [B, H, NT, M] fp32
    den, dd,  # REVERSE only: [B, T, H] fp32 (normalize) or None
    h0, ht, z0, zt,  # [B, H, M, V], [B, H, M] fp32 or None
    scale, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BKX: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
    REVERSE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """Phases 1 and 2 fused (fla's chunk_fwd_h), one program per (φ row tile, V-tile, batch·head):
    a walk over the chunks that stores the state before each chunk, then adds the chunk's
    increment (2), S += φ(K)ᵀ V and z += φ(K)ᵀ 1 for BR rows of φ; φ(k)ᵀ is built on chip by two
    selection dots. The step is one [BR, BT]·[BT, BV] dot and a store: short, so the serial walk
    is not the bottleneck the full sweep's step was.
    REVERSE is the backward's walk (card, (b)) with (k, v) = (q, do): last chunk first, it stores
    the carry Q = dS_T + Σ_{later chunks} φ(q) dNᵀ before each chunk and adds Q += φ(Q)ᵀ dN,
    qz += φ(Q)ᵀ dD, with dN = do/den, dD = dd (normalize; else dN = do and qz stays dz_T);
    h0/z0 are then dS_T/dz_T and ht/zt receive dS₀/dz₀."""
    i_r, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    c = tl.cast(scale, tl.float32)
    offs_r, mask_r, r_a, r_b, r_w = _phi_rows(i_r, tl.sqrt(c), c * INV_SQRT2, K, M, BR)
    offs_x = tl.arange(0, BKX)
    ET_a = (r_a[:, None] == offs_x[None, :]).to(k.dtype.element_ty)  # [BR, BKX]
    ET_b = (r_b[:, None] == offs_x[None, :]).to(k.dtype.element_ty)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_S = mask_r[:, None] & (offs_v < V)[None, :]
    p_S = offs_r[:, None] * V + offs_v[None, :]  # [BR, BV] offsets inside one [M, V] state
    row0 = i_b.to(tl.int64) * T

    b_S = tl.zeros([BR, BV], dtype=tl.float32)
    b_z = tl.zeros([BR], dtype=tl.float32)
    if HAS_H0:
        b_S += tl.load(h0 + i_bh.to(tl.int64) * M * V + p_S, mask=mask_S, other=0.0)
        b_z += tl.load(z0 + i_bh.to(tl.int64) * M + offs_r, mask=mask_r, other=0.0)
    for i_t in range(NT):
        i_c = NT - 1 - i_t if REVERSE else i_t
        # the state before chunk i_c: what its queries read (5) (REVERSE: what its keys are asked)
        i_rec = i_bh.to(tl.int64) * NT + i_c
        tl.store(hs + i_rec * M * V + p_S, b_S.to(hs.dtype.element_ty), mask=mask_S)
        if i_v == 0:
            tl.store(zs + i_rec * M + offs_r, b_z, mask=mask_r)
        offs_t = i_c * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        p_t = (row0 + offs_t) * H + i_h
        _, b_k1 = _load_x1(k, p_t, mask_t, mask_t, K, BKX)  # padding keys' 1 is 0: φ(pad) = 0
        b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & (offs_v < V)[None, :], other=0.0)
        # (1) φ(k)ᵀ, these BR rows [BR, BT], then (2) the chunk's increment
        b_kT = tl.trans(b_k1)
        b_F = r_w[:, None] * (tl.dot(ET_a, b_kT, input_precision=PREC) * tl.dot(ET_b, b_kT, input_precision=PREC))
        if REVERSE and NORMALIZE:  # qz += φ(Q)ᵀ dD; Q += (φ(Q)/den)ᵀ do = φ(Q)ᵀ dN (no [BT, BV] fp32 tile)
            b_z += tl.sum(b_F * tl.load(dd + p_t, mask=mask_t, other=0.0)[None, :], 1)
            b_F = b_F / tl.load(den + p_t, mask=mask_t, other=1.0)[None, :]
        b_S += tl.dot(b_F.to(b_v.dtype), b_v)
        if not REVERSE:
            b_z += tl.sum(b_F, 1)
    if STORE_HT:
        tl.store(ht + i_bh.to(tl.int64) * M * V + p_S, b_S, mask=mask_S)
        if i_v == 0:
            tl.store(zt + i_bh.to(tl.int64) * M + offs_r, b_z, mask=mask_r)


@triton.jit
def _chunk_program(q, k, v, scale, T, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKX: tl.constexpr,
                   BV: tl.constexpr):
    """What a per-chunk program (grid (V-tiles, chunks, B·H)) starts from: its ids, the scale's
    weights c, s1 = √c, s2 = c/√2, offsets and masks, and the chunk's q, q̃, k, k̃ [BT, BKX] (x̃ = [x, 1],
    1 for real tokens only) and v [BT, BV]; what a kernel does not use is compiled away."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    c = tl.cast(scale, tl.float32)
    offs_x = tl.arange(0, BKX)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    offs_t = i_t * BT + tl.arange(0, BT)
    mask_t = offs_t < T
    p_t = (i_b.to(tl.int64) * T + offs_t) * H + i_h
    b_q, b_q1 = _load_x1(q, p_t, mask_t, mask_t, K, BKX)
    b_k, b_k1 = _load_x1(k, p_t, mask_t, mask_t, K, BKX)
    b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
    return (i_v, i_t, i_bh, c, tl.sqrt(c), c * INV_SQRT2, offs_x, offs_v, mask_v, offs_t, mask_t, p_t,
            b_q, b_q1, b_k, b_k1, b_v)


@triton.jit
def _load_record(recs, zrecs, i_rec, offs_r, mask_r, offs_v, mask_v, M: tl.constexpr, V: tl.constexpr):
    """Rows offs_r of chunk record i_rec (a state walk's output): the state block [BR, BV], in the
    dtype it was stored in, and its normaliser rows [BR] fp32."""
    b_S = tl.load(recs + i_rec * M * V + offs_r[:, None] * V + offs_v[None, :],
                  mask=mask_r[:, None] & mask_v[None, :], other=0.0)
    return b_S, tl.load(zrecs + i_rec * M + offs_r, mask=mask_r, other=0.0)


@triton.heuristics({"NORMALIZE": lambda args: args["den"] is not None})
@triton.jit(do_not_specialize=["T", "NT"])
def _based_chunk_out_kernel(
    q, k, v, o, den, hs, zs,  # inputs, outputs, and the records of the state before each chunk
    scale, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BKX: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr, EPS: tl.constexpr,
    PREC: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """Phase 3, one program per (V-tile, chunk, batch·head): the chunk's outputs, written once:
        intra  A = (1 + s + s²/2) ⊙ M, s = c q kᵀ;  o = A v, den = A 1                        (4)
        inter  o += φ(q) S⁻, den += φ(q) z⁻, φ(q) BR rows at a time by selection dots        (5)
    with S⁻, z⁻ the record phase 1 stored for this chunk."""
    (i_v, i_t, i_bh, c, s1, s2, offs_x, offs_v, mask_v, offs_t, mask_t, p_t,
     b_q, b_q1, b_k, b_k1, b_v) = _chunk_program(q, k, v, scale, T, H, K, V, BT, BKX, BV)

    # (4) intra-chunk (padding keys sit after every real query, so the causal mask drops them)
    b_s = c * tl.dot(b_q, tl.trans(b_k))  # [BT, BT] fp32
    b_A = tl.where(offs_t[:, None] >= offs_t[None, :], 1.0 + b_s + 0.5 * b_s * b_s, 0.0)
    b_o = tl.dot(b_A.to(b_v.dtype), b_v)  # [BT, BV] fp32
    b_den = tl.sum(b_A, 1)

    # (5) inter-chunk, BR rows of φ(q) against the same rows of the stored state
    i_rec = i_bh.to(tl.int64) * NT + i_t
    for i_r in range(tl.cdiv(M, BR)):
        offs_r, mask_r, r_a, r_b, r_w = _phi_rows(i_r, s1, s2, K, M, BR)
        E_a = (offs_x[:, None] == r_a[None, :]).to(q.dtype.element_ty)  # [BKX, BR]
        E_b = (offs_x[:, None] == r_b[None, :]).to(q.dtype.element_ty)
        b_F = r_w[None, :] * (tl.dot(b_q1, E_a, input_precision=PREC) * tl.dot(b_q1, E_b, input_precision=PREC))
        b_S, b_z = _load_record(hs, zs, i_rec, offs_r, mask_r, offs_v, mask_v, M, V)  # [BR, BV] in q's dtype, [BR]
        b_o += tl.dot(b_F.to(b_S.dtype), b_S)
        b_den += tl.sum(b_F * b_z[None, :], 1)

    if NORMALIZE:
        b_den += EPS  # (3) stored for backward
        b_o = b_o / b_den[:, None]
        if i_v == 0:
            tl.store(den + p_t, b_den, mask=mask_t)
    tl.store(o + p_t[:, None] * V + offs_v[None, :], b_o.to(o.dtype.element_ty), mask=mask_t[:, None] & mask_v[None, :])


@triton.jit(do_not_specialize=["T"])
def _based_normalize_bwd_kernel(do, o, den, dd, T, H, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr):
    """o = n / den  ⇒  dD = −(do·o) / den, per token (the part of the gradient through den)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t = i_t * BT + tl.arange(0, BT)
    offs_v = tl.arange(0, BV)
    mask_t = offs_t < T
    p_t = (i_b.to(tl.int64) * T + offs_t) * H + i_h
    b_dot = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):  # V in tiles: V may be large
        offs = i_v * BV + offs_v
        mask = mask_t[:, None] & (offs < V)[None, :]
        b_do = tl.load(do + p_t[:, None] * V + offs[None, :], mask=mask, other=0.0).to(tl.float32)
        b_o = tl.load(o + p_t[:, None] * V + offs[None, :], mask=mask, other=0.0).to(tl.float32)
        b_dot += tl.sum(b_do * b_o, 1)
    b_den = tl.load(den + p_t, mask=mask_t, other=1.0)
    tl.store(dd + p_t, -b_dot / b_den, mask=mask_t)


# ------------------------------------------------------------------------------------------------
# Causal backward, parallel over chunks (the default causal path: CHUNK_PARALLEL_BWD)
# ------------------------------------------------------------------------------------------------
# The records come from _based_chunk_state_kernel: forwards over (k, v) for S⁻, z⁻ (dq), REVERSE
# over (q, do) for Q⁺, qz⁺ (dk, dv). φ's Jacobian by row tile: φ_r(x) = w_r x̃_a x̃_b, so
# ∂φ_r/∂x̃_i = w_r ([a_r = i] x̃_b + [b_r = i] x̃_a), and for a tile of row gradients g [BT, BR]
#     ∂φ(x)/∂x · g = (g ⊙ w ⊙ X_b) E_aᵀ + (g ⊙ w ⊙ X_a) E_bᵀ,   X_a = x̃ E_a, X_b = x̃ E_b,
# two more selection dots; it holds for any g (no symmetric part assumed, unlike _sym_contract).
@triton.jit
def _load_dN(do, den, dd, p_t, mask_t, offs_v, mask_v, first, V: tl.constexpr, NORMALIZE: tl.constexpr):
    """do [BT, BV] as stored, 1/den [BT] and dD = dd [BT] on the first V-tile only (dD does not
    depend on V: one tile adds its terms); without normalize 1 and 0. dN = do/den is never formed:
    1/den scales the rows of what do meets ([BT, BT] or [BT, BR]), not a [BT, BV] fp32 tile."""
    b_do = tl.load(do + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
    b_rden = tl.full(mask_t.shape, 1.0, tl.float32)
    b_dD = tl.zeros_like(b_rden)
    if NORMALIZE:
        b_rden = 1.0 / tl.load(den + p_t, mask=mask_t, other=1.0)
        b_dD = first * tl.load(dd + p_t, mask=mask_t, other=0.0)
    return b_do, b_rden, b_dD


@triton.jit
def _phi_vjp(b_g, b_x1, i_r, s1, s2, K: tl.constexpr, M: tl.constexpr, BKX: tl.constexpr, BR: tl.constexpr,
             PREC: tl.constexpr):
    """Rows i_r of φ for a chunk: returns (∂φ(x)/∂x · g [BT, BKX] fp32 (column K, the constant's,
    is the caller's to drop), φ(x)'s tile F [BT, BR] fp32); g [BT, BR] fp32."""
    _, _, r_a, r_b, r_w = _phi_rows(i_r, s1, s2, K, M, BR)
    offs_x = tl.arange(0, BKX)
    E_a = (offs_x[:, None] == r_a[None, :]).to(b_x1.dtype)  # [BKX, BR]
    E_b = (offs_x[:, None] == r_b[None, :]).to(b_x1.dtype)
    X_a = tl.dot(b_x1, E_a, input_precision=PREC)  # [BT, BR]: x̃_{a_r}, exact (0/1 weights, fp32 sums)
    X_b = tl.dot(b_x1, E_b, input_precision=PREC)
    b_gw = b_g * r_w[None, :]
    b_dx = tl.dot(b_gw * X_b, tl.trans(E_a).to(tl.float32), input_precision=PREC)
    b_dx += tl.dot(b_gw * X_a, tl.trans(E_b).to(tl.float32), input_precision=PREC)
    return b_dx, r_w[None, :] * X_a * X_b


@triton.jit
def _intra_bwd(b_q, b_k, b_v, b_do, b_rden, b_dD, offs_t, c):
    """(4) inside a chunk: s = c q kᵀ, A = (1 + s + s²/2) ⊙ M and G = (dN vᵀ + dD) ⊙ c(1 + s) ⊙ M,
    both [BT, BT] fp32 (rows queries t, columns keys j ≤ t); A's rows come scaled by 1/den, so
    that Aᵀ do is the Aᵀ dN of dv."""
    b_s = c * tl.dot(b_q, tl.trans(b_k))
    mask_A = offs_t[:, None] >= offs_t[None, :]
    b_dA = tl.dot(b_do, tl.trans(b_v)) * b_rden[:, None] + b_dD[:, None]
    b_A = tl.where(mask_A, (1.0 + b_s + 0.5 * b_s * b_s) * b_rden[:, None], 0.0)
    return b_A, tl.where(mask_A, b_dA * (c * (1.0 + b_s)), 0.0)


@triton.heuristics({"NORMALIZE": lambda args: args["den"] is not None})
@triton.jit(do_not_specialize=["T", "NT"])
def _based_chunk_dq_kernel(
    q, k, v, do, den, dd,  # inputs; den, dd [B, T, H] fp32 (normalize) or None
    dq,  # [NV, B, T, H, K] fp32: one partial per V-tile
    hs, zs,  # the forward walk's records S⁻ [B, H, NT, M, V] (q's dtype), z⁻ [B, H, NT, M] fp32
    scale, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BKX: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    """(a) per (V-tile, chunk, batch·head): dq = G k + ∂φ(q)/∂q · (S⁻ dN + z⁻ dD) (card)."""
    (i_v, i_t, i_bh, c, s1, s2, offs_x, offs_v, mask_v, offs_t, mask_t, p_t,
     b_q, b_q1, b_k, b_k1, b_v) = _chunk_program(q, k, v, scale, T, H, K, V, BT, BKX, BV)
    b_do, b_rden, b_dD = _load_dN(do, den, dd, p_t, mask_t, offs_v, mask_v, (i_v == 0).to(tl.float32), V, NORMALIZE)

    # intra-chunk: dq = G k
    b_A, b_G = _intra_bwd(b_q, b_k, b_v, b_do, b_rden, b_dD, offs_t, c)  # b_A unused here: compiled away
    b_dq = tl.dot(b_G.to(b_k.dtype), b_k)  # [BT, BKX]
    # inter-chunk: dφ(q) = S⁻ dN + z⁻ dD, BR rows at a time, then through φ's Jacobian
    i_rec = i_bh.to(tl.int64) * NT + i_t
    for i_r in range(tl.cdiv(M, BR)):
        offs_r = i_r * BR + tl.arange(0, BR)
        mask_r = offs_r < M
        b_S, b_z = _load_record(hs, zs, i_rec, offs_r, mask_r, offs_v, mask_v, M, V)  # [BR, BV], [BR]
        b_g = tl.dot(b_do, tl.trans(b_S)) * b_rden[:, None]  # [BT, BR]: S⁻ dN
        b_g += b_dD[:, None] * b_z[None, :]
        b_dx, b_F = _phi_vjp(b_g, b_q1, i_r, s1, s2, K, M, BKX, BR, PREC)
        b_dq += b_dx
    p_dq = dq + i_v.to(tl.int64) * (tl.num_programs(2) * T * K)  # this V-tile's partial
    tl.store(p_dq + p_t[:, None] * K + offs_x[None, :], b_dq, mask=mask_t[:, None] & (offs_x < K)[None, :])


@triton.heuristics({"NORMALIZE": lambda args: args["den"] is not None})
@triton.jit(do_not_specialize=["T", "NT"])
def _based_chunk_dkv_kernel(
    q, k, v, do, den, dd,  # inputs; den, dd [B, T, H] fp32 (normalize) or None
    dk, dv,  # [NV, B, T, H, K] fp32 partials, [B, T, H, V]
    qs, qzs,  # the reverse walk's records Q⁺ [B, H, NT, M, V] (q's dtype), qz⁺ [B, H, NT, M] fp32
    scale, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BKX: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    """(b) per (V-tile, chunk, batch·head): dk = Gᵀ q + ∂φ(k)/∂k · (Q⁺ v + qz⁺),
    dv = Aᵀ dN + φ(k)ᵀ Q⁺ (card), Q⁺ the carry of the later chunks."""
    (i_v, i_t, i_bh, c, s1, s2, offs_x, offs_v, mask_v, offs_t, mask_t, p_t,
     b_q, b_q1, b_k, b_k1, b_v) = _chunk_program(q, k, v, scale, T, H, K, V, BT, BKX, BV)
    first = (i_v == 0).to(tl.float32)
    b_do, b_rden, b_dD = _load_dN(do, den, dd, p_t, mask_t, offs_v, mask_v, first, V, NORMALIZE)

    # intra-chunk: dk = Gᵀ q, dv = Aᵀ dN (A's rows carry 1/den)
    b_A, b_G = _intra_bwd(b_q, b_k, b_v, b_do, b_rden, b_dD, offs_t, c)
    b_dk = tl.dot(tl.trans(b_G).to(b_q.dtype), b_q)  # [BT, BKX]
    b_dv = tl.dot(tl.trans(b_A).to(b_v.dtype), b_do)  # [BT, BV]: Aᵀ dN
    # inter-chunk: dφ(k) = Q⁺ v + qz⁺ through φ's Jacobian, dv += φ(k)ᵀ Q⁺, BR rows at a time
    i_rec = i_bh.to(tl.int64) * NT + i_t
    for i_r in range(tl.cdiv(M, BR)):
        offs_r = i_r * BR + tl.arange(0, BR)
        mask_r = offs_r < M
        b_Q, b_qz = _load_record(qs, qzs, i_rec, offs_r, mask_r, offs_v, mask_v, M, V)  # [BR, BV], [BR]
        b_g = tl.dot(b_v, tl.trans(b_Q))  # [BT, BR]
        b_g += first * b_qz[None, :]
        b_dx, b_F = _phi_vjp(b_g, b_k1, i_r, s1, s2, K, M, BKX, BR, PREC)
        b_dk += b_dx
        b_dv += tl.dot(b_F.to(b_Q.dtype), b_Q)
    p_dk = dk + i_v.to(tl.int64) * (tl.num_programs(2) * T * K)
    tl.store(p_dk + p_t[:, None] * K + offs_x[None, :], b_dk, mask=mask_t[:, None] & (offs_x < K)[None, :])
    tl.store(dv + p_t[:, None] * V + offs_v[None, :], b_dv.to(dv.dtype.element_ty),
             mask=mask_t[:, None] & mask_v[None, :])


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _based_chunk_bwd_dq_kernel(
    q, k, v, do, den, dd,  # inputs; den, dd [B, T, H] fp32 (normalize) or None
    dq,  # [NV, B, T, H, K] fp32: one partial per V-tile
    h0, z0,  # [B, H, M, V], [B, H, M] fp32 (second-order block symmetrised) or None
    scale, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_H0: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """dq = G k + ∂φ(q)/∂q·(S dN + z dD), G = (dN vᵀ + dD) ⊙ c(1 + s) ⊙ M (card, (a))."""
    # -- map the program --------------------------------------------------------------------------
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c = tl.cast(scale, tl.float32)
    s1, s2 = tl.sqrt(c), c * INV_SQRT2
    rows1, mask_k, rows2, mask_f = _state_offsets(K, BK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    row0 = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    first = (i_v == 0).to(tl.float32)  # the dD terms do not depend on V: one tile adds them

    # -- the state (orders 1 and 2: order 0 is constant in q), recomputed ------------------------
    b_S1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_S2 = tl.zeros([BK * BK, BV], dtype=tl.float32)
    b_z1 = tl.zeros([BK], dtype=tl.float32)
    b_z2 = tl.zeros([BK * BK], dtype=tl.float32)
    if HAS_H0:
        p_S = h0 + i_bh.to(tl.int64) * M * V
        b_S1 += tl.load(p_S + rows1[:, None] * V + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        b_S2 += tl.load(p_S + rows2[:, None] * V + offs_v[None, :], mask=mask_f[:, None] & mask_v[None, :], other=0.0)
        p_z = z0 + i_bh.to(tl.int64) * M
        b_z1 += tl.load(p_z + rows1, mask=mask_k, other=0.0)
        b_z2 += tl.load(p_z + rows2, mask=mask_f, other=0.0)
    if not CAUSAL:
        for i_t in range(NT):
            offs_t = i_t * BT + tl.arange(0, BT)
            mask_t = offs_t < T
            p_t = (row0 + offs_t) * H + i_h
            b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            b_kf = b_k.to(tl.float32)
            b_kk = s2 * _outer(b_kf, BT, BK)
            b_S1 += tl.dot(tl.trans((s1 * b_kf).to(b_v.dtype)), b_v)
            b_S2 += tl.dot(tl.trans(b_kk.to(b_v.dtype)), b_v)
            b_z1 += s1 * tl.sum(b_kf, 0)
            b_z2 += tl.sum(b_kk, 0)

    for i_t in range(NT):
        # -- load the chunk; dN = do / den ----------------------------------------------------------
        offs_t = i_t * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        p_t = (row0 + offs_t) * H + i_h
        mask_tk = mask_t[:, None] & mask_k[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        b_q = tl.load(q + p_t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0)
        b_qf = b_q.to(tl.float32)
        b_dN = tl.load(do + p_t[:, None] * V + offs_v[None, :], mask=mask_tv, other=0.0).to(tl.float32)
        b_dD = tl.zeros([BT], dtype=tl.float32)
        if NORMALIZE:
            b_dN = b_dN / tl.load(den + p_t, mask=mask_t, other=1.0)[:, None]
            b_dD = first * tl.load(dd + p_t, mask=mask_t, other=0.0)

        # -- inter-chunk: dφ(q) = S dN + z dD, then through φ's Jacobian --------------------------
        b_g1 = tl.dot(b_dN.to(b_q.dtype), tl.trans(b_S1.to(b_q.dtype))) + b_dD[:, None] * b_z1[None, :]
        b_g2 = tl.dot(b_dN.to(b_q.dtype), tl.trans(b_S2.to(b_q.dtype))) + b_dD[:, None] * b_z2[None, :]
        b_dq = s1 * b_g1 + (2.0 * s2) * _sym_contract(b_g2, b_qf, BT, BK)  # [BT, BK]

        if CAUSAL:
            b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0)
            b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_tv, other=0.0)
            # -- intra-chunk: G = (dN vᵀ + dD) ⊙ c(1 + s), causal -----------------------------------
            b_s = c * tl.dot(b_q, tl.trans(b_k))
            b_dA = tl.dot(b_dN.to(b_v.dtype), tl.trans(b_v)) + b_dD[:, None]
            b_G = tl.where(offs_t[:, None] >= offs_t[None, :], b_dA * (c * (1.0 + b_s)), 0.0)
            b_dq += tl.dot(b_G.to(b_k.dtype), b_k)
            # -- state pass (2) ------------------------------------------------------------------
            b_kf = b_k.to(tl.float32)
            b_kk = s2 * _outer(b_kf, BT, BK)
            b_S1 += tl.dot(tl.trans((s1 * b_kf).to(b_v.dtype)), b_v)
            b_S2 += tl.dot(tl.trans(b_kk.to(b_v.dtype)), b_v)
            b_z1 += s1 * tl.sum(b_kf, 0)
            b_z2 += tl.sum(b_kk, 0)

        p_dq = dq + i_v.to(tl.int64) * (tl.num_programs(1) * T * K)  # this V-tile's partial
        tl.store(p_dq + p_t[:, None] * K + offs_k[None, :], b_dq, mask=mask_tk)


@triton.heuristics({
    "HAS_DHT": lambda args: args["dht"] is not None,
    "STORE_DH0": lambda args: args["dh0"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _based_chunk_bwd_dkv_kernel(
    q, k, v, do, den, dd,  # inputs; den, dd [B, T, H] fp32 (normalize) or None
    dk, dv,  # [NV, B, T, H, K] fp32 partials, [B, T, H, V]
    dht, dzt,  # [B, H, M, V], [B, H, M] fp32 (second-order block symmetrised) or None
    dh0, dz0,  # [B, H, M, V], [B, H, M] fp32 or None
    scale, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """dk = Gᵀq + ∂φ(k)/∂k·(Q v + qz), dv = Aᵀ dN + φ(k)ᵀ Q, backwards in time (card, (b))."""
    # -- map the program --------------------------------------------------------------------------
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c = tl.cast(scale, tl.float32)
    s1, s2 = tl.sqrt(c), c * INV_SQRT2
    rows1, mask_k, rows2, mask_f = _state_offsets(K, BK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    row0 = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    first = (i_v == 0).to(tl.float32)

    # -- Q = dS (what later queries ask of the state), fp32, seeded by the final state's cotangent
    b_Q0 = tl.zeros([BV], dtype=tl.float32)
    b_Q1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_Q2 = tl.zeros([BK * BK, BV], dtype=tl.float32)
    b_qz0 = tl.sum(tl.zeros([BK], dtype=tl.float32), 0)
    b_qz1 = tl.zeros([BK], dtype=tl.float32)
    b_qz2 = tl.zeros([BK * BK], dtype=tl.float32)
    if HAS_DHT:
        p_S = dht + i_bh.to(tl.int64) * M * V
        b_Q0 += tl.load(p_S + offs_v, mask=mask_v, other=0.0)
        b_Q1 += tl.load(p_S + rows1[:, None] * V + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        b_Q2 += tl.load(p_S + rows2[:, None] * V + offs_v[None, :], mask=mask_f[:, None] & mask_v[None, :], other=0.0)
        p_z = dzt + i_bh.to(tl.int64) * M
        b_qz0 += tl.load(p_z)
        b_qz1 += tl.load(p_z + rows1, mask=mask_k, other=0.0)
        b_qz2 += tl.load(p_z + rows2, mask=mask_f, other=0.0)
    if not CAUSAL:  # every key serves every query: Q over the whole sequence first
        for i_t in range(NT):
            offs_t = i_t * BT + tl.arange(0, BT)
            mask_t = offs_t < T
            p_t = (row0 + offs_t) * H + i_h
            b_q = tl.load(q + p_t[:, None] * K + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            b_qf = b_q.to(tl.float32)
            b_qq = s2 * _outer(b_qf, BT, BK)
            b_dN = tl.load(do + p_t[:, None] * V + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :],
                           other=0.0).to(tl.float32)
            b_dD = tl.zeros([BT], dtype=tl.float32)
            if NORMALIZE:
                b_dN = b_dN / tl.load(den + p_t, mask=mask_t, other=1.0)[:, None]
                b_dD = tl.load(dd + p_t, mask=mask_t, other=0.0)
            b_Q0 += tl.sum(b_dN, 0)
            b_Q1 += tl.dot(tl.trans((s1 * b_qf).to(b_q.dtype)), b_dN.to(b_q.dtype))
            b_Q2 += tl.dot(tl.trans(b_qq.to(b_q.dtype)), b_dN.to(b_q.dtype))
            b_qz0 += tl.sum(b_dD, 0)
            b_qz1 += s1 * tl.sum(b_qf * b_dD[:, None], 0)
            b_qz2 += tl.sum(b_qq * b_dD[:, None], 0)

    for i_t in range(NT):
        # -- load the chunk, last chunk first when causal ------------------------------------------
        i_c = NT - 1 - i_t if CAUSAL else i_t
        offs_t = i_c * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        p_t = (row0 + offs_t) * H + i_h
        mask_tk = mask_t[:, None] & mask_k[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        b_k = tl.load(k + p_t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0)
        b_v = tl.load(v + p_t[:, None] * V + offs_v[None, :], mask=mask_tv, other=0.0)
        b_kf = b_k.to(tl.float32)
        b_kk = s2 * _outer(b_kf, BT, BK)

        # -- inter-chunk: dφ(k) = Q v + qz; dv = φ(k)ᵀ Q (Q holds the later chunks) ---------------
        b_g1 = tl.dot(b_v, tl.trans(b_Q1.to(b_v.dtype))) + first * b_qz1[None, :]
        b_g2 = tl.dot(b_v, tl.trans(b_Q2.to(b_v.dtype))) + first * b_qz2[None, :]
        b_dk = s1 * b_g1 + (2.0 * s2) * _sym_contract(b_g2, b_kf, BT, BK)  # [BT, BK]
        b_dv = b_Q0[None, :] + tl.dot((s1 * b_kf).to(b_v.dtype), b_Q1.to(b_v.dtype))
        b_dv += tl.dot(b_kk.to(b_v.dtype), b_Q2.to(b_v.dtype))  # [BT, BV]

        if CAUSAL:
            b_q = tl.load(q + p_t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0)
            b_qf = b_q.to(tl.float32)
            b_dN = tl.load(do + p_t[:, None] * V + offs_v[None, :], mask=mask_tv, other=0.0).to(tl.float32)
            b_dD = tl.zeros([BT], dtype=tl.float32)
            if NORMALIZE:
                b_dN = b_dN / tl.load(den + p_t, mask=mask_t, other=1.0)[:, None]
                b_dD = tl.load(dd + p_t, mask=mask_t, other=0.0)
            # -- intra-chunk: rows are queries t, columns keys j, t ≥ j ------------------------------
            b_s = c * tl.dot(b_q, tl.trans(b_k))
            mask_A = offs_t[:, None] >= offs_t[None, :]
            b_A = tl.where(mask_A, 1.0 + b_s + 0.5 * b_s * b_s, 0.0)
            b_dA = tl.dot(b_dN.to(b_v.dtype), tl.trans(b_v)) + first * b_dD[:, None]
            b_G = tl.where(mask_A, b_dA * (c * (1.0 + b_s)), 0.0)
            b_dk += tl.dot(tl.trans(b_G).to(b_q.dtype), b_q)
            b_dv += tl.dot(tl.trans(b_A).to(b_v.dtype), b_dN.to(b_v.dtype))
            # -- Q += φ(q)ᵀ dN, qz += φ(q)ᵀ dD: this chunk's queries, for the chunks before it ------
            b_qq = s2 * _outer(b_qf, BT, BK)
            b_Q0 += tl.sum(b_dN, 0)
            b_Q1 += tl.dot(tl.trans((s1 * b_qf).to(b_q.dtype)), b_dN.to(b_q.dtype))
            b_Q2 += tl.dot(tl.trans(b_qq.to(b_q.dtype)), b_dN.to(b_q.dtype))
            b_qz0 += tl.sum(b_dD, 0)
            b_qz1 += s1 * tl.sum(b_qf * b_dD[:, None], 0)
            b_qz2 += tl.sum(b_qq * b_dD[:, None], 0)

        p_dk = dk + i_v.to(tl.int64) * (tl.num_programs(1) * T * K)
        tl.store(p_dk + p_t[:, None] * K + offs_k[None, :], b_dk, mask=mask_tk)
        tl.store(dv + p_t[:, None] * V + offs_v[None, :], b_dv.to(dv.dtype.element_ty), mask=mask_tv)

    # -- the initial state's gradient: Q and qz after the first chunk ----------------------------
    if STORE_DH0:
        p_S = dh0 + i_bh.to(tl.int64) * M * V
        tl.store(p_S + offs_v, b_Q0, mask=mask_v)
        tl.store(p_S + rows1[:, None] * V + offs_v[None, :], b_Q1, mask=mask_k[:, None] & mask_v[None, :])
        tl.store(p_S + rows2[:, None] * V + offs_v[None, :], b_Q2, mask=mask_f[:, None] & mask_v[None, :])
        if i_v == 0:
            p_z = dz0 + i_bh.to(tl.int64) * M
            tl.store(p_z, b_qz0)
            tl.store(p_z + rows1, b_qz1, mask=mask_k)
            tl.store(p_z + rows2, b_qz2, mask=mask_f)


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
    "NORMALIZE": lambda args: args["den"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _based_recurrent_fwd_kernel(
    q, k, v, o, h0, ht, z0, zt, den, scale, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, EPS: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """Token by token: S_t = S_{t-1} + φ(k_t) v_tᵀ, o_t = φ(q_t)ᵀS_t / (φ(q_t)·z_t + ε) (zoo (2)-(3))."""
    # -- map the program to a V-tile of one (batch, head) ------------------------------------------
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c = tl.cast(scale, tl.float32)
    s1, s2 = tl.sqrt(c), c * INV_SQRT2
    rows1, mask_k, rows2, mask_f = _state_offsets(K, BK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    row0 = i_b.to(tl.int64) * T

    # -- the state by order, fp32 -------------------------------------------------------------------
    b_S0 = tl.zeros([BV], dtype=tl.float32)
    b_S1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_S2 = tl.zeros([BK * BK, BV], dtype=tl.float32)
    b_z0 = tl.sum(tl.zeros([BK], dtype=tl.float32), 0)
    b_z1 = tl.zeros([BK], dtype=tl.float32)
    b_z2 = tl.zeros([BK * BK], dtype=tl.float32)
    if HAS_H0:
        p_S = h0 + i_bh.to(tl.int64) * M * V
        b_S0 += tl.load(p_S + offs_v, mask=mask_v, other=0.0)
        b_S1 += tl.load(p_S + rows1[:, None] * V + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        b_S2 += tl.load(p_S + rows2[:, None] * V + offs_v[None, :], mask=mask_f[:, None] & mask_v[None, :], other=0.0)
        p_z = z0 + i_bh.to(tl.int64) * M
        b_z0 += tl.load(p_z)
        b_z1 += tl.load(p_z + rows1, mask=mask_k, other=0.0)
        b_z2 += tl.load(p_z + rows2, mask=mask_f, other=0.0)
    if not CAUSAL:  # every query reads the state after the whole sequence
        for t in range(T):
            p_t = (row0 + t) * H + i_h
            b_k = tl.load(k + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            b_v = tl.load(v + p_t * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
            b_kk = s2 * tl.reshape(b_k[:, None] * b_k[None, :], (BK * BK,))
            b_S0 += b_v
            b_S1 += (s1 * b_k)[:, None] * b_v[None, :]
            b_S2 += b_kk[:, None] * b_v[None, :]
            b_z0 += 1.0
            b_z1 += s1 * b_k
            b_z2 += b_kk

    # -- the token loop ----------------------------------------------------------------------------
    for t in range(T):
        p_t = (row0 + t) * H + i_h
        if CAUSAL:
            b_k = tl.load(k + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            b_v = tl.load(v + p_t * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
            b_kk = s2 * tl.reshape(b_k[:, None] * b_k[None, :], (BK * BK,))  # (1) φ(k_t)'s 2nd order
            b_S0 += b_v  # (2) S_t = S_{t-1} + φ(k_t) v_tᵀ, by order
            b_S1 += (s1 * b_k)[:, None] * b_v[None, :]
            b_S2 += b_kk[:, None] * b_v[None, :]
            b_z0 += 1.0  # (2) z_t = z_{t-1} + φ(k_t)
            b_z1 += s1 * b_k
            b_z2 += b_kk
        b_q = tl.load(q + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        b_qq = s2 * tl.reshape(b_q[:, None] * b_q[None, :], (BK * BK,))
        b_o = b_S0 + tl.sum((s1 * b_q)[:, None] * b_S1, 0) + tl.sum(b_qq[:, None] * b_S2, 0)  # (3) [BV]
        if NORMALIZE:
            b_den = b_z0 + tl.sum(s1 * b_q * b_z1, 0) + tl.sum(b_qq * b_z2, 0) + EPS  # (3)
            b_o = b_o / b_den
            if i_v == 0:
                tl.store(den + p_t, b_den)
        tl.store(o + p_t * V + offs_v, b_o.to(o.dtype.element_ty), mask=mask_v)

    # -- the final state ------------------------------------------------------------------------
    if STORE_HT:
        p_S = ht + i_bh.to(tl.int64) * M * V
        tl.store(p_S + offs_v, b_S0, mask=mask_v)
        tl.store(p_S + rows1[:, None] * V + offs_v[None, :], b_S1, mask=mask_k[:, None] & mask_v[None, :])
        tl.store(p_S + rows2[:, None] * V + offs_v[None, :], b_S2, mask=mask_f[:, None] & mask_v[None, :])
        if i_v == 0:
            p_z = zt + i_bh.to(tl.int64) * M
            tl.store(p_z, b_z0)
            tl.store(p_z + rows1, b_z1, mask=mask_k)
            tl.store(p_z + rows2, b_z2, mask=mask_f)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _symmetrize(x: torch.Tensor, K: int) -> torch.Tensor:
    """The state (or its cotangent) [B, H, M, *] with its second-order block X[a, b] replaced by
    (X[a, b] + X[b, a]) / 2: φ(x) only sees the symmetric part, and the Jacobian contraction in
    the kernels assumes it."""
    B, H, M = x.shape[:3]
    x2 = x[:, :, 1 + K:].reshape(B, H, K, K, *x.shape[3:])
    x2 = 0.5 * (x2 + x2.transpose(2, 3))
    return torch.cat([x[:, :, :1 + K], x2.reshape(B, H, K * K, *x.shape[3:])], 2).contiguous()


def _based_chunk_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state, chunk_size, tiles=None,
                     feat_dot=FEATURES_BY_DOT):
    """Forward: causal runs parallel over chunks (CHUNK_PARALLEL), else one sweep. Returns (o, ht,
    zt, den), None where not computed. `tiles` = (BT, BV,
    num_warps, num_stages) overrides the rule and `feat_dot` picks how q⊗q and k⊗k are built
    (selection dots or the reshape), for the benchmark below only."""
    if causal and CHUNK_PARALLEL and tiles is None:
        return _based_parallel_fwd(q, k, v, h0, z0, scale, normalize, output_final_state)
    B, T, H, K = q.shape
    V, M = v.shape[-1], zb.feature_count(K)
    BT, BK, BV, num_warps, num_stages = _tile_rule(V, chunk_size, forward=True)
    if tiles is not None:
        BT, BV, num_warps, num_stages = tiles
    f32 = dict(device=q.device, dtype=torch.float32)
    o = torch.empty_like(v)
    den = torch.empty(B, T, H, **f32) if normalize else None
    ht = torch.empty(B, H, M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, M, **f32) if output_final_state else None
    _based_chunk_fwd_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, o, h0, ht, z0, zt, den, scale, T, H, K=K, V=V, M=M, BT=BT, BK=BK, BV=BV,
        EPS=zb.EPS, CAUSAL=causal, FEAT_DOT=feat_dot, PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages)
    return o, ht, zt, den


def _parallel_tiles(K: int, V: int, parallel_tiles=None, backward=False, element_size=2):
    """(BT, BKX, BR, (BV, warps) of the state walk, (BV, warps) of the read-out, or with backward of
    the per-chunk dq and dk/dv kernels) from the head dims and the inputs' element size (nothing
    keyed on T or B); `parallel_tiles` = (BT, BR, BV1, warps1, BV3, warps3) overrides it (tests and
    sweep scripts)."""
    BKX = max(MIN_CHUNK, triton.next_power_of_2(K + 1))  # x̃ = [x, 1]
    vmax = max(16, triton.next_power_of_2(V))
    bwd_bv = PARALLEL_BWD_BV_FP32 if element_size == 4 else PARALLEL_BWD_BV
    per_chunk = (bwd_bv, PARALLEL_BWD_WARPS) if backward else (PARALLEL_BV[1], PARALLEL_WARPS[1])
    BT, BR, BV1, w1, BV3, w3 = parallel_tiles or (PARALLEL_BT, PARALLEL_BR, PARALLEL_BV[0], PARALLEL_WARPS[0],
                                                  *per_chunk)
    if INTERPRET:
        w1 = w3 = 1
    return BT, BKX, BR, (min(BV1, vmax), w1), (min(BV3, vmax), w3)


def _state_walk(k, v, hs, zs, den, dd, h0, ht, z0, zt, scale, BT, BKX, BR, BV, num_warps, reverse):
    """One launch of _based_chunk_state_kernel: forwards over (k, v) (the state S⁻ before each
    chunk), or reverse over (q, do) with den, dd (the carry Q⁺ after each chunk, card (b))."""
    B, T, H, K = k.shape
    V, M = v.shape[-1], hs.shape[-2]
    NT = hs.shape[2]
    _based_chunk_state_kernel[(triton.cdiv(M, BR), triton.cdiv(V, BV), B * H)](
        k, v, hs, zs, den, dd, h0, ht, z0, zt, scale, T, H, NT, K=K, V=V, M=M, BT=BT, BKX=BKX, BR=BR, BV=BV,
        PREC="ieee" if k.dtype == torch.float32 else "tf32", REVERSE=reverse, num_warps=num_warps)


def _based_parallel_fwd(q, k, v, h0, z0, scale, normalize, output_final_state, parallel_tiles=None):
    """The causal forward in two launches (the card's phases): the state walk that stores the
    state before every chunk, then every chunk's outputs. Returns what _based_chunk_fwd returns."""
    B, T, H, K = q.shape
    V, M = v.shape[-1], zb.feature_count(K)
    BT, BKX, BR, (BV1, warps1), (BV3, warps3) = _parallel_tiles(K, V, parallel_tiles)
    NT = triton.cdiv(T, BT)
    f32 = dict(device=q.device, dtype=torch.float32)
    hs = torch.empty(B, H, NT, M, V, device=q.device, dtype=q.dtype)  # the state's dtype at the dots (card)
    zs = torch.empty(B, H, NT, M, **f32)
    o = torch.empty_like(v)
    den = torch.empty(B, T, H, **f32) if normalize else None
    ht = torch.empty(B, H, M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, M, **f32) if output_final_state else None
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    _state_walk(k, v, hs, zs, None, None, h0, ht, z0, zt, scale, BT, BKX, BR, BV1, warps1, False)
    _based_chunk_out_kernel[(triton.cdiv(V, BV3), NT, B * H)](
        q, k, v, o, den, hs, zs, scale, T, H, NT, K=K, V=V, M=M, BT=BT, BKX=BKX, BR=BR, BV=BV3, EPS=zb.EPS,
        PREC=prec, num_warps=warps3)
    return o, ht, zt, den


def _based_parallel_bwd(do, dht, dzt, q, k, v, den, dd, h0, z0, scale, parallel_tiles=None):
    """The causal backward in four launches (the card's "Causal backward, parallel over chunks"):
    the forward walk recomputing S⁻, z⁻, the dq kernel, the reverse walk storing Q⁺, qz⁺ (and
    dS₀, dz₀), the dk/dv kernel. den, dd None: not normalised. Returns (dq, dk, dv, dh0, dz0)
    with dq, dk fp32 partials [NV, B, T, H, K]."""
    B, T, H, K = q.shape
    V, M = v.shape[-1], zb.feature_count(K)
    BT, BKX, BR, (BV1, warps1), (BV3, warps3) = _parallel_tiles(K, V, parallel_tiles, True, q.element_size())
    NT, NV = triton.cdiv(T, BT), triton.cdiv(V, BV3)
    f32 = dict(device=q.device, dtype=torch.float32)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    dims = dict(K=K, V=V, M=M, BT=BT, BKX=BKX, BR=BR, BV=BV3, PREC=prec, num_warps=warps3)
    dq = torch.empty(NV, B, T, H, K, **f32)
    dk = torch.empty(NV, B, T, H, K, **f32)
    dv = torch.empty_like(v)
    dh0 = torch.empty(B, H, M, V, **f32) if h0 is not None else None
    dz0 = torch.empty(B, H, M, **f32) if h0 is not None else None
    # one record buffer, used twice (S⁻ for dq, then Q⁺ for dk/dv): 286 MB at the headline size
    hs = torch.empty(B, H, NT, M, V, device=q.device, dtype=q.dtype)
    zs = torch.empty(B, H, NT, M, **f32)
    _state_walk(k, v, hs, zs, None, None, h0, None, z0, None, scale, BT, BKX, BR, BV1, warps1, False)
    _based_chunk_dq_kernel[(NV, NT, B * H)](q, k, v, do, den, dd, dq, hs, zs, scale, T, H, NT, **dims)
    _state_walk(q, do, hs, zs, den, dd, dht, dh0, dzt, dz0, scale, BT, BKX, BR, BV1, warps1, True)
    _based_chunk_dkv_kernel[(NV, NT, B * H)](q, k, v, do, den, dd, dk, dv, hs, zs, scale, T, H, NT, **dims)
    return dq, dk, dv, dh0, dz0


def _based_chunk_bwd(do, dht, dzt, q, k, v, o, den, h0, z0, scale, causal, normalize, chunk_size,
                     parallel_tiles=None):
    """Backward: dD, then causal parallel over chunks (CHUNK_PARALLEL_BWD), else the dq sweep and
    the dk/dv sweep of the card. Returns (dq, dk, dv, dh0, dz0). `parallel_tiles` as in
    _parallel_tiles (tests and sweep scripts only)."""
    B, T, H, K = q.shape
    V, M = v.shape[-1], zb.feature_count(K)
    BT, BK, BV, num_warps, num_stages = _tile_rule(V, chunk_size)
    NV = triton.cdiv(V, BV)
    f32 = dict(device=q.device, dtype=torch.float32)
    dd = None
    if normalize:
        dd = torch.empty(B, T, H, **f32)
        _based_normalize_bwd_kernel[(triton.cdiv(T, 64), B * H)](do, o, den, dd, T, H, V=V, BT=64,
                                                                 BV=min(128, max(16, triton.next_power_of_2(V))))
    # The state is the pair (S, z): if only one half has a cotangent, the other's is zero.
    if dht is not None or dzt is not None:
        dht = torch.zeros(B, H, M, V, **f32) if dht is None else dht.float()
        dzt = torch.zeros(B, H, M, **f32) if dzt is None else dzt.float()
    if causal and CHUNK_PARALLEL_BWD:
        # φ's Jacobian there holds for any state and cotangent: no symmetrising (same function)
        dq, dk, dv, dh0, dz0 = _based_parallel_bwd(do, dht, dzt, q, k, v, den if normalize else None, dd,
                                                   h0, z0, scale, parallel_tiles)
        return dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv, dh0, dz0
    h0s = None if h0 is None else _symmetrize(h0.float(), K)
    z0s = None if h0 is None else _symmetrize(z0.float(), K)
    dhts = None if dht is None else _symmetrize(dht, K)
    dzts = None if dht is None else _symmetrize(dzt, K)
    dq = torch.empty(NV, B, T, H, K, **f32)
    dk = torch.empty(NV, B, T, H, K, **f32)
    dv = torch.empty_like(v)
    dh0 = torch.empty(B, H, M, V, **f32) if h0 is not None else None
    dz0 = torch.empty(B, H, M, **f32) if h0 is not None else None
    grid = (NV, B * H)
    _based_chunk_bwd_dq_kernel[grid](q, k, v, do, den, dd, dq, h0s, z0s, scale, T, H, K=K, V=V, M=M,
                                     BT=BT, BK=BK, BV=BV, CAUSAL=causal,
                                     num_warps=num_warps, num_stages=num_stages)
    _based_chunk_bwd_dkv_kernel[grid](q, k, v, do, den, dd, dk, dv, dhts, dzts, dh0, dz0, scale, T, H,
                                      K=K, V=V, M=M, BT=BT, BK=BK, BV=BV, CAUSAL=causal,
                                      num_warps=num_warps, num_stages=num_stages)
    if dh0 is not None and dht is not None:
        # the kernel started from the symmetrised dS_T; the antisymmetric rest passes straight to dS₀
        dh0 = dh0 + (dht - dhts)
        dz0 = dz0 + (dzt - dzts)
    return dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv, dh0, dz0


def _based_recurrent_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state):
    B, T, H, K = q.shape
    V, M = v.shape[-1], zb.feature_count(K)
    _, BK, BV, _, _ = _tile_rule(V, MIN_CHUNK)
    num_warps = 1 if INTERPRET else 4
    f32 = dict(device=q.device, dtype=torch.float32)
    o = torch.empty_like(v)
    den = torch.empty(B, T, H, **f32) if normalize else None
    ht = torch.empty(B, H, M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, M, **f32) if output_final_state else None
    _based_recurrent_fwd_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, o, h0, ht, z0, zt, den, scale, T, H, K=K, V=V, M=M, BK=BK, BV=BV, EPS=zb.EPS,
        CAUSAL=causal, num_warps=num_warps)
    return o, ht, zt, den


# ------------------------------------------------------------------------------------------------
# Custom ops: what torch.compile(fullgraph=True) sees (the kernels stay opaque to it)
# ------------------------------------------------------------------------------------------------
# Optional outputs come back as empty tensors (a custom op cannot return None).
def _or_empty(x, ref):
    return ref.new_empty(0) if x is None else x


def _or_none(x):
    return None if x is None or x.numel() == 0 else x


def _fwd_outputs_like(q, v, normalize, output_final_state):
    B, T, H, K = q.shape
    V, M = v.shape[-1], zb.feature_count(K)
    f32 = dict(dtype=torch.float32)
    ht = q.new_empty(B, H, M, V, **f32) if output_final_state else q.new_empty(0)
    zt = q.new_empty(B, H, M, **f32) if output_final_state else q.new_empty(0)
    den = q.new_empty(B, T, H, **f32) if normalize else q.new_empty(0)
    return torch.empty_like(v), ht, zt, den


def _contiguous(*xs):
    return tuple(None if x is None else x.contiguous() for x in xs)


@torch.library.custom_op("zoo::based_chunk_fwd", mutates_args=())
def _chunk_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None,
                  z0: torch.Tensor | None, scale: float, causal: bool, normalize: bool,
                  output_final_state: bool, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    q, k, v, h0, z0 = _contiguous(q, k, v, h0, z0)
    o, ht, zt, den = _based_chunk_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state, chunk_size)
    return o, _or_empty(ht, q), _or_empty(zt, q), _or_empty(den, q)


@_chunk_fwd_op.register_fake
def _(q, k, v, h0, z0, scale, causal, normalize, output_final_state, chunk_size):
    return _fwd_outputs_like(q, v, normalize, output_final_state)


@torch.library.custom_op("zoo::based_recurrent_fwd", mutates_args=())
def _recurrent_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None,
                      z0: torch.Tensor | None, scale: float, causal: bool, normalize: bool,
                      output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, h0, z0 = _contiguous(q, k, v, h0, z0)
    o, ht, zt, den = _based_recurrent_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state)
    return o, _or_empty(ht, q), _or_empty(zt, q), _or_empty(den, q)


@_recurrent_fwd_op.register_fake
def _(q, k, v, h0, z0, scale, causal, normalize, output_final_state):
    return _fwd_outputs_like(q, v, normalize, output_final_state)


@torch.library.custom_op("zoo::based_chunk_bwd", mutates_args=())
def _chunk_bwd_op(do: torch.Tensor, dht: torch.Tensor | None, dzt: torch.Tensor | None, q: torch.Tensor,
                  k: torch.Tensor, v: torch.Tensor, o: torch.Tensor | None, den: torch.Tensor | None,
                  h0: torch.Tensor | None, z0: torch.Tensor | None, scale: float, causal: bool, normalize: bool,
                  chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    do, dht, dzt, q, k, v, o, den, h0, z0 = _contiguous(do, dht, dzt, q, k, v, o, den, h0, z0)
    dq, dk, dv, dh0, dz0 = _based_chunk_bwd(do, dht, dzt, q, k, v, o, den, h0, z0, scale, causal, normalize,
                                            chunk_size)
    dh0 = q.new_empty(0) if dh0 is None else dh0.to(h0.dtype)
    dz0 = q.new_empty(0) if dz0 is None else dz0.to(z0.dtype)
    return dq, dk, dv, dh0, dz0


@_chunk_bwd_op.register_fake
def _(do, dht, dzt, q, k, v, o, den, h0, z0, scale, causal, normalize, chunk_size):
    dh0 = q.new_empty(0) if h0 is None else torch.empty_like(h0)
    dz0 = q.new_empty(0) if z0 is None else torch.empty_like(z0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dh0, dz0


def _setup_context(ctx, inputs, output):
    q, k, v, h0, z0, scale, causal, normalize = inputs[:8]
    o, _, _, den = output
    ctx.save_for_backward(q, k, v, h0, z0, o if normalize else None, den if normalize else None)
    # The recurrent op has no chunk_size: its backward runs the chunk sweeps with the default.
    ctx.opts = (scale, causal, normalize, inputs[9] if len(inputs) > 9 else 64)


def _backward(ctx, do, dht, dzt, dden):
    q, k, v, h0, z0, o, den = ctx.saved_tensors
    scale, causal, normalize, chunk_size = ctx.opts
    dq, dk, dv, dh0, dz0 = torch.ops.zoo.based_chunk_bwd(
        do, _or_none(dht), _or_none(dzt), q, k, v, o, den, h0, z0, scale, causal, normalize, chunk_size)
    return (dq, dk, dv, _or_none(dh0), _or_none(dz0)) + (None,) * (len(ctx.needs_input_grad) - 5)


torch.library.register_autograd("zoo::based_chunk_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("zoo::based_recurrent_fwd", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# Public ops: the zoo's names and signatures
# ------------------------------------------------------------------------------------------------
def _check_fast(q, k, v, scale, initial_state, chunk_size=None):
    """The zoo's checks, then what the kernels add: a device they can run on, fp16/bf16/fp32,
    feature_dim ≤ MAX_FEATURE_DIM, chunks of at least MIN_CHUNK. Returns the scale."""
    zb._check(q, k, v, scale, initial_state, chunk_size)
    check_device_and_dtype(q, "fast.based", INTERPRET, zoo="zoo.based")
    if q.shape[-1] > MAX_FEATURE_DIM:
        raise ValueError(f"feature_dim K = {q.shape[-1]}: the kernels hold the K²-row state in registers and "
                         f"take K <= {MAX_FEATURE_DIM} (zoo.based takes any K)")
    if chunk_size is not None and chunk_size < MIN_CHUNK:
        raise ValueError(f"chunk_size must be a power of two >= {MIN_CHUNK} for tl.dot, got {chunk_size}")
    return float(q.shape[-1] ** -0.5 if scale is None else scale)


def _state_args(initial_state):
    """(S, z) as float32, the kernels' state dtype (autograd sees the cast)."""
    return (None, None) if initial_state is None else tuple(x.float() for x in initial_state)


def based_chunk(q, k, v, *, causal=True, normalize=True, scale=None, initial_state=None,
                output_final_state=False, chunk_size=64):
    """zoo.based.based_chunk in Triton, forward and backward, φ never in memory. The kernels step
    through min(chunk_size, 32) tokens at a time (the tile rule); results differ from the zoo's
    chunk_size only by rounding. Returns (o [B, T, H, V], (S, z) float32 or None)."""
    scale = _check_fast(q, k, v, scale, initial_state, chunk_size)
    h0, z0 = _state_args(initial_state)
    o, ht, zt, _ = torch.ops.zoo.based_chunk_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state,
                                                 chunk_size)
    return o, ((ht, zt) if output_final_state else None)


def based_recurrent(q, k, v, *, causal=True, normalize=True, scale=None, initial_state=None,
                    output_final_state=False):
    """zoo.based.based_recurrent in Triton: a token loop for decoding (forward kernel; its gradient
    runs the chunk backward sweeps). Returns (o, (S, z) float32 or None)."""
    scale = _check_fast(q, k, v, scale, initial_state)
    h0, z0 = _state_args(initial_state)
    o, ht, zt, _ = torch.ops.zoo.based_recurrent_fwd(q, k, v, h0, z0, scale, causal, normalize, output_final_state)
    return o, ((ht, zt) if output_final_state else None)


# ------------------------------------------------------------------------------------------------
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ------------------------------------------------------------------------------------------------
class BasedLinearAttention(zb.BasedLinearAttention):
    """zoo.based.BasedLinearAttention running the Triton chunk and recurrent ops
    (form="parallel" keeps the zoo's parallel form: there is no kernel for the oracle)."""

    chunk_op = staticmethod(based_chunk)
    recurrent_op = staticmethod(based_recurrent)


__all__ = ["based_chunk", "based_recurrent", "BasedLinearAttention"]


# ------------------------------------------------------------------------------------------------
# GPU benchmark: python -m fast.based (about 30-60 s on an H100, mostly compiling)
# ------------------------------------------------------------------------------------------------
# Forward variants timed beside the rule: (name, (BT, BV, num_warps, num_stages), feat_dot).
# sm_90 compiles (Triton 3.9, bf16, causal, normalised; registers / stack bytes of spill):
#   dot  = q⊗q and (k⊗k)ᵀ by selection dots;  reshape = _outer's broadcast and reshape (the old rule)
BENCH_VARIANTS = [
    ("reshape 32/32 8w 2st (old rule)", (32, 32, 8, 2), False),  # 255 regs, no spill, 1976 SASS lines
    ("reshape 16/32 4w 2st", (16, 32, 4, 2), False),  # 250 regs, no spill: 2 programs fit an SM
    ("dot 32/32 8w 1st", (32, 32, 8, 1), True),  # 255, 8 B spill
    ("dot 32/32 8w 3st", (32, 32, 8, 3), True),  # 255, no spill
    ("dot 16/32 8w 2st", (16, 32, 8, 2), True),  # 242, no spill, 1024 SASS lines
    ("dot 16/32 4w 2st", (16, 32, 4, 2), True),  # 255, 24 B spill: 2 programs fit an SM
    ("dot 32/32 4w 2st", (32, 32, 4, 2), True),  # 255, 248 B spill
    ("dot 32/16 8w 2st", (32, 16, 8, 2), True),  # 255, 88 B spill; 8 V-tiles: 512 programs
    ("dot 16/64 8w 2st", (16, 64, 8, 2), True),  # 255, no spill; 2 V-tiles: 128 programs, one wave
]


def _benchmark(B=4, T=8192, H=16, K=16, V=128, dtype=torch.bfloat16, causal=True, normalize=True, device="cuda",
               backward=True):
    """The rule's forward (and forward + backward), then the forward under BENCH_VARIANTS, each with
    its max abs difference from the rule's output. A variant that fails prints its error and the
    rest go on."""
    import time

    g = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g) for _ in range(2))
    v, do = (torch.randn(B, T, H, V, device=device, dtype=dtype, generator=g) for _ in range(2))
    scale = K ** -0.5
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=60)  # noqa: E731
    start = time.perf_counter()
    rule = _tile_rule(V, 64, forward=True)
    fwd = lambda **kw: _based_chunk_fwd(q, k, v, None, None, scale, causal, normalize, False, 64, **kw)[0]  # noqa: E731
    o_rule = fwd()
    torch.cuda.synchronize()
    print(f"B={B} T={T} H={H} K={K} V={V} {dtype} causal={causal} normalize={normalize}; rule (BT, BK, BV, "
          f"warps, stages) = {rule}, feat_dot={FEATURES_BY_DOT}; first call {time.perf_counter() - start:.1f} s")
    print(f"  fwd rule: {bench(fwd):.3f} ms")
    if backward:
        try:
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
            step = lambda: torch.autograd.backward(based_chunk(qg, kg, vg, causal=causal, normalize=normalize)[0], do)  # noqa: E731
            print(f"  fwd+bwd rule: {bench(step):.3f} ms")
        except Exception as e:  # noqa: BLE001 (a benchmark line, not a test)
            print(f"  fwd+bwd rule: FAILED {type(e).__name__}: {str(e)[:200]}")
    for name, tiles, feat_dot in BENCH_VARIANTS:
        try:
            fn = lambda: fwd(tiles=tiles, feat_dot=feat_dot)  # noqa: E731
            err = (fn().float() - o_rule.float()).abs().max().item()
            print(f"  fwd {name:34s} (BT, BV, warps, stages) = {tiles}: {bench(fn):.3f} ms  (diff vs rule {err:.1e})")
        except Exception as e:  # noqa: BLE001
            print(f"  fwd {name:34s} FAILED {type(e).__name__}: {str(e)[:200]}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    _benchmark()
