"""What fast/hrc_la.py and fast/performer.py share: both run a random-feature state [M, V] sliced
into frequency tiles, one program per (tile, batch·head), with the same tile rule, the same chunk
bookkeeping (rows of a chunk, the causal decay Γ, the scale of a chunk's last token), the same way
of adding the tiles' shares, and the same custom-op plumbing. The math of each method stays in its
own file; see their cards for the equations.
"""

import math
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from fast._checks import check_device_and_dtype

STATE_ELEMENTS = 4096  # fp32 state elements per program: 16 registers a thread at 8 warps
# The kernels' chunk is at most 32 tokens, whatever chunk_size asks (the result is the same function;
# only the summation order moves). ptxas for sm_90 (Triton 3.9, V = 64): at 64 the [BT, BT] and
# [BT, BM] blocks beside the state take 255 registers and spill 1-3 KB a thread; at 32 the forward
# fits (HRC-LA 240 registers, no spill; FAVOR+ 48 bytes of spill), the backward spills ~0.5 KB.
MAX_BT = 32
MAX_V = 256  # V sits in one tile
MAX_K = 256  # so does K; the shared-memory rules below are checked up to it (tests: AOT_SHARED_SCRIPT)
MIN_CHUNK = 16  # tl.dot needs every dimension >= 16
# Head dims under 64: every chunk-parallel kernel (walk, phase 3, reverse walk, gradients) runs at
# (BM <= 32, 2 warps), whatever its module tile says. At 4 or 8 warps Triton lowers their products to
# wgmma (a warpgroup is 4 warps), and Triton 3.6's ptxas (CUDA 12.8.93) miscompiles a wgmma's
# shared-memory descriptor at such shapes (fast/hrc_la.py's card, "Small head dims"): on the H100 (run
# 43), HRC-LA at head dims 32/16 with M 16-128 gave outputs 0.4-0.5 off, a backward 0.76 off or an
# illegal address, and FAVOR+ the same (NaN at head dim 16, M 128). At 2 warps (mma.sync, no wgmma)
# all 16 shapes equalled the zoo, as they did at the default tiles under CUDA 12.9.86's ptxas. The
# price (run 46, head dim 32, T 8192): forwards up to 1.31x, HRC-LA's forward + backward up to 1.72x.
SMALL_HEAD_DIM = 64
SMALL_HEAD_TILE = (32, 2)  # (largest BM, num_warps); num_stages stays the module tile's
# Phases θ = u Ωᵀ (and their gradients) at fp32 accuracy: plain tf32 (10-bit mantissa) would move
# cos θ by ~1e-3·|θ|. tf32x3 splits each operand into two tf32 parts (three tensor-core products),
# close to fp32 and much faster than "ieee" (CUDA-core FMAs). The interpreter computes fp32 exactly.
PHASE_PRECISION = tl.constexpr("tf32x3")
EMPTY_SCALE = torch.finfo(torch.float32).min  # the log-scale of an empty state, as in the zoo
EMPTY = tl.constexpr(EMPTY_SCALE)  # the same, in kernels
# cos_sin(θ, FAST=True): θ reduced to r = θ − 2π·n, n = round(θ/2π), r in [−π, π], by a two-constant
# Cody-Waite split of 2π: TWO_PI_HI has 8 significant bits, so n·TWO_PI_HI is exact for |n| < 2¹⁶ and
# θ − n·TWO_PI_HI is exact (Sterbenz); TWO_PI_LO = 2π − TWO_PI_HI in fp32 (its own error 2⁻²⁴ of
# 1.9e-3) leaves r within ~1 ulp of π for |θ| up to ~1e3 (n <= 160). Then the SFU's sin.approx /
# cos.approx (libdevice fast_sinf / fast_cosf: abs error ~1e-6 on [−π, π], no Payne-Hanek slow path).
# The interpreter cannot run libdevice's fast_* (they are calls into the CUDA library): under
# TRITON_INTERPRET it takes tl.sin / tl.cos of the same reduced r, so the reduction stays tested.
TWO_PI_HI = tl.constexpr(6.28125)
TWO_PI_LO = tl.constexpr(2 * math.pi - 6.28125)
INV_TWO_PI = tl.constexpr(1 / (2 * math.pi))
# Under TRITON_INTERPRET (read at import, as @triton.jit does): Triton 3.9's interpreter cannot run
# libdevice's fast_*, and its tl.dot on bf16 operands returns garbage (~1e10; its fp32 -> bf16 cast
# truncates): see cos_sin and half_operand.
KERNEL_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


