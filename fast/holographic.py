"""Triton mirror of zoo/holographic.py; the math, shapes and equation numbers (1)-(7) are there.

Kernel plan
-----------
Everything in the zoo's chunk form (7) is element-wise in (H, D) except the prefix sum over time,
so one kernel fuses it all: one program per (D-tile of BD lanes, batch·head) walks the NT chunks
of BT tokens in order, and per chunk
    loads a_phase, a_mag, q_re, q_im [BT, BD] (bf16/fp16/fp32; fp32 from here on),
    (1)-(3) b = σ(a_mag)·e^{i(π·tanh(a_phase) + t·ω)}, the phase from the integer frequencies:
        t·n_k mod 2³² is an int32 product that wraps (exact), times 2π/2³² in fp32;
    (7) M = M_carry + cumsum_t(b) (tl.cumsum over the chunk), M_carry += Σ_t b;
    (5)-(6) r = M ⊙ conj(q) / √(t+1), interleaved (tl.join) and stored as one [BT, 2BD] tile.
The carried memory M [BD] complex stays in fp32 registers for the whole walk; nothing [T, D]-sized
is written but o. When a gradient can be asked for, the forward also stores M_carry at the start of
every chunk (fp32, [NT, 2, D] per batch·head: 8 bytes per BT tokens per lane, 1/24 of the traffic at
BT = 16, bf16); under no_grad (the benchmark's forward, inference) it does not.

Backward (one kernel, the chunks in reverse; g_x = ∂L/∂Re x + i ∂L/∂Im x for a complex x):
    M inside chunk n = the stored M_carry(n) + cumsum(b)  (recomputed, bit-identical to forward)
    g_r = s·(do_re + i·do_im), s = 1/√(t+1)
    dq = M ⊙ conj(g_r)                                  -> dq_re, dq_im
    g_M = g_r ⊙ q;  g_b_t = Σ_{t' ≥ t} g_M_t' + dM_T      (reverse cumsum + carry, fp32)
    w = g_b ⊙ e^{-iφ} (φ = arg b):  ∂L/∂|b| = Re w,  ∂L/∂φ = |b|·Im w
    d a_mag = Re w·σ(1 − σ),   d a_phase = |b|·Im w·π·(1 − tanh²)
    dM_{-1} = the final carry (the gradient of the initial state).
Saved for backward: the four inputs, the checkpoints, the initial state; nothing else.

Cost at the headline size (bf16, B = 4, T = 8192, H = 1, hd_dim D = 8192; B·T = 32768 tokens,
2.7·10⁸ token-lanes):
    forward bytes: 4 inputs × 2 B read + o 2 × 2 B written = 12 B per token-lane = 3.22 GB;
        checkpoints 8 B per 64 tokens (+0.1%). Floor at 3.0 TB/s (the copy rate measured on the
        project's H100, the ceiling every floor here uses): 1.07 ms.
    backward bytes: 4 inputs + do (2 × 2 B) read, 4 gradients written = 20 B = 5.37 GB: 1.6 ms.
    math per token-lane: 2 exp, 2 reciprocals, sin, cos (arguments within ±2π) and ~30 FMAs
        forward, ~60 backward: compute stays under the memory time.
    Target: within 1.5× of the floor (forward ≤ 1.61 ms). Measured on the H100 (2026-11-23,
        run 15, public op, B 4, T 8192, hd_dim 8192 as 16 × 512 and as 1 × 8192): forward 1.37 ms
        = 1.28× the floor under no_grad (met), 1.47 ms when the inputs need grad (checkpoints
        written); forward + backward 7.48 ms. History below ("Latency"): 2.45-3.09 ms before the
        load knobs and the head-width view.
    first call: two kernels to compile; T is not specialised, so a new length never recompiles.

Latency (issue 7; ncu at the benchmark shape B 4, T 8192, H 16, D 512, chunk 64: forward 3.03 ms,
DRAM 32 %, 3 blocks of 4 warps an SM "limited by registers": latency bound). Three load knobs,
each a launcher argument (module defaults PREFETCH, STAGES, VECTOR / ..._BWD), timed together on
the H100 (run 10, `.scratch`-style sweep recorded in benchmarks/results, 3 tiles × 6 settings):
    the old defaults (BT 64, BD 16, vector, nothing pipelined): forward 3.09 ms, backward 5.10 ms;
    best forward: BT 16, BD 64, vector=False, no pipelining: 2.10 ms (1.95× the floor);
    best backward: BT 16, BD 64, vector, stages 3: 3.86 ms (2.16× its floor);
    prefetch helped BT 64 a little (2.82) and hurt BT 16 (3.77); stages hurt the forward.
So the kernels now run BT = KERNEL_CHUNK = 16 whatever chunk_size asks, the forward scalar, the
backward with 3 stages: forward + backward 5.95 ms against 8.19. (Round 2 below met the target.)
The knobs:
    prefetch: chunk i+1's tiles (bwd: i-1's, and do, ck) are loaded into registers at the top of
        step i, so the global loads overlap step i's math. Inputs stay bf16 until used.
    stages:   tl.range(num_stages=STAGES): Triton's pipeliner keeps STAGES-1 chunks in flight
        via cp.async into shared memory (no registers held).
    vector:   False launches a copy of the kernel with stride_h unspecialised. Found here: when
        stride_h % 16 == 0 (the benchmark, and any layer with D % 16 == 0) the JIT proves 16-byte
        alignment, loads 8 bf16 a thread and picks a layout that costs 166 registers at BT 64 (the
        3 blocks ncu saw); without it 116. The table below was compiled without that alignment.
    sm_90 registers / stack bytes (Triton 3.9, bf16, D 512, fwd exact trig, bwd fast), BT 64/32/16:
        fwd vector:        166/128/128   prefetch 162/162/160   stages 2: 128/127/128 + 32 B stack
                           (a 28-byte local array, not a register spill), stages 3 the same stack
        fwd vector=False:  116/115/115   prefetch 155/148/149
        bwd vector:        204/175/179   prefetch 233/234/211   stages 2: 173/186/180, no stack
        bwd vector=False:  181/176/168 (16 B stack at BT 16)   prefetch 239/238/229
Round 2 (timed on the H100 in run 13, 26 forward variants at the benchmark shape, 1.07 ms floor;
benchmarks/results/h100-2026-11-23/run13-holo-sweep2.log): the combination of prefetch and fast math
at BT 16 × BD 64, 4 warps, scalar loads, tl.cumsum, no register cap ran 1.352 ms = 1.26× the floor,
and is the default since; each alone did not help (prefetch 2.52 in run 10, fast math 2.92 here:
prefetch needs the registers fast math frees, 145 → fewer), the tensor-core scan was slower
(2.72), column-owning tiles too (2.58-3.26), caps at 96-128 registers 1.88-2.43. The forward is latency bound (ncu, above): at BT 16 × BD 64 the grid is 8 lane
tiles × 64 batch·heads = 512 programs of 4 warps, 15.5 warps an SM, one wave (119 registers: 4
programs an SM, 528 slots for 512), and each program waits on its chunk's loads, then does the
chunk's math with no load in flight. Switches, forward only (the backward is untouched), each a
launcher argument; registers from sm_90 AOT builds (Triton 3.9, bf16, scalar, no checkpoints):
    fast (FAST_FWD):  the backward's approximate divide, sine, cosine, plus rsqrt.approx for
        1/√(t+1): 96 instead of 119 registers at BT 16 × BD 64 (5 programs an SM); the exact build's
        sin/cos carry their large-argument path (2960 SASS instructions against 912).
    removed after losing in run 13 (the sweep script that timed them is committed beside its log):
    a scan as tril @ b with tl.dot(input_precision="tf32x3") (operands through shared memory to
        the MMA layout, 152 registers, fast 133: 2.72 ms), and a ptxas register cap (maxnreg) to fit
        one wave: BT 16 × BD 64 at 96 (5 an SM, 16 B stack), prefetch at 128 (4 an SM, 8 B stack;
        uncapped 145: 3 an SM) (1.88-2.43 ms).
    tiles with BD = 32·warps, scalar loads: the layout is then [1, 1] × [1, 32] × [1, warps], each
        thread owns whole columns of the tile, and tl.cumsum is a serial loop in registers (sm_90
        SASS: no SHFL, no BAR, no shared memory; at BD 64 × 4 warps the rows split over 2 warps and
        the scan crosses shared memory: 16 BAR, 36 LDS). (16, 128, 4), (16, 64, 2), (16, 32, 1):
        168 registers exact, 123 fast (BD 128 and 64); BT 8 (launcher only): 107 exact, 96 fast.
    Not done: the two-level time split (per-segment sums, then the scan from the segment carries)
        re-reads a_phase and a_mag: 16 B per token-lane instead of 12, a floor of 1.43 ms, so
        1.61 ms would need 89 % of the copy rate: it cannot meet the target.
    Not done, idea (3) of the issue: advancing e^{itω} per chunk by a complex product. The content
    phase π·tanh(a_phase) needs its own sin and cos per element anyway, so the rotation would
    replace an int multiply and one FMA by two complex products (more work, no trig saved); the
    arguments are already within ±2π, where libdevice takes its short path.

Tile rule (no autotuning): BT = KERNEL_CHUNK (16; chunk_size is checked and otherwise only moves
the zoo's summation order). BD = 1024 // BT lanes, within [16, 64]
(and no wider than D needs; D is masked, so any D works): a [BT, BD] tile of 1024 elements is
8 fp32 registers a thread at 4 warps. Compiled ahead of time for sm_90 (Triton 3.9, bf16, no GPU;
cuobjdump -res-usage; stride_h NOT marked divisible by 16, see "Latency"), forward / backward
registers per thread, no spill in any:
    BT 64, BD 16: 117 / 168      BT 32, BD 32: 114 / 168      BT 16, BD 64: 115 / 167
    (2048-element tiles: BT 64, BD 32 at 4 warps: 180 / 255 with a 32-byte spill in backward;
    at 8 warps 103 / 241.) So 4 programs (16 warps) per SM forward, 3 backward, by registers.
At the headline size with the default chunk: 16 lanes × 64 tokens, 512 D-tiles × 4 sequences =
2048 programs. Which of the three 1024-element shapes is fastest is for the GPU to say:
`python -m fast.holographic` times the forward at chunk_size 16, 32 and 64.

Naming legend (fla's prefixes, STYLE rule 29):
    i_   program ids and loop indices (i_d D-tile, i_bh batch·head, i_t chunk)
    p_   pointers          b_   blocks held on chip (b_M_re, b_q_re ... zoo names after the prefix)
    offs_ offsets          mask_ masks (mask_t rows inside T, mask_d lanes inside D)
    BT   chunk length (the zoo's L)    BD   tile of D lanes    NT  number of chunks
    h0, ht  initial and final memory M [B, H, D, 2];  t0 [B] the initial positions
    ck   the chunk-start checkpoints of M, [B, H, NT, 2, D] fp32
"""

import math
import os

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl
from triton.language.extra import libdevice

import zoo.holographic as zh
from zoo.holographic import check_inputs
from fast._checks import check_device_and_dtype

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as @triton.jit does
MAX_TILE = 1024  # elements per [BT, BD] tile: 8 fp32 registers a thread at 4 warps (card)
MAX_BD = 64  # 64 bf16 lanes = one 128-byte line per row
MIN_CHUNK, MAX_CHUNK = 16, 128  # tiles of BT rows: below 16 too thin, above 128 BD = 16 overflows MAX_TILE
PI = tl.constexpr(math.pi)  # (1) the content phase is π·tanh(a_phase)
RAD_PER_UNIT = tl.constexpr(2 * math.pi / 2**32)  # (2) one unit of t·n_k mod 2³², in radians
TWO_PI, INV_TWO_PI = tl.constexpr(2 * math.pi), tl.constexpr(1 / (2 * math.pi))
# Load pipelining (card, "Latency"): PREFETCH loads chunk i+1 into registers during step i;
# STAGES > 1 lets Triton's loop pipeliner keep STAGES - 1 chunks in flight through shared memory.
# VECTOR: the kernel specialised on a 16-divisible stride_h (8-lane loads) or not. Chosen on the H100
# (run 10, benchmark shape, 18 variants; card, "Latency"): forward scalar, nothing pipelined;
# backward vector with 3 pipeline stages.
# Round 2 (issue 7; card, "Latency"), forward only: FAST_FWD the approximate math (forward: also
# rsqrt.approx for 1/√(t+1); the interpreter has no approximate math, so it keeps the exact one);
# run 13 (H100, 26 variants): prefetch + fast math, scalar loads: 1.352 ms (1.26× the floor),
# against 2.215 for run 10's choice; so those two are on.
PREFETCH, STAGES, VECTOR = True, 1, False  # forward
FAST_FWD = not INTERPRET
PREFETCH_BWD, STAGES_BWD, VECTOR_BWD = False, 3, True  # backward
KERNEL_CHUNK = 16  # the kernels' BT whatever chunk_size asks (the same function; only the summation order moves)
# Heads only tile hd_dim (every lane is its own scan, zoo card), so the op may run a wide head as
# several of HEAD_LANES lanes: [B, T, H, D] viewed as [B, T, H·D/HEAD_LANES, HEAD_LANES]. Run 14
# measured the same hd_dim 8192 as H = 16 × 512 at 1.37 ms and as H = 1 × 8192 at 2.85 ms.
HEAD_LANES = 512


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
def _tile_rule(D: int, BT: int):
    """(BD, num_warps): see the card."""
    BD = max(16, min(MAX_BD, max(16, triton.next_power_of_2(D)), MAX_TILE // BT))
    return BD, 4


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _bound_token(b_ap, b_am, b_pos, b_n, FAST: tl.constexpr):
    """(1)-(3): |b| = σ(a_mag), tanh(a_phase), and e^{iφ} = (cos φ, sin φ) with
    φ = π·tanh(a_phase) + t·ω (t·n_k wraps mod 2³²).
    FAST (the GPU backward; the interpreter has no fast path): the hardware's approximate divide,
    sine and cosine (div.approx, sin.approx, cos.approx: a few instructions each, absolute error
    about 1e-6 on [-π, π], far below bf16's 4e-3) instead of the exact library routines, with φ
    first brought into [-π, π]. Measured on the H100 (2026-11-23, headline shape): backward 9.66 ->
    6.54 ms, but forward 2.53 -> 3.18 ms (cause not found; the sm_90 build has a third of the
    instructions), so the forward keeps the exact routines."""
    b_units = b_pos[:, None] * b_n[None, :]  # int32: t·n_k mod 2³², the angle in [-π, π) [BT, BD]
    if FAST:
        b_m = libdevice.fast_dividef(1.0, 1.0 + tl.exp(-b_am))  # σ(a_mag)
        b_tanh = 2 * libdevice.fast_dividef(1.0, 1.0 + tl.exp(-2 * b_ap)) - 1
        b_phi = PI * b_tanh + b_units.to(tl.float32) * RAD_PER_UNIT  # in (-2π, 2π)
        b_phi = b_phi - TWO_PI * libdevice.rint(b_phi * INV_TWO_PI)  # in [-π, π]
        b_cos, b_sin = libdevice.fast_cosf(b_phi), libdevice.fast_sinf(b_phi)
    else:
        b_m = tl.sigmoid(b_am)
        b_tanh = 2 * tl.sigmoid(2 * b_ap) - 1
        b_phi = PI * b_tanh + b_units.to(tl.float32) * RAD_PER_UNIT
        b_cos, b_sin = tl.cos(b_phi), tl.sin(b_phi)
    return b_m, b_tanh, b_cos, b_sin


@triton.jit
def _chunk_rows(i_t, offs_t, offs_d, mask_d, p_base, stride_t, T, BT: tl.constexpr):
    """Chunk i_t's rows, their mask inside T, the [BT, BD] tile mask and input offsets."""
    rows = i_t * BT + offs_t
    mask_t = rows < T
    mask = mask_t[:, None] & mask_d[None, :]
    p_x = p_base + rows.to(tl.int64)[:, None] * stride_t + offs_d[None, :]
    return rows, mask_t, mask, p_x


@triton.jit
def _o_offsets(i_b, i_h, rows, offs_o, T, H, D):
    """Offsets of the interleaved [BT, 2BD] tile of o (or do) [B, T, H, 2D] at `rows`."""
    return (i_b.to(tl.int64) * T + rows.to(tl.int64))[:, None] * (H * 2 * D) + i_h * 2 * D + offs_o[None, :]


@triton.jit
def _load_chunk(ap, am, qr, qi, p_x, mask):
    """The four [BT, BD] input tiles of one chunk, kept in their storage dtype (bf16: half the
    registers of fp32 while a prefetched tile waits); each is widened to fp32 where it is used."""
    b_ap = tl.load(ap + p_x, mask=mask, other=0.0)
    b_am = tl.load(am + p_x, mask=mask, other=0.0)
    b_q_re = tl.load(qr + p_x, mask=mask, other=0.0)
    b_q_im = tl.load(qi + p_x, mask=mask, other=0.0)
    return b_ap, b_am, b_q_re, b_q_im


def _holographic_chunk_fwd_body(
    ap, am, qr, qi, freqs, t0, h0, o, ht, ck,
    stride_b, stride_t, stride_h, T, H, D,
    BT: tl.constexpr, BD: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CK: tl.constexpr,
    FAST: tl.constexpr, PREFETCH: tl.constexpr, STAGES: tl.constexpr,
):
    """o_t = [Re, Im] of (M_carry + cumsum b)_t ⊙ conj(q_t) / √(t+1), chunk by chunk.
    PREFETCH: chunk i+1's tiles are loaded into registers at the top of step i, so their global
    loads are in flight during step i's math (the card's latency argument). STAGES > 1: Triton's
    own loop pipeliner keeps STAGES - 1 chunks' loads in flight through shared memory instead."""
    # -------------------------------------------------------------- map program -> lanes of (b, h)
    i_d, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    offs_d = i_d * BD + tl.arange(0, BD)
    mask_d = offs_d < D
    offs_t = tl.arange(0, BT)
    offs_o = i_d * 2 * BD + tl.arange(0, 2 * BD)  # interleaved (Re, Im) lanes of o
    mask_o = offs_o < 2 * D
    b_n = tl.load(freqs + i_h * D + offs_d, mask=mask_d, other=0)  # int32 bit pattern of n_k [BD]
    b_t0 = tl.load(t0 + i_b).to(tl.int32)
    p_base = i_b.to(tl.int64) * stride_b + i_h * stride_h
    # ------------------------------------------------------------------ the carried memory, fp32
    b_M_re = tl.zeros([BD], dtype=tl.float32)
    b_M_im = tl.zeros([BD], dtype=tl.float32)
    p_state = (i_bh * D + offs_d) * 2
    if HAS_H0:
        b_M_re = tl.load(h0 + p_state, mask=mask_d, other=0.0)
        b_M_im = tl.load(h0 + p_state + 1, mask=mask_d, other=0.0)
    if PREFETCH:  # chunk 0's tiles, before the walk
        _, _, mask_n, p_n = _chunk_rows(0, offs_t, offs_d, mask_d, p_base, stride_t, T, BT)
        b_ap_n, b_am_n, b_q_re_n, b_q_im_n = _load_chunk(ap, am, qr, qi, p_n, mask_n)
    for i_t in tl.range(0, NT, num_stages=STAGES):
        # ------------------------------------------------------------------------------- load
        rows, mask_t, mask, p_x = _chunk_rows(i_t, offs_t, offs_d, mask_d, p_base, stride_t, T, BT)
        if PREFETCH:  # this chunk's tiles arrived during the last step; issue the next chunk's
            b_ap, b_am, b_q_re, b_q_im = b_ap_n, b_am_n, b_q_re_n, b_q_im_n
            _, _, mask_n, p_n = _chunk_rows(i_t + 1, offs_t, offs_d, mask_d, p_base, stride_t, T, BT)
            b_ap_n, b_am_n, b_q_re_n, b_q_im_n = _load_chunk(ap, am, qr, qi, p_n, mask_n)  # past T: masked, 0
        else:
            b_ap, b_am, b_q_re, b_q_im = _load_chunk(ap, am, qr, qi, p_x, mask)
        if STORE_CK:  # checkpoint: M before chunk i_t (only the backward reads it)
            p_ck = ((i_bh * NT + i_t) * 2) * D + offs_d
            tl.store(ck + p_ck, b_M_re, mask=mask_d)
            tl.store(ck + p_ck + D, b_M_im, mask=mask_d)
        # -------------------------------------------------------------------- (1)-(3) binding
        b_pos = b_t0 + rows  # absolute positions [BT]
        b_m, b_tanh, b_cos, b_sin = _bound_token(b_ap.to(tl.float32), b_am.to(tl.float32), b_pos, b_n, FAST)
        b_m = tl.where(mask, b_m, 0.0)  # rows past T add nothing to the memory
        b_b_re = b_m * b_cos
        b_b_im = b_m * b_sin
        # ------------------------------------------------- (7) local cumsum + carried memory
        b_Mt_re = b_M_re[None, :] + tl.cumsum(b_b_re, axis=0)  # [BT, BD]
        b_Mt_im = b_M_im[None, :] + tl.cumsum(b_b_im, axis=0)
        b_M_re += tl.sum(b_b_re, axis=0)
        b_M_im += tl.sum(b_b_im, axis=0)
        # ------------------------------------------- (5)-(6) retrieval, scale, interleave, store
        if FAST:  # rsqrt.approx: one instruction, relative error 2^-22.9, against a rounded sqrt and divide
            b_s = libdevice.rsqrt(b_pos.to(tl.float32) + 1.0)  # [BT]
        else:
            b_s = 1.0 / tl.sqrt(b_pos.to(tl.float32) + 1.0)  # [BT]
        b_q_re, b_q_im = b_q_re.to(tl.float32), b_q_im.to(tl.float32)
        b_r_re = (b_Mt_re * b_q_re + b_Mt_im * b_q_im) * b_s[:, None]
        b_r_im = (b_Mt_im * b_q_re - b_Mt_re * b_q_im) * b_s[:, None]
        b_o = tl.reshape(tl.join(b_r_re, b_r_im), [BT, 2 * BD])  # [Re r_1, Im r_1, ...]
        p_o = _o_offsets(i_b, i_h, rows, offs_o, T, H, D)
        tl.store(o + p_o, b_o.to(o.dtype.element_ty), mask=mask_t[:, None] & mask_o[None, :])
    if STORE_HT:
        tl.store(ht + p_state, b_M_re, mask=mask_d)
        tl.store(ht + p_state + 1, b_M_im, mask=mask_d)


def _kernels(body, heuristics):
    """(vector, scalar) kernels of one body (the launcher's `vector`): the JIT marks a stride
    divisible by 16 when it is, and then loads 8 bf16 lanes a thread at once; the scalar kernel
    leaves stride_h unspecialised, so its loads are 2-byte ones in a layout of their own (sm_90
    registers: card, "Latency"). T is never specialised: a new length never recompiles."""
    return tuple(triton.heuristics(heuristics)(triton.jit(do_not_specialize=names)(body))
                 for names in (["T"], ["T", "stride_h"]))


_holographic_chunk_fwd_kernel, _holographic_chunk_fwd_kernel_scalar = _kernels(_holographic_chunk_fwd_body, {
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
    "STORE_CK": lambda args: args["ck"] is not None,
})


@triton.jit
def _load_chunk_bwd(ap, am, qr, qi, do, ck, i_t, offs_t, offs_d, mask_d, offs_o, mask_o, p_base, stride_t,
                    i_b, i_h, i_bh, T, H, D, NT, BT: tl.constexpr):
    """Everything the backward reads for chunk i_t, in the storage dtype: the four input tiles,
    the cotangent do [BT, 2BD] (interleaved) and the checkpoint M_carry(i_t) [BD] complex."""
    rows, mask_t, mask, p_x = _chunk_rows(i_t, offs_t, offs_d, mask_d, p_base, stride_t, T, BT)
    b_ap, b_am, b_q_re, b_q_im = _load_chunk(ap, am, qr, qi, p_x, mask)
    p_o = _o_offsets(i_b, i_h, rows, offs_o, T, H, D)
    b_do = tl.load(do + p_o, mask=mask_t[:, None] & mask_o[None, :], other=0.0)
    p_ck = ((i_bh * NT + i_t) * 2) * D + offs_d
    b_Mc_re = tl.load(ck + p_ck, mask=mask_d, other=0.0)
    b_Mc_im = tl.load(ck + p_ck + D, mask=mask_d, other=0.0)
    return b_ap, b_am, b_q_re, b_q_im, b_do, b_Mc_re, b_Mc_im


def _holographic_chunk_bwd_body(
    ap, am, qr, qi, freqs, t0, ck, do, dht, dap, dam, dqr, dqi, dh0,
    stride_b, stride_t, stride_h, T, H, D,
    BT: tl.constexpr, BD: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, FAST: tl.constexpr,
    PREFETCH: tl.constexpr, STAGES: tl.constexpr,
):
    """Gradients of a_phase, a_mag, q_re, q_im (and of M_{-1}): the chunks in reverse (card).
    PREFETCH and STAGES as in the forward; the chunk prefetched during step i is chunk i - 1
    (chunk 0 again during the last step: in bounds, unused)."""
    # -------------------------------------------------------------- map program -> lanes of (b, h)
    i_d, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    offs_d = i_d * BD + tl.arange(0, BD)
    mask_d = offs_d < D
    offs_t = tl.arange(0, BT)
    offs_o = i_d * 2 * BD + tl.arange(0, 2 * BD)
    mask_o = offs_o < 2 * D
    b_n = tl.load(freqs + i_h * D + offs_d, mask=mask_d, other=0)
    b_t0 = tl.load(t0 + i_b).to(tl.int32)
    p_base = i_b.to(tl.int64) * stride_b + i_h * stride_h
    p_state = (i_bh * D + offs_d) * 2
    # ----------------------------------------------- the carried gradient of M, from dM_T, fp32
    b_gM_re = tl.zeros([BD], dtype=tl.float32)
    b_gM_im = tl.zeros([BD], dtype=tl.float32)
    if HAS_DHT:
        b_gM_re = tl.load(dht + p_state, mask=mask_d, other=0.0)
        b_gM_im = tl.load(dht + p_state + 1, mask=mask_d, other=0.0)
    if PREFETCH:  # the last chunk's reads, before the walk
        b_ap_n, b_am_n, b_q_re_n, b_q_im_n, b_do_n, b_Mc_re_n, b_Mc_im_n = _load_chunk_bwd(
            ap, am, qr, qi, do, ck, NT - 1, offs_t, offs_d, mask_d, offs_o, mask_o, p_base, stride_t,
            i_b, i_h, i_bh, T, H, D, NT, BT)
    for i in tl.range(0, NT, num_stages=STAGES):
        i_t = NT - 1 - i
        # ------------------------------------------------------------------------------- load
        rows, mask_t, mask, _ = _chunk_rows(i_t, offs_t, offs_d, mask_d, p_base, stride_t, T, BT)
        if PREFETCH:
            b_ap, b_am, b_q_re, b_q_im, b_do, b_Mc_re, b_Mc_im = (b_ap_n, b_am_n, b_q_re_n, b_q_im_n, b_do_n,
                                                                   b_Mc_re_n, b_Mc_im_n)
            b_ap_n, b_am_n, b_q_re_n, b_q_im_n, b_do_n, b_Mc_re_n, b_Mc_im_n = _load_chunk_bwd(
                ap, am, qr, qi, do, ck, tl.maximum(i_t - 1, 0), offs_t, offs_d, mask_d, offs_o, mask_o, p_base,
                stride_t, i_b, i_h, i_bh, T, H, D, NT, BT)
        else:
            b_ap, b_am, b_q_re, b_q_im, b_do, b_Mc_re, b_Mc_im = _load_chunk_bwd(
                ap, am, qr, qi, do, ck, i_t, offs_t, offs_d, mask_d, offs_o, mask_o, p_base, stride_t,
                i_b, i_h, i_bh, T, H, D, NT, BT)
        b_do_re, b_do_im = tl.split(tl.reshape(b_do.to(tl.float32), [BT, BD, 2]))  # de-interleave (6)
        # ------------------------------------------------ recompute (1)-(3) and (7), as forward
        b_pos = b_t0 + rows
        b_m, b_tanh, b_cos, b_sin = _bound_token(b_ap.to(tl.float32), b_am.to(tl.float32), b_pos, b_n, FAST)
        b_m = tl.where(mask, b_m, 0.0)
        b_Mt_re = b_Mc_re[None, :] + tl.cumsum(b_m * b_cos, axis=0)  # [BT, BD]
        b_Mt_im = b_Mc_im[None, :] + tl.cumsum(b_m * b_sin, axis=0)
        # --------------------------------------------------- (5) g_r, dq = M ⊙ conj(g_r)
        b_s = 1.0 / tl.sqrt(b_pos.to(tl.float32) + 1.0)
        b_g_re = b_do_re * b_s[:, None]
        b_g_im = b_do_im * b_s[:, None]
        b_dq_re = b_Mt_re * b_g_re + b_Mt_im * b_g_im
        b_dq_im = b_Mt_im * b_g_re - b_Mt_re * b_g_im
        # ------------------------------ (4)/(7) g_M = g_r ⊙ q; g_b = reverse cumsum + carry
        b_q_re, b_q_im = b_q_re.to(tl.float32), b_q_im.to(tl.float32)
        b_gMt_re = b_g_re * b_q_re - b_g_im * b_q_im
        b_gMt_im = b_g_re * b_q_im + b_g_im * b_q_re
        b_gb_re = b_gM_re[None, :] + tl.cumsum(b_gMt_re, axis=0, reverse=True)
        b_gb_im = b_gM_im[None, :] + tl.cumsum(b_gMt_im, axis=0, reverse=True)
        b_gM_re += tl.sum(b_gMt_re, axis=0)
        b_gM_im += tl.sum(b_gMt_im, axis=0)
        # ------------------------------------ (1)-(3) through b = |b|·e^{iφ}: w = g_b ⊙ e^{-iφ}
        b_w_re = b_gb_re * b_cos + b_gb_im * b_sin
        b_w_im = b_gb_im * b_cos - b_gb_re * b_sin
        b_dam = b_w_re * b_m * (1 - b_m)
        b_dap = b_m * b_w_im * PI * (1 - b_tanh * b_tanh)
        # ------------------------------------------------------------------------------ store
        dt = dap.dtype.element_ty
        p_g = (i_b.to(tl.int64) * T + rows.to(tl.int64))[:, None] * (H * D) + i_h * D + offs_d[None, :]
        tl.store(dap + p_g, b_dap.to(dt), mask=mask)
        tl.store(dam + p_g, b_dam.to(dt), mask=mask)
        tl.store(dqr + p_g, b_dq_re.to(dt), mask=mask)
        tl.store(dqi + p_g, b_dq_im.to(dt), mask=mask)
    if STORE_DH0:
        tl.store(dh0 + p_state, b_gM_re, mask=mask_d)
        tl.store(dh0 + p_state + 1, b_gM_im, mask=mask_d)


_holographic_chunk_bwd_kernel, _holographic_chunk_bwd_kernel_scalar = _kernels(_holographic_chunk_bwd_body, {
    "HAS_DHT": lambda args: args["dht"] is not None,
    "STORE_DH0": lambda args: args["dh0"] is not None,
})


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _shared_strides(xs):
    """The four inputs are usually views of one projection (same strides, unit lane stride); else copy."""
    s = xs[0].stride()
    if s[3] == 1 and all(x.stride() == s for x in xs):
        return xs, s
    xs = [x.contiguous() for x in xs]
    return xs, xs[0].stride()


def _freqs_int32(freqs):
    """n_k in [0, 2³²) as the int32 with the same low 32 bits: the kernel's product wraps mod 2³²."""
    return ((freqs + 2**31) % 2**32 - 2**31).to(torch.int32).contiguous()


def _holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, h0, output_final_state, chunk_size, tiles=None,
                           fast=FAST_FWD, prefetch=PREFETCH, stages=STAGES, vector=VECTOR, store_ck=True):
    """`tiles` = (BT, BD, num_warps) overrides the rule, `fast` the approximate math, `prefetch`,
    `stages` and `vector` the loads (card, "Latency"; for the benchmark and GPU sweeps: the backward
    must then get the same tiles). store_ck=False skips the checkpoints (no backward will follow):
    ck then has no chunks."""
    (ap, am, qr, qi), (sb, st, sh, _) = _shared_strides([ap, am, qr, qi])
    B, T, H, D = ap.shape
    BT = chunk_size
    BD, num_warps = _tile_rule(D, BT)
    if tiles is not None:
        BT, BD, num_warps = tiles
    NT = triton.cdiv(T, BT)
    o = ap.new_empty(B, T, H, 2 * D)
    ht = ap.new_empty(B, H, D, 2, dtype=torch.float32) if output_final_state else None
    ck = ap.new_empty(B, H, NT if store_ck else 0, 2, D, dtype=torch.float32)
    grid = (triton.cdiv(D, BD), B * H)
    kernel = _holographic_chunk_fwd_kernel if vector else _holographic_chunk_fwd_kernel_scalar
    kernel[grid](ap, am, qr, qi, _freqs_int32(freqs), t0, h0, o, ht, ck if store_ck else None, sb, st, sh, T, H, D,
                 BT=BT, BD=BD, FAST=fast, PREFETCH=prefetch, STAGES=stages, num_warps=num_warps)
    return o, ht, ck


def _holographic_chunk_bwd(do, dht, ap, am, qr, qi, freqs, t0, ck, has_h0, chunk_size, tiles=None,
                           fast=not INTERPRET, prefetch=PREFETCH_BWD, stages=STAGES_BWD, vector=VECTOR_BWD):
    (ap, am, qr, qi), (sb, st, sh, _) = _shared_strides([ap, am, qr, qi])
    B, T, H, D = ap.shape
    BT = chunk_size
    BD, num_warps = _tile_rule(D, BT)
    if tiles is not None:
        BT, BD, num_warps = tiles
    dap, dam, dqr, dqi = (torch.empty(B, T, H, D, dtype=ap.dtype, device=ap.device) for _ in range(4))
    dh0 = ap.new_empty(B, H, D, 2, dtype=torch.float32) if has_h0 else None
    grid = (triton.cdiv(D, BD), B * H)
    kernel = _holographic_chunk_bwd_kernel if vector else _holographic_chunk_bwd_kernel_scalar
    kernel[grid](ap, am, qr, qi, _freqs_int32(freqs), t0, ck, do.contiguous(), dht, dap, dam, dqr, dqi, dh0, sb, st,
                 sh, T, H, D, BT=BT, BD=BD, FAST=fast, PREFETCH=prefetch, STAGES=stages, num_warps=num_warps)
    return dap, dam, dqr, dqi, dh0


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.compile sees one op each way) and autograd
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::holographic_chunk_fwd", mutates_args=())
def _chunk_fwd_op(ap: torch.Tensor, am: torch.Tensor, qr: torch.Tensor, qi: torch.Tensor, freqs: torch.Tensor,
                  t0: torch.Tensor, h0: torch.Tensor | None, output_final_state: bool, chunk_size: int,
                  save_ck: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h0 = None if h0 is None else h0.float().contiguous()
    o, ht, ck = _holographic_chunk_fwd(ap, am, qr, qi, freqs, t0.contiguous(), h0, output_final_state, chunk_size,
                                       store_ck=save_ck)
    return o, (ap.new_empty(0, dtype=torch.float32) if ht is None else ht), ck


@_chunk_fwd_op.register_fake
def _(ap, am, qr, qi, freqs, t0, h0, output_final_state, chunk_size, save_ck):
    B, T, H, D = ap.shape
    ht = ap.new_empty(B, H, D, 2, dtype=torch.float32) if output_final_state else ap.new_empty(0, dtype=torch.float32)
    ck = ap.new_empty(B, H, -(-T // chunk_size) if save_ck else 0, 2, D, dtype=torch.float32)
    return ap.new_empty(B, T, H, 2 * D), ht, ck


@torch.library.custom_op("zoo::holographic_chunk_bwd", mutates_args=())
def _chunk_bwd_op(do: torch.Tensor, dht: torch.Tensor | None, ap: torch.Tensor, am: torch.Tensor, qr: torch.Tensor,
                  qi: torch.Tensor, freqs: torch.Tensor, t0: torch.Tensor, ck: torch.Tensor, has_h0: bool,
                  chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dht = None if dht is None else dht.float().contiguous()
    dap, dam, dqr, dqi, dh0 = _holographic_chunk_bwd(do, dht, ap, am, qr, qi, freqs, t0.contiguous(), ck, has_h0,
                                                     chunk_size)
    return dap, dam, dqr, dqi, (ap.new_empty(0, dtype=torch.float32) if dh0 is None else dh0)


@_chunk_bwd_op.register_fake
def _(do, dht, ap, am, qr, qi, freqs, t0, ck, has_h0, chunk_size):
    B, T, H, D = ap.shape
    dh0 = ap.new_empty(B, H, D, 2, dtype=torch.float32) if has_h0 else ap.new_empty(0, dtype=torch.float32)
    return tuple(ap.new_empty(B, T, H, D) for _ in range(4)) + (dh0,)


def _setup_context(ctx, inputs, output):
    ap, am, qr, qi, freqs, t0, h0, _, chunk_size, _ = inputs
    ctx.save_for_backward(ap, am, qr, qi, freqs, t0, output[2])
    ctx.has_h0, ctx.h0_dtype, ctx.chunk_size = h0 is not None, None if h0 is None else h0.dtype, chunk_size


def _backward(ctx, do, dht, dck):
    ap, am, qr, qi, freqs, t0, ck = ctx.saved_tensors
    dht = None if dht is None or dht.numel() == 0 else dht
    dap, dam, dqr, dqi, dh0 = torch.ops.zoo.holographic_chunk_bwd(do, dht, ap, am, qr, qi, freqs, t0, ck,
                                                                  ctx.has_h0, ctx.chunk_size)
    dh0 = dh0.to(ctx.h0_dtype) if ctx.has_h0 else None
    return dap, dam, dqr, dqi, None, None, dh0, None, None, None


torch.library.register_autograd("zoo::holographic_chunk_fwd", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# Public op: the zoo's name and signature
# ------------------------------------------------------------------------------------------------
def holographic_chunk(a_phase, a_mag, q_re, q_im, freqs, *, initial_state=None, output_final_state=False,
                      chunk_size=64):
    """zoo.holographic.holographic_chunk in Triton, forward and backward. Returns (o [B, T, H, 2D]
    in the input dtype, final_state (M [B, H, D, 2] float32, t [B] int64) or None)."""
    B, T, H, D = check_inputs(a_phase, a_mag, q_re, q_im, freqs, initial_state, chunk_size)
    check_device_and_dtype(a_phase, "fast.holographic", INTERPRET, what="a_phase, a_mag, q_re, q_im",
                           zoo="zoo.holographic")
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be a power of two in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk_size}")
    if initial_state is None:
        h0, t0 = None, torch.zeros(B, dtype=torch.int64, device=a_phase.device)
    else:
        h0, t0 = initial_state
    # The checkpoints only serve a backward: none are written when no gradient can be asked for (the
    # benchmark's forward, inference): 8 B per BT tokens per lane, 4 % of the forward's bytes at BT = 16.
    save_ck = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                              for x in (a_phase, a_mag, q_re, q_im, h0))
    xs = (a_phase, a_mag, q_re, q_im)
    if D > HEAD_LANES and D % HEAD_LANES == 0:  # the kernels' head width (HEAD_LANES): views, the same function
        Hk = H * (D // HEAD_LANES)
        xs = tuple(x.reshape(B, T, Hk, HEAD_LANES) for x in xs)
        freqs = freqs.reshape(Hk, HEAD_LANES)
        h0 = None if h0 is None else h0.reshape(B, Hk, HEAD_LANES, 2)
    # chunk_size is checked; the kernels run their own (KERNEL_CHUNK, faster)
    o, ht, _ = torch.ops.zoo.holographic_chunk_fwd(*xs, freqs, t0, h0, output_final_state, KERNEL_CHUNK, save_ck)
    o = o.reshape(B, T, H, 2 * D)  # the (Re, Im) interleave is per lane, so head groups are contiguous
    return o, ((ht.reshape(B, H, D, 2), t0 + T) if output_final_state else None)


# ------------------------------------------------------------------------------------------------
# The layer: the zoo layer with the op swapped (same parameters, same state dict)
# ------------------------------------------------------------------------------------------------
class LongAttention(zh.LongAttention):
    """zoo.holographic.LongAttention running the Triton chunk op (decoding keeps the zoo's
    recurrent form: one token is a handful of element-wise ops; form="parallel" keeps the oracle)."""

    chunk_op = staticmethod(holographic_chunk)


__all__ = ["holographic_chunk", "LongAttention"]


# ------------------------------------------------------------------------------------------------
# Benchmark (GPU): python -m fast.holographic
# ------------------------------------------------------------------------------------------------
def _benchmark(B=4, T=8192, H=1, D=8192, dtype=torch.bfloat16, device="cuda"):
    """Forward and forward + backward at the headline size against the memory floor, under the
    rule and under other tiles (BT rows x BD lanes, warps): which one the rule should pick is for
    this run to say."""
    from triton.testing import do_bench

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, T, 4 * H * D, device=device, dtype=dtype, generator=g)
    ap, am, qr, qi = (z.view(B, T, H, D) for z in x.chunk(4, dim=-1))  # a projection's views, as in the layer
    freqs = zh.random_frequencies(H, D, 0).to(device)
    t0 = torch.zeros(B, dtype=torch.int64, device=device)
    elt = torch.finfo(dtype).bits // 8
    floor = (4 + 2) * B * T * H * D * elt / 3.0e12 * 1e3
    floor_b = (4 + 2 + 4) * B * T * H * D * elt / 3.0e12 * 1e3
    print(f"floors at 3.0 TB/s: forward {floor:.3f} ms (12 B per token-lane), backward {floor_b:.3f} ms (20 B)")
    ref = holographic_chunk(ap, am, qr, qi, freqs)[0]
    do = torch.randn_like(ref)
    for L in (16, 32, 64):
        ms = do_bench(lambda: holographic_chunk(ap, am, qr, qi, freqs, chunk_size=L))
        print(f"forward, rule at chunk {L}: {ms:.3f} ms = {ms / floor:.2f}x floor")
    # exact (libdevice) sine, cosine and division against the approximate ones the rule uses
    for fast, tiles in [(False, (64, 16, 4)), (True, (64, 16, 4)), (True, (32, 32, 4)), (True, (16, 64, 4)),
                        (True, (32, 64, 8)), (True, (64, 32, 8))]:
        try:
            fwd = lambda: _holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, None, False, tiles[0], tiles=tiles,
                                                 fast=fast)
            o, _, ck = fwd()
            diff = (o.float() - ref.float()).abs().max().item()
            ms = do_bench(fwd)
            bwd = lambda: _holographic_chunk_bwd(do, None, ap, am, qr, qi, freqs, t0, ck, False, tiles[0], tiles=tiles,
                                                 fast=fast)
            ms_b = do_bench(bwd)
            print(f"fast math {fast:d}, tiles (BT, BD, warps) = {tiles}: forward {ms:.3f} ms = {ms / floor:.2f}x floor "
                  f"(max diff vs rule {diff:.1e}); backward alone {ms_b:.3f} ms = {ms_b / floor_b:.2f}x floor")
        except Exception as e:  # one failing tile must not stop the rest
            print(f"tiles {tiles}: {type(e).__name__}: {str(e)[:200]}")
    leaves = [z.detach().requires_grad_() for z in (ap, am, qr, qi)]
    o, _ = holographic_chunk(*leaves, freqs)
    ms_b = do_bench(lambda: torch.autograd.grad(o, leaves, do, retain_graph=True))
    print(f"backward (rule, chunk 64) {ms_b:.3f} ms = {ms_b / floor_b:.2f}x floor")


if __name__ == "__main__":
    _benchmark()