# ------------------------------------------------------------------------------------------------
# Tile rule and launchers
# ------------------------------------------------------------------------------------------------
def tile_rule(K: int, V: int, M: int, state_blocks: int):
    """(BK, BV, BM, num_warps, num_stages): V in one tile, BM from the budget of STATE_ELEMENTS fp32
    state elements shared by `state_blocks` [BM, BV] blocks (HRC-LA's S_c and S_s: 2; FAVOR+'s S: 1),
    at most 32 at K = 256: FAVOR+'s serial forward at K = 256, V = 64, BM 64 asks for 262272 B of
    shared memory in fp32 (245888 in bf16), over an H100 block's 232448 (sm_90, compiled on a CPU)."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, triton.next_power_of_2(V))
    BM = min(triton.next_power_of_2(M), STATE_ELEMENTS // (state_blocks * BV))
    BM = max(16, min(BM, 32) if BK > 128 else BM)
    return BK, BV, BM, 8, 2  # 8 warps: the state and four [BT, BM] feature blocks live in registers


def serial_bwd_bt(BK: int, chunk_size: int) -> int:
    """The serial backward's chunk: min(chunk_size, MAX_BT), and 16 at K = 256, where its [BT, BK]
    blocks take more shared memory than an H100 block has (sm_90, BM 16, 2 stages: FAVOR+'s causal
    backward 311808 B in bf16, 262144 at 1 stage; HRC-LA's non-causal 262272 in fp32; at BT 16
    <= 196608). The same function: only the summation order moves."""
    return min(chunk_size, MAX_BT if BK <= 128 else MIN_CHUNK)


def dot_precision(q):
    """The chunk kernels' tl.dot precision: fp32 inputs get tf32x3 (fp32-accurate: a trigonometric
    normaliser cancels, and plain tf32 would leave ~1e-2 relative errors there); fp16/bf16 inputs,
    already rounded to 8-11 bits, get plain tf32."""
    return "tf32x3" if q.dtype == torch.float32 else "tf32"


def launch_fwd(chunk_kernel, recurrent_kernel, args, q, V, M, tiles, atomic, causal, chunk_size):
    """One program per (frequency tile, batch·head): the chunk kernel, or the token loop when
    chunk_size is None. `args`: the kernels' positional arguments (the same for both)."""
    B, T, H, K = q.shape
    BK, BV, BM, num_warps, num_stages = tiles
    grid = (triton.cdiv(M, BM), B * H)
    if chunk_size is None:
        recurrent_kernel[grid](*args, K=K, V=V, M=M, BK=BK, BV=BV, BM=BM, CAUSAL=causal, num_warps=num_warps)
    else:
        chunk_kernel[grid](*args, K=K, V=V, M=M, BT=min(chunk_size, MAX_BT), BK=BK, BV=BV, BM=BM, CAUSAL=causal,
                           ATOMIC=atomic, DOT=dot_precision(q), num_warps=num_warps, num_stages=num_stages)


def launch_bwd(bwd_kernel, args, q, V, M, tiles, causal, chunk_size):
    """The chunk backward: the forward's grid with half the frequencies a tile (it holds the state
    and its gradient). `args`: the kernel's positional arguments."""
    B, T, H, K = q.shape
    BK, BV, BM, num_warps, num_stages = tiles
    BM = max(16, BM // 2)
    bwd_kernel[(triton.cdiv(M, BM), B * H)](*args, K=K, V=V, M=M, BT=serial_bwd_bt(BK, chunk_size), BK=BK, BV=BV, BM=BM,
                                             CAUSAL=causal, DOT=dot_precision(q), num_warps=num_warps,
                                             num_stages=num_stages)


def parallel_tiles(K: int, V: int, M: int, BT: int, walk_tile, out_tile, fp32: bool = False, backward: bool = False):
    """(BT, BK, BV, (BM, num_warps, num_stages) of the state walk, (BM, num_warps, num_stages) of
    phase 3) of a chunk-parallel causal forward (the two-launch plan of fast/hrc_la.py's card), from
    the head dims, M and the module's PARALLEL_BT, WALK_TILE, OUT_TILE (BM capped by M's power of
    two; nothing keyed on T or B). Head dims under SMALL_HEAD_DIM take SMALL_HEAD_TILE instead.
    `backward`: the tiles of HRC-LA's parallel backward, walk_tile a walk's (forward or reverse) and
    out_tile the gradient kernel's. `fp32`: the inputs' dtype (fp16/bf16 otherwise).
    Shared memory (an H100 block takes at most 232448 B; ptxas for sm_90, Triton 3.9, compiled on a
    CPU and not run on a GPU): the module tiles fit at the timed K = V = 64 and are kept there; at
    larger head dims they step down only where the bytes require it (M = 256; M only caps BM):
      walks: K = 256: BM <= 32 (the walk at BM 64, K = 256: 253968-393216 B in bf16 and fp32);
        fp32 and BK + BV > 256: 1 stage (a stage of k and v rows: (64, 256) 245760 B at 2 stages,
        163840 at 1; the reverse walk at K = 256, V = 64: 278788 at 2, <= 196608 at 1).
      phase 3: fp32 and BK + BV > 320: 1 stage ((128, 256) 245760 B, (256, 256) ~327 KB at 2;
        229376 at 1).
      backward: BT 32 unless K <= 64 and V <= 128 (the gradient kernel, K = 128, V = 64, bf16:
        262144 B at BT 64, 69632 at 32), 16 in fp32 at K = 256 (V = 64: 286720 B at 32; V = 256:
        335872 at 32, 198656 at 16); the walks take the backward's BT (the same function, only
        the summation order moves; their rules above, measured at BT 64, are kept)."""
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    small = min(K, V) < SMALL_HEAD_DIM
    if backward and not (BK <= 64 and BV <= 128):
        BT = min(BT, 16 if fp32 and BK > 128 else 32)

    def tile(bm, warps, stages, walk=False):
        if small:
            bm, warps = min(bm, SMALL_HEAD_TILE[0]), SMALL_HEAD_TILE[1]
        if walk and BK > 128:
            bm = min(bm, 32)
        if fp32 and BK + BV > (256 if walk else 320):
            stages = 1
        return max(16, min(triton.next_power_of_2(M), bm)), warps, stages
    return BT, BK, BV, tile(*walk_tile, walk=True), tile(*out_tile)


# ------------------------------------------------------------------------------------------------
# Host checks and stabiliser
# ------------------------------------------------------------------------------------------------
def check_kernel_inputs(name, q, v, chunk_size, interpret):
    """What the kernels add to the zoo's checks (`name`: the method's file stem, for the messages;
    `interpret`: the fast module's own INTERPRET switch, read at the call)."""
    check_device_and_dtype(q, f"fast.{name}", interpret, zoo=f"zoo.{name}")
    if q.shape[-1] > MAX_K:
        raise ValueError(f"q's head dim K = {q.shape[-1]}: the kernels take K <= {MAX_K}")
    if v.shape[-1] > MAX_V:
        raise ValueError(f"v's head dim V = {v.shape[-1]}: the kernels take V <= {MAX_V}")
    if chunk_size is not None and chunk_size < MIN_CHUNK:
        raise ValueError(f"chunk_size must be a power of two >= {MIN_CHUNK} for tl.dot, got {chunk_size}")


def running_scale(a, c0, causal):
    """c_t [B, T, H]: the prefix max of the keys' stabiliser a (its global max when non-causal), at
    least the initial state's c0 [B, H]. A constant to autograd (a is detached). The prefix max
    runs over the last dim of a [B, H, T] copy: torch.cummax over T of [B, T, H] (an outer-dim
    scan) took 1.5 ms at B·T = 32768, H = 16 on the H100; a max is exact, so the values are the same."""
    if not causal:
        return torch.maximum(a.amax(1, keepdim=True).expand_as(a).contiguous(), c0[:, None])
    c = torch.cummax(a.transpose(1, 2).contiguous(), -1).values  # [B, H, T]
    return torch.maximum(c, c0[..., None]).transpose(1, 2).contiguous()


def floored(den, floor):
    """D = max(den, floor), `floor` a tensor like den or a float: the zoo's normaliser (3)."""
    return den.clamp_min(floor) if isinstance(floor, float) else torch.maximum(den, floor)


def divide(num, den, floor, dtype):
    """(3) o = num / max(den, floor) in `dtype` (`floor`: a tensor like den, or a float). For the
    serial kernels, whose frequency tiles add shares of num and den into fp32 buffers: they divide
    here, after their launch; the chunk-parallel phase 3 divides in its kernel (store_chunk_out)."""
    return (num / floored(den, floor)[..., None]).to(dtype)


def output_cotangents(do, dden, o, den, floor, V):
    """(dnum [B, T, H, V], dden [B, T, H]) fp32 from the cotangent `do` of o = num / max(den, floor),
    the floor a constant (the zoo detaches it), D = max(den, floor):
        dnum = do / D,   dden = −Σ_v do·o / D where den >= floor, 0 where the floor holds,
    plus `dden`, a cotangent of den itself (an output of the op; None when unused). o is the op's
    output in v's dtype (bf16: rounded by 2⁻⁹ relative, as its cotangent is); num is never stored."""
    D = floored(den, floor)
    if do is None:
        dnum, dden_o = den.new_zeros(*den.shape, V), torch.zeros_like(den)
    else:
        dnum = do.float() / D[..., None]
        dden_o = torch.where(den >= floor, -(dnum * o.float()).sum(-1), 0.0)
    return dnum, dden_o if dden is None else dden_o + dden


# ------------------------------------------------------------------------------------------------
# Custom-op plumbing: what torch.compile(fullgraph=True) sees (the kernels stay opaque to it)
# ------------------------------------------------------------------------------------------------
def or_empty(x, ref):
    return ref.new_empty(0) if x is None else x


def or_none(x):
    return None if x is None or x.numel() == 0 else x


def contig(*xs):
    return tuple(x.contiguous() if isinstance(x, torch.Tensor) else x for x in xs)


def state_cotangents(dht, dzt, q, rows, V):
    """The final state's cotangents (an empty tensor: none); a half without one gets zeros."""
    dht, dzt = or_none(dht), or_none(dzt)
    if dht is not None or dzt is not None:
        B, H = q.shape[0], q.shape[2]
        dht = q.new_zeros(B, H, rows, V, dtype=torch.float32) if dht is None else dht
        dzt = q.new_zeros(B, H, rows, dtype=torch.float32) if dzt is None else dzt
    return dht, dzt


def register_fwd_ops(name, schema, launch, fake, setup_context, backward):
    """zoo::{name}_chunk_fwd and zoo::{name}_recurrent_fwd, both with `schema` (q first, chunk_size
    last; the recurrent op ignores chunk_size): the inputs made contiguous, `launch(*inputs,
    chunk_size or None)`, its Nones as empty fp32 tensors (custom ops return no None), and autograd
    through the chunk backward. Returns the two ops."""
    def forward(chunk):
        def op(*args):
            *args, chunk_size = contig(*args)
            out = launch(*args, chunk_size if chunk else None)
            empty = args[0].new_empty(0, dtype=torch.float32)
            return tuple(or_empty(x, empty) for x in out)
        return op

    ops = []
    for form in ("chunk", "recurrent"):
        op = torch.library.custom_op(f"zoo::{name}_{form}_fwd", forward(form == "chunk"), mutates_args=(),
                                     schema=schema)
        op.register_fake(fake)
        torch.library.register_autograd(f"zoo::{name}_{form}_fwd", backward, setup_context=setup_context)
        ops.append(op)
    return tuple(ops)


# ------------------------------------------------------------------------------------------------
# Kernel fragments (inlined into each kernel: the same code the kernels held before)
# ------------------------------------------------------------------------------------------------
@triton.jit
def frequency_tile(omega, s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr):
    """Map the program to frequency tile i_m of (batch, head) i_bh: offsets and masks of K, V and
    the tile's BM frequencies, r_m = 1/√M (0 on padding frequencies), the tile of Ω [BM, BK] in
    fp32, and row0 = b·T, the batch's first row."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    s_u, r_m = tl.cast(s_u, tl.float32), tl.cast(r_m, tl.float32)  # Inductor may pass fp64
    offs_k, offs_v, offs_m = tl.arange(0, BK), tl.arange(0, BV), i_m * BM + tl.arange(0, BM)
    mask_k, mask_v, mask_m = offs_k < K, offs_v < V, offs_m < M
    b_rm = tl.where(mask_m, r_m, 0.0)  # 1/√M, and 0 for the padding frequencies
    b_omega = tl.load(omega + (i_h * M + offs_m[:, None]) * K + offs_k[None, :],
                      mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # [BM, BK]
    row0 = i_b.to(tl.int64) * T
    return i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega


@triton.jit
def state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, ROWS: tl.constexpr, V: tl.constexpr):
    """Pointers and mask of this tile's rows of a state [B, H, ROWS, V] and its normaliser [B, H, ROWS]."""
    p_S = (i_bh.to(tl.int64) * ROWS + offs_m[:, None]) * V + offs_v[None, :]
    p_z = i_bh.to(tl.int64) * ROWS + offs_m
    return p_S, p_z, mask_m[:, None] & mask_v[None, :]


@triton.jit
def state_or_zeros(h0, z0, p_S, p_z, mask_S, mask_m, LOAD: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr):
    """A state block S [BM, BV] and z [BM] in fp32: zeros, plus h0, z0 when LOAD."""
    b_S = tl.zeros([BM, BV], dtype=tl.float32)
    b_z = tl.zeros([BM], dtype=tl.float32)
    if LOAD:
        b_S += tl.load(h0 + p_S, mask=mask_S, other=0.0)
        b_z += tl.load(z0 + p_z, mask=mask_m, other=0.0)
    return b_S, b_z


@triton.jit
def store_state(ht, zt, p_S, p_z, mask_S, mask_m, b_S, b_z):
    tl.store(ht + p_S, b_S, mask=mask_S)
    tl.store(zt + p_z, b_z, mask=mask_m)


@triton.jit
def chunk_rows(i_t, row0, i_h, T, H, BT: tl.constexpr):
    """Chunk i_t: its token offsets, which are inside T, and its rows of a [B, T, H, ...] tensor."""
    offs_t = i_t * BT + tl.arange(0, BT)
    mask_t = offs_t < T
    return offs_t, mask_t, (row0 + offs_t) * H + i_h


@triton.jit
def load_rows(x, p_t, mask_t, offs, mask, N: tl.constexpr):
    """x[rows p_t, :N] as an fp32 block [BT, len(offs)], 0 outside."""
    return tl.load(x + p_t[:, None] * N + offs[None, :], mask=mask_t[:, None] & mask[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def reduce_2pi(th):
    """r = θ − 2π·round(θ/2π) in [−π, π] (two-constant Cody-Waite: see TWO_PI_HI)."""
    n = tl.floor(th * INV_TWO_PI + 0.5)
    return (th - n * TWO_PI_HI) - n * TWO_PI_LO


@triton.jit
def cos_sin(th, FAST: tl.constexpr):
    """(cos θ, sin θ): libdevice's accurate ones, or (FAST) the SFU's approximate ones after reduce_2pi."""
    if FAST:
        r = reduce_2pi(th)
        if KERNEL_INTERPRET:
            b_cos, b_sin = tl.cos(r), tl.sin(r)
        else:
            b_cos, b_sin = libdevice.fast_cosf(r), libdevice.fast_sinf(r)
    else:
        b_cos, b_sin = tl.cos(th), tl.sin(th)
    return b_cos, b_sin


@triton.jit
def half_operand(x, DT: tl.constexpr):
    """x rounded to DT (a tl.dot operand in the input's half dtype). The interpreter cannot dot bf16
    operands (see KERNEL_INTERPRET): there x takes DT's rounding but goes back to fp32 for an exact
    fp32 product. Its fp32 -> bf16 cast truncates (whatever fp_downcast_rounding says: Triton 3.9),
    a bias the GPU's round-to-nearest-even does not have and that a cancelling normaliser
    amplifies (2.3e-2 against 7.5e-4 relative error on a 10-token case), so bf16 is rounded here
    by hand: add half an ulp of bf16 (plus the tie-breaking bit) to the fp32 bits, drop the low 16."""
    if KERNEL_INTERPRET:
        if DT == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            y = bits.to(tl.float32, bitcast=True)
        else:
            y = x.to(DT).to(tl.float32)
    else:
        y = x.to(DT)
    return y


@triton.jit
def _max(x, y):
    return tl.maximum(x, y)


@triton.jit
def prefix_max(x):
    """The running maximum of x [BT] along its only axis (tl has cumsum, not cummax)."""
    return tl.associative_scan(x, 0, _max)


@triton.jit
def record_operand(p, mask, FT: tl.constexpr):
    """A block of a chunk's record (S⁻ rows [BM, BV]) as a dot operand in FT. A record stored in
    FT already (HALF_RECORDS with FEATURE_DOTS_16) goes from memory into the product untouched (no
    fp32 round trip; phase 3 timed the same either way, run 51); any other is converted by
    half_operand. The interpreter cannot dot bf16, so there it is widened to fp32 (its values are
    FT's already)."""
    b = tl.load(p, mask=mask, other=0.0)
    if b.dtype == FT:
        if KERNEL_INTERPRET:
            b = b.to(tl.float32)
    else:
        b = half_operand(b.to(tl.float32), FT)
    return b


@triton.jit
def causal_decay(offs_t, mask_t, b_c):
    """(3) Γ_tj = e^{c_j − c_t} for j <= t inside the chunk, 0 elsewhere [BT, BT]."""
    mask_A = (offs_t[:, None] >= offs_t[None, :]) & mask_t[:, None] & mask_t[None, :]
    return tl.exp(tl.where(mask_A, b_c[None, :] - b_c[:, None], float("-inf")))  # mask, then exp


@triton.jit
def chunk_end(b_c, mask_t):
    """The scale of the chunk's last token c_last and each token's weight e^{c_j − c_last} [BT]."""
    b_clast = tl.max(tl.where(mask_t, b_c, float("-inf")), 0)
    return b_clast, tl.exp(tl.where(mask_t, b_c - b_clast, float("-inf")))


@triton.jit
def store_share(num, den, p_t, mask_t, offs_v, mask_v, b_o, b_d, V: tl.constexpr, ATOMIC: tl.constexpr):
    """Write this tile's share of num [BT, BV] and den [BT]: added (ATOMIC: the tiles of one head add
    their frequencies' shares) or stored (one tile holds all M)."""
    p_o = p_t[:, None] * V + offs_v[None, :]
    mask_o = mask_t[:, None] & mask_v[None, :]
    if ATOMIC:
        tl.atomic_add(num + p_o, b_o, mask=mask_o)
        tl.atomic_add(den + p_t, b_d, mask=mask_t)
    else:
        tl.store(num + p_o, b_o, mask=mask_o)
        tl.store(den + p_t, b_d, mask=mask_t)


# ------------------------------------------------------------------------------------------------
# Fragments of the chunk-parallel causal forward (the state walk and phase 3; fast/hrc_la.py's card)
# ------------------------------------------------------------------------------------------------
@triton.jit
def chunk_record(hs, i_bh, i_t, NT, R: tl.constexpr):
    """The start of chunk i_t's record of (batch, head) i_bh in hs [B·H, NT, R]."""
    return hs + (i_bh.to(tl.int64) * NT + i_t) * R


@triton.jit
def omega_tile(omega, i_h, i_m, r_m, offs_k, mask_k, K: tl.constexpr, M: tl.constexpr, BM: tl.constexpr):
    """Frequency tile i_m: offsets, mask, 1/√M (0 on padding frequencies) and Ω's rows [BM, BK] in fp32."""
    offs_m = i_m * BM + tl.arange(0, BM)
    mask_m = offs_m < M
    b_omega = tl.load(omega + (i_h * M + offs_m[:, None]) * K + offs_k[None, :],
                      mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
    return offs_m, mask_m, tl.where(mask_m, r_m, 0.0), b_omega


@triton.jit
def phases_t(b_xT, b_omega, s_u, X_IS_TF32: tl.constexpr):
    """θᵀ = s_u·(Ω xᵀ) [BM, BT] at fp32 accuracy: Ω [BM, BK] fp32, xᵀ [BK, BT] as loaded (unscaled).
    Transposed (frequencies down the rows) so that the chunk's xᵀ, fixed through the frequency
    loop, is the right-hand operand the compiler keeps in shared memory: with x on the left, ptxas
    for sm_90 held q's and k's parts in registers (255 registers, 200-400 bytes of spill in phase 3).
    bf16/fp16 inputs (X_IS_TF32) are exact in tf32 (8 and 11 significant bits <= tf32's 11), so
    only Ω is split: Ω = Ω_hi + Ω_lo, Ω_hi its top 11 bits (what the tensor cores read of an fp32),
    two tf32 products, exact but for Ω_lo's own truncation (2⁻²² of Ω): PHASE_PRECISION's tf32x3
    with its third product (x_lo Ω_hi) zero. fp32 inputs take PHASE_PRECISION itself."""
    if X_IS_TF32:
        b_hi = (b_omega.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
        b_th = tl.dot(b_hi, b_xT, input_precision="tf32")
        b_th = s_u * tl.dot(b_omega - b_hi, b_xT, b_th, input_precision="tf32")
    else:
        b_th = tl.dot(b_omega, s_u * b_xT, input_precision=PHASE_PRECISION)
    return b_th



@triton.jit
def chunk_program(q, k, s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr):
    """Map a phase-3 program to chunk i_t of (batch, head) i_bh: offsets and masks of K and V, the
    chunk's rows and its q and k transposed [BK, BT] as loaded (unscaled: see phases_t)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    s_u, r_m = tl.cast(s_u, tl.float32), tl.cast(r_m, tl.float32)
    offs_k, offs_v = tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    row0 = i_b.to(tl.int64) * T
    offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
    b_xqT = tl.trans(load_rows(q, p_t, mask_t, offs_k, mask_k, K))  # [BK, BT]
    b_xkT = tl.trans(load_rows(k, p_t, mask_t, offs_k, mask_k, K))
    return i_t, i_bh, i_h, row0, s_u, r_m, offs_k, offs_v, mask_k, mask_v, offs_t, mask_t, p_t, b_xqT, b_xkT


@triton.jit
def chunk_state_in(c, c0, hs, i_t, i_bh, i_h, row0, b_c, mask_t, H, NT, R: tl.constexpr, BT: tl.constexpr):
    """The read-out's decay e^{c⁻ − c_t} [BT] (the state before chunk i_t is at the scale c⁻ of the
    previous chunk's last token, c0 for the first) and the start of the chunk's record."""
    b_cprev = tl.where(i_t > 0, tl.load(c + (row0 + tl.maximum(i_t * BT - 1, 0)) * H + i_h), tl.load(c0 + i_bh))
    return tl.exp(tl.where(mask_t, b_cprev - b_c, float("-inf"))), chunk_record(hs, i_bh, i_t, NT, R)


@triton.jit
def store_chunk_out(o, den, v, b_A, b_oi, b_di, b_dec, b_floor, p_t, mask_t, offs_v, mask_v, V: tl.constexpr,
                    FT: tl.constexpr, DOT: tl.constexpr):
    """(5) for the chunk's queries, then (3) the division, written once: num_t = (A v)_t +
    e^{c⁻−c_t} (φ̂_tᵀS⁻), den_t = Σ_j A_tj + e^{c⁻−c_t} (φ̂_tᵀz⁻), o_t = num_t / max(den_t, floor_t)
    in o's dtype, and den (fp32, for the backward: see output_cotangents). A [BT, BT] already masked
    and decayed (Γ), the read-outs b_oi [BT, BV] and b_di [BT] at the state's scale c⁻, b_floor
    [BT] or a scalar. A and v enter the dot as FT (see half_operand); o is rounded by half_operand
    too (the interpreter's own cast truncates). A NaN den gives a NaN o, as torch.maximum does."""
    b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
    b_num = tl.dot(half_operand(b_A, FT), half_operand(b_v, FT), input_precision=DOT) + b_dec[:, None] * b_oi
    b_den = tl.sum(b_A, 1) + b_dec * b_di
    b_D = tl.where(mask_t, tl.maximum(b_den, b_floor, propagate_nan=tl.PropagateNan.ALL), 1.0)  # 1 past T: no 0/0
    b_o = b_num / b_D[:, None]  # [BT, BV]
    tl.store(o + p_t[:, None] * V + offs_v[None, :], half_operand(b_o, o.dtype.element_ty).to(o.dtype.element_ty),
             mask=mask_t[:, None] & mask_v[None, :])
    tl.store(den + p_t, b_den, mask=mask_t)
