"""Triton mirror of zoo/deltanet.py (the delta rule); math, shapes and the layer's meaning there.

This file also holds the one chunkwise kernel set of the whole delta-rule family: the gated delta
rule S_t = e^{g_t}(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀ(s q_t). DeltaNet is the
gate-free case (USE_G = False: every gate line is compiled out), fast/gated_deltanet.py passes g,
and fast/deltaproduct.py runs it over T·n_h micro-steps. Zoo equation numbers below are those of
zoo/gated_deltanet.py (4): the chunk form; with g ≡ 0 they are zoo/deltanet.py's (4).

Kernel plan (chunk L = BT = 64 rows; Γ = chunk-local cumsum of g; X = (I + A)⁻¹):
  forward   1. _chunk_wy_fwd_kernel, grid (NT, B·H), parallel over chunks:
               A = strict_tril(diag(β) K Kᵀ ⊙ e^{Γ_i−Γ_j}); X blockwise: the four diagonal 16×16
               blocks by forward substitution column by column, then merged by exact fp32 dots;
               W = X diag(β e^Γ) K, U = X diag(β) V; and the output's mixing matrix R = sQKᵀ ⊙ D
               (diagonal included), one [64, 64] dot. Stores W, U, R (input dtype) and Γ (fp32).
               q, k, v are read in column slices of BC (= BV of _tiles): K Kᵀ and QKᵀ accumulate
               over the slices, W and U are written slice by slice.
            2. _chunk_state_fwd_kernel, grid (V/BV, B·H), sequential over chunks, S in fp32
               registers: V_new = U − W S; o = e^Γ ⊙ sQS + R V_new;
               S ← e^{Γ_L} S + (e^{Γ_L−Γ} ⊙ K)ᵀ V_new. The output is read on the way, so an
               inference forward never writes the per-chunk states.
  training  with gradients on (and SAVE_INTERMEDIATES, the default), step 1 also stores X (fp32)
            and step 2 also stores the chunk-entry states h [B, NT, H, K, V] and V_new beside o:
            the op keeps them, W, R and Γ for the backward (SAVED).
  backward  starts from SAVED. Without it (SAVE_INTERMEDIATES off, or the recurrent op's gradient)
            it first recomputes 1 (storing X) and 2 (storing h and V_new instead of o). Then
            3. _chunk_state_bwd_kernel, grid (V/BV, B·H), sequential over chunks in reverse:
               dV_new = Rᵀ dO + (e^{Γ_L−Γ}⊙K) dS,  dS ← e^{Γ_L} dS + (e^Γ⊙sQ)ᵀ dO − Wᵀ dV_new.
            4. _chunk_bwd_dqkw_kernel, grid (K/BKS, NT, B·H): dq (final), the dk and dw terms that
               come through the state and the output, and the gate terms of dΓ.
            5. _chunk_wy_bwd_kernel, grid (NT, B·H): back through W, U and X = (I + A)⁻¹
               (dA = −Xᵀ dX Xᵀ): dk (final), dv, dβ, and dg = reverse cumsum of dΓ in the chunk.
               Only [64, 64] matrices stay live (X, dX then dA, K Kᵀ); k, dW, v, dU are walked in
               column slices, k and dW twice (dX is complete only after the V slices).
  Kept by a training forward for the backward: the inputs and SAVED, 5.5X of memory (W, R, V_new
  and h in the input dtype, X in fp32; X is one [B, T, H, D] input's size, see "Cost"); with
  SAVE_INTERMEDIATES off only the inputs (q, k, v, g, β, h0), and the backward recomputes
  W, U, R, X, Γ, h and V_new: the memory floor, at the price measured under "Cost".
  decode    _recurrent_fwd_kernel, grid (V/BV, B·H): token loop with S in registers (fla's
            fused_recurrent scheme), n_h micro-steps per token for DeltaProduct. Its gradient is the
            chunk backward (same function), so the recurrent op has forward and backward.

Micro-steps (DeltaProduct, NH = n_h > 1; NH = 1 everywhere else): k, v, β have a row per
  micro-step, q, g, dO and the outputs o, dq, dg a row per token. Micro-step t reads token t // NH
  (duplicated rows, plain loads); g counts at a token's first micro-step and dO at its last (a
  tl.where on the loaded rows), o and dq are stored from the last micro-step and dg from the first
  (masked stores). A duplicated q on a micro-step without an output is harmless: o is not stored
  there, and in the backward every use of q meets that row's zero dO (dR, the dS update, the dΓ
  terms). NH must divide the 16-row slab of step 1 (_direct); other n_h interleave on the host.
Tile rule (head dims and dtype only; T is never a compile key: it is in do_not_specialize):
  BT = 64 always (the chunk_size option is checked and accepted; the result does not depend on it
  beyond rounding). BK = next power of two ≥ K, whole K in one tile in steps 2-4 (K, V ≤ 256);
  steps 1 and 5 walk K and V in column slices (BV of their _tiles entry). One launch
  configuration per kernel (_tiles: the value tile BV, num_warps, num_stages). At K = V = 128,
  measured on the H100 (runs 26-27, benchmarks/results/h100-2026-11-23/run27-delta_tiles.py: every
  candidate of each kernel timed in the whole op, outputs and gradients compared with the old rule):
    step 1 4 warps (1.21 -> 0.63 ms against 8, spills and all, run 8), one chunk a program. Tried
    and not kept (runs 35-36, benchmarks/results/h100-2026-11-23/run35-wy_loop.py): two chunks a
    program with a 2-stage pipeline, the next chunk's tiles loaded while this one is solved (which
    needs the solve's loop unrolled: Triton pipelines innermost loops only). Without the gate step 1
    0.579 -> 0.496 ms, the delta rule's forward 0.83 -> 0.75 ms, fwd + bwd 3.44 -> 3.28 ms; with the
    gate slower (0.684 -> 0.817 ms; the sm_90 build spills 640 bytes a thread against 136). But the
    unrolled kernel compiles 4.0-4.3 s against ~2.2 s on the H100's host, and the delta rule's
    forward first call went to 5.2 s (from 2.5): over issue 2's 5 s, for a gain the gated and
    DeltaProduct ops do not get. Steps 2 and 3 BV = 64, 4 warps,
    3 stages: S is a [128, 64] fp32 tile, 2 programs a head (128 at B·H = 64: one an SM), and the
    deeper pipeline hides the chunk loads of the serial walk: step 2 0.586 -> 0.257 ms, step 3 about
    0.33 ms less, against BV = 32 at 2 stages (4 stages do not fit in shared memory); step 4 BV 64,
    8 warps, 3 stages over the whole K (BKS = 128, one program a chunk instead of two: dO, V_new
    and dV_new read once; gated 4.39 -> 4.15 ms fwd+bwd, run 28); step 5 BV 32, 8 warps, 3 stages
    (0.12 ms less). Together: delta rule forward 1.22 -> 0.88 ms, forward + backward 4.27 -> 3.54 ms
    (runs 27-28, inputs' gradients reset between calls).
    Session 15 (run 57, benchmarks/results/h100-2026-11-23/run56-delta_wy.py, each variant in the
    whole op keeping the intermediates, B 4, T 8192, H 16, bf16; kernel times from the profiler):
    step 5 in column slices: 32 wide at 4 warps, 3 stages, 0.536 ms (delta rule; gated 0.583,
    DeltaProduct 0.582) against the whole-K kernel's 0.749 (0.854, 0.870): two blocks an SM (196
    registers, 236 gated) where the whole-K kernel held 254 at 8 warps, one block. Sliced at 8
    warps it is slower (0.922 ms: 161 registers, still one block of 8 warps an SM); 16 wide under
    maxnreg 168 0.709, 64 wide at 8 warps 0.725. Step 1: one slice of 128 (the whole K, with k
    read again for W after the solve) 0.552 ms storing X against 0.636 before; slices of 64 at 1
    stage 0.716, at 2 stages 0.592. Gradients' errors against the fp32 op unchanged by any of
    them (5.0-6.1e-3 relative to the largest entry, delta rule). The two kept configurations were
    timed apart, each beside the other's old one, NOT together (the device time ran out): with
    both, the delta rule's kernels sum to 0.552 + 0.405 + 0.359 + 0.580 + 0.536 = 2.43 ms a fwd
    + bwd (measured: 2.82 ms with the new step 1, 2.60 with the new step 5); the gated and
    DeltaProduct ops are untimed with the new step 1.
    Session 16 (runs 58-61): both together, the delta rule's forward 0.781 ms and fwd + bwd 2.523 ms
    (gated 0.875 / 2.841, DeltaProduct 0.847 / 2.680), with step 4 at 2 stages (below): 0.06 ms
    slower than at 3 stages (2.460 in run 58), which gave wrong results.
  Triton 3.6 miscompiles, found on the H100 and avoided by the rule (not by a change to the math):
    step 4 with the gate, its loop over V tiles pipelined, wrote a different dw on two launches with
    the same inputs (one captured launch replayed, benchmarks/results/h100-2026-11-23/run59-step4.py):
    at K = 128, BV 32 or 64 at 3 stages, 8 warps (runs 58-60); at K = 64, BV 32 at 2 stages, 4 or 8
    warps (run 62). With n_h = 2 off by 31-69% of dw's largest entry in thousands of rows, every
    repeat; the gated rule's once in 63 rows. Identical on every repeat, with dw matching fp32 torch
    to 2.3-2.4e-3: one stage (K = 64 and 128), one V tile at 2 stages (K = 64, BV 64), and at K = 128
    BV 64 at 2 stages or at 4 warps with 3 stages. So step 4 takes one V tile up to V = 64 in
    16-bit and one stage otherwise, but for the timed (64, 8, 2) at K = V = 128 (4 warps there:
    0.08 ms slower, gated 0.41); at K = 64 the repeat test's gradients came out bit-identical on
    the H100 (run 63), as at 128. This was DeltaProduct's
    nondeterminism and its 4-6e-2 dk error (5.8e-3 at K = 128 now, as the gated rule's), and likely
    the "4 warps away from 8 warps" gated gradients met in session 5. Step 3 at one stage (any BV,
    4 or 8 warps) faults with an illegal memory access at K = V = 256 in 16-bit; step 2 at one stage
    gave gated outputs off by up to 1.9 at BV 16 once (session 5). So in 16-bit steps 2' and 3 keep
    2 stages everywhere (step 1 has no loop to pipeline at K = 128; step 2 computing o at K = 256
    runs one stage, below).
  Other head dims and fp32 keep the rule ptxas counts chose (BV = 32, 2 stages; 8 warps from K =
  64, 4 below: at 4 warps and K = 128 steps 4 and 5 spill up to 1.8 KB a thread). At K = 256 two
  stages at BV 32 ask more shared memory than the H100 has (232-290 KB; tests/test_deltanet_fast.py
  compiles every kernel for sm_90 on a CPU and bounds it): 16-bit takes BV 16 and 2 stages for
  steps 2', 3 and 5 (2' and 3 at 4 warps), step 4 one stage (above), step 2 computing o BV 32 at
  one stage (what the forward and gradient tests passed with on the H100; BV 16 at two stages
  fits, 223-228 KB, but never ran); fp32 one stage, where BV 16 at two still asks 250 KB. On the
  H100 (run 61) every fast GPU test of the family passed, the K = 256 gradients in 16-bit among
  them (step 4 then at BV 16 and 2 stages); run 63, with step 4 at one stage there, passed them
  all again (40), and the fp32 tests on the GPU (10, K = 256 among them). H stays a compile-time
  constant (with a runtime H the row strides H·K are not constants, and ptxas for sm_90 spills
  ~550 bytes a thread in the sequential kernels).
  No row masks: the host pads T to a multiple of 64 (see _pad_to_chunk); head dims are masked
  against constexpr K, V, which costs nothing when they are powers of two.

Numerics: every accumulator is fp32 (the state, the dots' outputs). The 16×16 inverses and
their merges run in fp32 with exact (ieee) dots: the solve is the precision-sensitive step. Other
dots take operands in the input dtype (bf16/fp16 tensor cores; fp32 inputs use tf32x3, see
_precision). The final state is fp32.

Cost at the headline size (bf16, B = 4, T = 8192, H = 16, K = V = D = 128; one [B, T, H, D]
bf16 tensor is X = 134 MB; 1 FMA = 2 FLOPs; per chunk of L = 64 rows and one head):
  FLOPs, forward: step 1: the 10 lower 16×16 blocks of K Kᵀ, W and U, and the whole 64×64 Q Kᵀ
    (16 blocks, 6 of them masked away): 46·16²·D = 1.5 M FMA, plus 81 k FMA of fp32 solve
    (forward substitution and merges, CUDA cores); step 2: W S, sQS and Kᵀ V_new (L·D² each) and
    R V_new (L²·D): 3.7 M FMA. Total 5.3 M FMA = 11 MFLOP per chunk-head, × 8192 chunk-heads =
    87 GFLOP: ~0.12 ms at 750 TFLOP/s, so not the bound.
  bytes, forward: floor (q, k, v, β read once, o written once) = 4X = 537 MB: 0.18 ms at 3 TB/s.
    This plan: step 1 reads q, k, v and writes W, U and R (5.5X); step 2 reads q, k, W, U, R and
    writes o (5.5X, counting the V-tile programs of one head as one read: they run side by side
    and share L2): 11X = 1.5 GB, 0.49 ms at 3 TB/s, 2.75× the floor. (fla 0.6.0's forward writes
    and reads A, X, W, U, the chunk states h and V_new: ≈ 20X.)
    Measured (H100, runs 27-28): forward 0.88 ms = 1.8× this plan's 0.49 ms and 4.9× the floor;
    step 2 0.26 ms, at its own 5.5X (0.25 ms); step 1 0.63 ms against its 5.5X: the lever left
    for issue 3's 0.70 ms (step 1 spills at 4 warps on Triton 3.6 and is slower at 8).
    Session 6 (runs 32-34), step 1 only: R as one [64, 64] dot instead of ten 16×16 blocks and the
    column-wise diagonal solve: step 1 0.631 -> 0.581 ms, forward 0.883 -> 0.831 ms, fwd + bwd
    3.57 -> 3.45 ms (gated 0.999 -> 0.941 / 4.16 -> 4.03). Tried and not kept: (a) the "X route"
    (step 1 stores X, step 2 forms U and W on the fly): forward 0.885 -> 0.879 (delta), 0.999 ->
    0.978 (gated), DeltaProduct unchanged, but step 2 grew 0.257 -> 0.332 ms (one more dot in its
    serial chain) and the backward then needs a second step-1 variant, a longer first call;
    (b) 2 warps with tf32x3 merges: delta forward 0.794, fwd + bwd 3.35 ms, but the gated fwd +
    bwd first call took 7.5 s; (c) 8 warps: ~2× slower. Without any diagonal inverse (a wrong
    result, timed to bound it) step 1 takes 0.449 ms: the solve costs ~0.13 ms, the rest of step 1
    is ~0.2 ms above its bytes (one chunk a program, nothing overlaps its loads but other
    programs, and 255 registers leave room for few; pipelining two chunks a program took 0.08 ms
    of it back, at a price in compile time: see "Tiles").
    Session 12 (runs 44-45, benchmarks/results/h100-2026-11-23/run4[45]-*), bit-identical results,
    not kept: (d) whole-chunk products (X assembled from its blocks in registers, W and U one
    64-row wgmma each, A from one K Kᵀ): step 1 0.576-0.607 ms against 0.580 (±0.03; compiles in
    1.0-1.6 s against 3.3-4.3); at 8 warps or under maxnreg 128/168 0.74-0.84 ms; (e) step 1 split
    into a solve kernel (X stored) and an apply kernel (R, W, U), each at its own occupancy: 0.657
    ms at best. The solve's latency, at two blocks an SM, is what holds step 1.
    Session 17, from the sm_90 build (Triton 3.6, compiled on a CPU; not timed): Triton lays the
    [16, 16, 4] tensor of _invert_unit_lower4 out with column bit 3 on the warps (and 2 of the 4
    warps holding copies), so each of the 15 steps extracts column m of A across warps: 3
    bar.sync, 18 shared-memory accesses and 41 shuffles a step, though that column does not depend
    on X (X's row, reduced over rows, stays inside a warp). 15 such steps, ~31 programs in series
    an SM, are of the order of the ~0.13 ms the solve costs. The lead for issue 3's forward: a
    solve whose per-step extraction stays inside a warp (Triton's language sets no layouts).
    Run 66 (session 21, benchmarks/results/h100-2026-11-23/run66-*) timed the two levers sessions
    18 and 20 wrote, bit-identical outputs and gradients, not kept: (f) that solve, the blocks
    through a scratch and read back a column at a time, X's row by one gather (36 instructions a
    step in the sm_90 build, no barrier): step 1 0.522 -> 0.549 ms (gated 0.593 -> 0.610), the
    forward 0.777 -> 0.801: the cross-warp extraction was not what holds the solve, or its loads
    cost as much; (g) a forward without gradients forming R in step 2 from its q and k tiles (step
    1 reads no q, writes no R): step 1 0.522 -> 0.503 ms but step 2 0.246 -> 0.327 (gated 0.248
    -> 0.493, spilling), the forward 0.777 -> 0.834 (gated 0.866 -> 1.074), as run 29 had found.
    What is left for 0.70 ms: step 2 runs at its own bytes (0.246 ms), and step 1 without any
    solve took 0.449 ms (session 6), so even a free solve leaves this plan at ~0.70: step 1's
    loads and stores (0.2 ms above their bytes, one chunk a program) must shrink too.
  bytes, backward: 1 (6.5X, X in fp32), 2' (6.5X: h is 2X), 3 (7.5X), 4 (12–15X), 5 (8X): ≈ 42X
    = 5.6 GB, 1.9 ms at 3 TB/s; FLOPs ≈ 3× the forward's. Floor of the backward (q, k, v, β, do
    read, dq, dk, dv, dβ written) = 7X: 0.31 ms. Storing nothing but the inputs costs the
    recomputation of steps 1 and 2 (13X of the 42X). SAVE_INTERMEDIATES keeps them instead: W and
    R are written by the forward anyway, so it adds only X's 1X (step 1) and h and V_new's 3X
    (step 2) of writes to the forward, and 5.5X of memory held until the backward. Measured (run
    54, benchmarks/results/h100-2026-11-23/run54-*): step 1 0.577 -> 0.642 ms storing X, step 2
    0.257 -> 0.416 ms storing h and V_new, the backward 2.624 -> 1.709 ms; the delta rule's fwd +
    bwd 3.443 -> 2.984 ms (gated 4.060 -> 3.485, DeltaProduct 3.896 -> 3.324), peak memory above
    the inputs 1.57 -> 2.13 GiB. Of the 2.98 ms, 0.23 ms was autograd filling the kept outputs'
    (unused) cotangents with zeros, since fixed: run 57 measured the same kernels at 2.726 ms
    (gated 3.206, DeltaProduct 3.061), and a fwd + bwd's peak above the inputs 1.44 GiB keeping
    against 1.57 recomputing (the zero-filled cotangents were the 0.69 GiB difference).
  first call: five kernels (two variants each of steps 1 and 2) compile once per (H, K, V, dtype, gate);
    T never recompiles. Compiled in series at their launches they took, on the H100 (Triton 3.6,
    run 20): step 1 1.6–3.9 s a variant, the others 0.2–1.6 s; fwd + bwd first calls 7.3 s (delta
    rule), 11.3 s (gated), 10.5 s (DeltaProduct). So the ops' first calls compile every variant they
    will need side by side, from a dry run on tiny inputs (fast/_compile.py; chunk_fwd below).
    Since run 28 the kernels run 3-stage pipelines and step 1 compiles 2.9-4.8 s on its own; the
    dry runs compile six variants once each (run 28 had step 1 twice, see _compile._spec). Run 30:
    fwd + bwd 4.81 s (delta rule), 6.12 s (gated), 5.60 s (DeltaProduct); forwards 3.82, 4.46,
    4.99 s. Issue 2's 5 s: met for the delta rule and every forward, NOT for the gated and
    DeltaProduct forward + backward. Compiled for sm_90 on a CPU (Triton 3.9), the new
    configurations cost more compile time than the old: steps 2, 2', 3, 4 0.76 / 0.61 / 0.83 /
    0.93 s against 0.51 / 0.37 / 0.52 / 0.56 s (step 1 unchanged, 2.1 s): ~1.2 s more CPU beside
    step 1's compile, the likely cause (one run each on the GPU; times vary up to 1.7×). The price
    of 0.3 ms a forward and 0.7 ms a forward + backward; one compiled step 2 for both directions
    (COMPUTE_O as a runtime flag, as STORE_X is) would take one compile off: not tried.
    Run 34: the dry run now also loads each compiled binary and builds its launcher (Triton does
    both lazily, at a kernel's first launch, one kernel after another): fwd + bwd 3.09 s (delta
    rule), 4.26 s (gated), 4.18 s (DeltaProduct), forwards 3.72, 4.28, 4.27 s, against 4.83,
    5.30, 5.32 s fwd + bwd in run 33 just before. Issue 2's 5 s: met for every op measured.
    Run 54 (SAVE_INTERMEDIATES: a training forward and its backward make five variants, step 1,
    step 2 storing o, h and V_new, steps 3-5; an inference forward two): fwd + bwd 1.94 s (delta
    rule), 2.92 s (gated), 2.44 s (DeltaProduct); forwards 2.51, 3.03, 3.67 s. Run 56 (steps 1 and
    5 in slices of 64 and 32 at 4 and 8 warps; the kept tiles, one slice of 128 and 32 at 4 warps,
    not measured for first calls): 1.45, 1.98, 1.98 s; forwards 2.06, 2.53, 2.58 s. Run 58 (the kept
    tiles, step 4 still at 3 stages; one run each): 2.88, 3.28, 3.91 s; forwards 4.06, 3.57, 4.87 s:
    under issue 2's 5 s, DeltaProduct's forward by 0.13 s only. Run 64 (the benchmark harness):
    delta rule 3.93 s, forwards 4.86 (delta rule) and **5.59 s (gated): over 5 s**. Every forward
    without gradients took longer than its op's fwd + bwd: it compiled at its launches, one kernel
    after the other. Since session 17 it dry-runs its two kernels side by side (chunk_fwd; the
    comment above _tiny). Compiled for sm_90 on a 2-core CPU (compile only): 2.4-3.5 s one after
    the other, 2.0-2.6 s side by side (delta rule and gated). Run 66, on the H100: forwards 3.13 s
    (delta rule), 4.02 s (gated), 3.77 s (DeltaProduct); fwd + bwd 2.86, 3.56, 4.08 s: all under 5 s.
  registers (ptxas, Triton 3.6, sm_90, bf16, K = V = 128, the module's tiles): step 1 (4 warps,
    one slice of 128) 255, no spill (gated too; it spilled 40-120 B before k was read again for W);
    step 5 (4 warps, slices of 32) 196, gated 236, no spill (the whole-K kernel: 254 at 8 warps);
    steps 2-4 198-255, no spills. Step 1 in slices of 32 or 64 keeps 252-255 (spilling 360 B
    under a cap of 168): its [BT, K] tiles are not what holds them. Triton 3.9's ptxas (what CI
    has; tests/test_deltanet_fast.py bounds its counts, h0 and dht given): step 1 none (32 B
    gated), step 5 none; with the gate step 2 24 B (8 storing h, V_new), step 3 40.

Legend: i_ program ids · p_ pointers · b_ on-chip blocks (b_S, b_A, b_X, b_w, b_u, b_v_new ...
names as in the zoo) · offs_ index vectors · mask_ masks · BT BK BV tile sizes · NT number of
chunks · h0/ht initial/final state · DT the input dtype inside a kernel.
"""

import os
from typing import Optional

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

import zoo.deltanet as zoo_deltanet
from fast._checks import check_device_and_dtype
from fast._compile import launch, precompile

CHUNK = 64  # BT: rows per chunk; 4 solve blocks of 16 (tl.dot's smallest tile side)
SOLVE_BLOCK = 16  # the diagonal blocks inverted by forward substitution
MAX_HEAD_DIM = 256  # whole K in one register tile in steps 2-4 (steps 1 and 5 walk column slices)
# What the backward reads besides the inputs: W, R, X (step 1), Γ (gated; else empty), the
# chunk-entry states h and V_new (step 2). SAVE_INTERMEDIATES (read at each call): True, a forward
# with gradients on keeps them (W, R, V_new in the input dtype, X fp32, h in the input dtype: 5.5
# inputs' worth of memory, 0.74 GB a layer at B·T = 32k, H = 16, K = V = 128) and the backward
# starts at step 3; False, the forward keeps only its inputs and the backward recomputes steps 1
# and 2 (the memory floor; the card's "backward").
SAVED = ("w", "Aqk", "X", "gam", "h", "v_new")
SAVE_INTERMEDIATES = True


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _tiles(K: int, V: int, dtype: torch.dtype) -> dict:
    """The tile rule: a function of the head dims and the dtype only (never of B or T). One launch
    configuration per kernel: BV (the value tile of the sequential kernels, the column slice of
    steps 1, 4 and 5), num_warps, num_stages. Chosen by measurement on the H100 at K = V = 128 in
    16-bit (the card's "Tiles"); other head dims and fp32 keep the rule ptxas counts chose before
    (BV 32, 2 stages, 8 warps from K = 64; step 4 and K = 256 apart, below): in fp32 the timed 3-stage pipelines of steps 2-4 ask
    for 330-360 KB of shared memory, over the H100's 227 KB (OutOfResources on the GPU, run 56)."""
    BK, BVF = _pow2(K), _pow2(V)
    cfg = lambda bv, warps, stages: dict(BV=min(BVF, bv), num_warps=warps, num_stages=stages)
    nw = 8 if BK >= 64 else 4  # ptxas (sm_90, bf16): at 4 warps and K = 128 step 4 and 5 spill up to 1.8 KB
    rule = cfg(32, nw, 2)
    if BK > 128:  # K = 256: the sequential steps' [BT, 256] chunk tiles, double-buffered, ask for 232-290
        # KB of shared memory at BV 32 (the H100 has 227 KB): 16-bit takes BV 16 (up to 228 KB, compiled
        # for sm_90), fp32 one stage (250 KB at BV 16). Steps 2' and 3 not at one stage in 16-bit: Triton
        # 3.6 builds step 3 so into an illegal memory access on the H100 (runs 58-60; fp32 at one stage
        # passed its GPU tests, run 63)
        rule = cfg(16, nw, 2) if dtype.itemsize == 2 else cfg(32, nw, 1)
    # steps 2 and 3 at 4 warps where K = 256 in 16-bit (the configuration run 60 ran), step 2 computing
    # o there at BV 32 and one stage, as the forward tests ran it on the H100
    seq = dict(rule, num_warps=4) if BK > 128 and dtype.itemsize == 2 else rule
    # step 4 walks V in tiles of BV: with the gate, Triton 3.6 builds that loop, pipelined over two or
    # more tiles, into a wrong and nondeterministic dw on the H100 (K = 64: BV 32 at 2 stages, 4 or 8
    # warps; K = 128: BV 32 or 64 at 3 stages; runs 58-62). Correct in every replay: one tile (BV = V)
    # at 2 stages, or one stage. So V ≤ 64 in 16-bit takes one tile, the rest one stage (fp32 at one
    # tile of 64 spills 1.2 KB, Triton 3.6's ptxas), but for the timed (64, 8, 2) at K = V = 128,
    # replayed correct at the benchmark's size (run 60)
    dqkw = cfg(64, nw, 2) if BVF <= 64 and dtype.itemsize == 2 else dict(rule, num_stages=1)
    state_o = dict(rule, num_warps=4) if BK <= 128 else cfg(32, 4, 1)
    timed = BK == 128 and BVF == 128 and dtype.itemsize == 2
    return dict(BK=BK, BKS=BK if timed else min(BK, 64),  # step 4's K slice (128: one slice, run 28)
                wy=dict(BV=min(BK, 128), num_warps=4, num_stages=1),  # step 1, forward and the backward's recomputation
                # the sequential steps 2 and 3: 2 V tiles a head (128 programs at B·H = 64, one an SM)
                # with a 3-deep pipeline, against 4 tiles and 2 stages: 2.3x (step 2), 1.9x (step 3)
                state_fwd=cfg(64, 4, 3) if timed else state_o,  # step 2 computing o
                state_rec=cfg(64, 4, 3) if timed else seq,  # step 2 in the backward (stores h, V_new)
                state_bwd=cfg(64, 4, 3) if timed else seq,  # step 3
                dqkw=cfg(64, 8, 2) if timed else dqkw,  # step 4 (3 stages: wrong dw on the H100, runs 58-60)
                wy_bwd=cfg(32, 4, 3) if timed else rule,  # step 5
                recurrent=cfg(32, 4, 1))


def _launch_options(c: dict) -> dict:
    """A kernel's entry of _tiles without its tile size: the launch options (num_warps, num_stages,
    and maxnreg where an entry sets one), what every launcher passes."""
    return {k: x for k, x in c.items() if k != "BV"}


def _precision(dtype: torch.dtype) -> str:
    """Dots on fp32 operands. fp32 inputs: tf32x3 (three tf32 products, about fp32 accuracy, still
    on tensor cores; "ieee" made ptxas unroll FMA loops with 13 KB of spills and 40 s compiles).
    16-bit inputs: operands are 16-bit, and tf32 only touches the WY backward's fp32-operand dots.
    The 16×16 solve always runs in exact fp32 ("ieee"). The interpreter computes every dot exactly."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


# ================================================================================================
# Kernels
# ================================================================================================
# Loads and stores are written inline, not through @triton.jit helpers: under the interpreter
# every helper call re-patches triton.language (~2.5 ms), which dominated the CPU test time.
@triton.jit
def _invert_unit_lower4(b_a0, b_a1, b_a2, b_a3, BS: tl.constexpr):
    """(I + a)⁻¹ for four strictly lower-triangular [BS, BS] blocks at once, column by column.

    Start from X = I; step m subtracts a_im · X_m from every row i (zero for i ≤ m), after which
    row m + 1 is final. Each step is one masked reduction of X (its row m) and a rank-1 update; the
    columns of a do not depend on X, so their extraction is off the loop's critical path. (Row by
    row, Y_i = −a_i − Σ_j a_ij Y_j, took two dependent reductions a step: as fast on the H100, and
    1.7× the error on a stress case of near-parallel keys with β = 1.9, run 33.)"""
    b_a = tl.reshape(tl.join(tl.join(b_a0, b_a1), tl.join(b_a2, b_a3)), (BS, BS, 4))  # [BS, BS, 4]
    offs = tl.arange(0, BS)
    b_x = tl.where(offs[:, None, None] == offs[None, :, None], 1., 0.) + tl.zeros((BS, BS, 4), tl.float32)  # I
    for m in range(0, BS - 1):
        b_col = tl.sum(tl.where(offs[None, :, None] == m, b_a, 0.), 1)  # a_{·m}  [BS, 4]
        b_row = tl.sum(tl.where(offs[:, None, None] == m, b_x, 0.), 0)  # X_m  [BS, 4]
        b_x -= b_col[:, None, :] * b_row[None, :, :]
    b_x01, b_x23 = tl.split(tl.reshape(b_x, (BS, BS, 2, 2)))
    b_x0, b_x1 = tl.split(b_x01)
    b_x2, b_x3 = tl.split(b_x23)
    return b_x0, b_x1, b_x2, b_x3


@triton.jit(do_not_specialize=["T", "STORE_X"])
def _chunk_wy_fwd_kernel(q, k, v, beta, g, w, u, X, gam, Aqk, scale, T, H: tl.constexpr,
                         K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                         USE_G: tl.constexpr, STORE_X, PREC: tl.constexpr, NH: tl.constexpr):
    """Step 1: X = (I + A)⁻¹, W = X diag(β e^Γ) K, U = X diag(β) V, and the output's mixing
    matrix R = sQKᵀ ⊙ D (diagonal included) for one chunk (zoo (4)). NH: micro-steps per row of q
    and g (DeltaProduct's direct path; 1 otherwise): see "Micro-steps" in the card.

    q, k and v are read in column slices of width BC: only [BT, BT] and [16, 16] matrices live
    through the kernel (R, the blocks of A and X), none of K's width. ptxas for sm_90 still gives
    it 252-255 registers at 4 warps (spilling 360 B under a cap of 168): what holds them is not the
    [BT, K] tiles."""
    # -------------------------------------------------------------- map program -> (chunk, head)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    BS: tl.constexpr = 16  # the chunk is 4 slabs of 16 rows: r = 0..3 in the names below
    DT = k.dtype.element_ty
    t0 = i_t * BT
    offs_s, offs_r, offs_c = tl.arange(0, BS), tl.arange(0, BT), tl.arange(0, BC)
    # pointers to this (batch, head)'s first row: the only 64-bit offsets; the tiles' are int32
    o_bh = i_b * T * H + i_h
    o_bq = i_b * (T // NH) * H + i_h  # q and g: one row per token (T // NH of them)
    q, k, w, v, u = q + o_bq * K, k + o_bh * K, w + o_bh * K, v + o_bh * V, u + o_bh * V
    X, Aqk, beta, g, gam = X + o_bh * BT, Aqk + o_bh * BT, beta + o_bh, g + o_bq, gam + o_bh
    o_sk = offs_s[:, None] * (H * K) + t0 * H * K  # slab 0's rows in k and w  [BS, 1]
    o_sv = offs_s[:, None] * (H * V) + t0 * H * V  # ... in v and u
    o_tq = (offs_r // NH)[:, None] * (H * K) + t0 // NH * H * K  # the chunk's rows in q (micro-step r reads token r // NH)
    o_tk = offs_r[:, None] * (H * K) + t0 * H * K  # ... in k  [BT, 1]
    first = (offs_s % NH) == 0  # g enters at a token's first micro-step (zoo/deltaproduct.py (3))
    p_g = g + (offs_s // NH) * H  # micro-step r of a slab reads token r // NH
    o_x = offs_s[:, None] * (H * BT) + offs_s[None, :]
    o_s = offs_s * H

    # -------------------------------------------------------------- load β and Γ
    b_b0 = tl.load(beta + o_s + t0 * H).to(tl.float32)  # [BS]
    b_b1 = tl.load(beta + o_s + (t0 + BS) * H).to(tl.float32)
    b_b2 = tl.load(beta + o_s + (t0 + 2 * BS) * H).to(tl.float32)
    b_b3 = tl.load(beta + o_s + (t0 + 3 * BS) * H).to(tl.float32)
    if USE_G:  # Γ = cumsum of g inside the chunk; padded tokens have g = 0
        b_g0 = tl.cumsum(tl.where(first, tl.load(p_g + t0 // NH * H).to(tl.float32), 0.), 0)
        b_g1 = tl.cumsum(tl.where(first, tl.load(p_g + (t0 + BS) // NH * H).to(tl.float32), 0.), 0)
        b_g2 = tl.cumsum(tl.where(first, tl.load(p_g + (t0 + 2 * BS) // NH * H).to(tl.float32), 0.), 0)
        b_g3 = tl.cumsum(tl.where(first, tl.load(p_g + (t0 + 3 * BS) // NH * H).to(tl.float32), 0.), 0)
        b_g1 += tl.sum(tl.where(offs_s == BS - 1, b_g0, 0.), 0)  # + Γ at the end of the slab above
        b_g2 += tl.sum(tl.where(offs_s == BS - 1, b_g1, 0.), 0)
        b_g3 += tl.sum(tl.where(offs_s == BS - 1, b_g2, 0.), 0)
        tl.store(gam + o_s + t0 * H, b_g0)
        tl.store(gam + o_s + (t0 + BS) * H, b_g1)
        tl.store(gam + o_s + (t0 + 2 * BS) * H, b_g2)
        tl.store(gam + o_s + (t0 + 3 * BS) * H, b_g3)

    # -------------------------------------------------------------- (4) Q Kᵀ and K Kᵀ, slice by slice
    # R = Q Kᵀ as one [BT, BT] product (ten [16, 16] blocks from the slabs took 0.04-0.07 ms longer
    # a call, run 33); of K Kᵀ the ten [16, 16] blocks on or below the diagonal, from the 4 slabs
    # (q and k are read twice, as a chunk tile and as slabs: the second read comes from L1/L2)
    b_R = tl.zeros([BT, BT], dtype=tl.float32)
    b_A00 = tl.zeros([BS, BS], dtype=tl.float32)  # diagonal blocks
    b_A11, b_A22, b_A33 = tl.zeros_like(b_A00), tl.zeros_like(b_A00), tl.zeros_like(b_A00)
    b_A10, b_A20, b_A21 = tl.zeros_like(b_A00), tl.zeros_like(b_A00), tl.zeros_like(b_A00)  # below it
    b_A30, b_A31, b_A32 = tl.zeros_like(b_A00), tl.zeros_like(b_A00), tl.zeros_like(b_A00)
    for i_c in range(tl.cdiv(K, BC)):
        offs_k = i_c * BC + offs_c
        mask_c = (offs_k < K)[None, :]  # head dims only: T is a multiple of BT
        b_qt = tl.load(q + o_tq + offs_k[None, :], mask=mask_c, other=0.)  # [BT, BC]
        b_kt = tl.load(k + o_tk + offs_k[None, :], mask=mask_c, other=0.)
        b_R = tl.dot(b_qt, tl.trans(b_kt), b_R, input_precision=PREC)  # [BT, BT]
        b_k0 = tl.load(k + o_sk + offs_k[None, :], mask=mask_c, other=0.)  # [BS, BC]
        b_k1 = tl.load(k + o_sk + BS * H * K + offs_k[None, :], mask=mask_c, other=0.)
        b_k2 = tl.load(k + o_sk + 2 * BS * H * K + offs_k[None, :], mask=mask_c, other=0.)
        b_k3 = tl.load(k + o_sk + 3 * BS * H * K + offs_k[None, :], mask=mask_c, other=0.)
        b_A00 = tl.dot(b_k0, tl.trans(b_k0), b_A00, input_precision=PREC)  # [BS, BS]
        b_A11 = tl.dot(b_k1, tl.trans(b_k1), b_A11, input_precision=PREC)
        b_A22 = tl.dot(b_k2, tl.trans(b_k2), b_A22, input_precision=PREC)
        b_A33 = tl.dot(b_k3, tl.trans(b_k3), b_A33, input_precision=PREC)
        b_A10 = tl.dot(b_k1, tl.trans(b_k0), b_A10, input_precision=PREC)
        b_A20 = tl.dot(b_k2, tl.trans(b_k0), b_A20, input_precision=PREC)
        b_A21 = tl.dot(b_k2, tl.trans(b_k1), b_A21, input_precision=PREC)
        b_A30 = tl.dot(b_k3, tl.trans(b_k0), b_A30, input_precision=PREC)
        b_A31 = tl.dot(b_k3, tl.trans(b_k1), b_A31, input_precision=PREC)
        b_A32 = tl.dot(b_k3, tl.trans(b_k2), b_A32, input_precision=PREC)
    # -------------------------------------------------------------- (4) R = sQKᵀ ⊙ D, diagonal included
    # (stored for steps 2 and 3, which would otherwise recompute it once per V-tile: measured with
    # ptxas for sm_90, computing it inside the sequential loop costs ~100 registers and spills; tried
    # again at step 2's current tiles on the H100, run 29: the delta rule's forward 0.880 -> 0.835 ms,
    # the gated 1.005 -> 1.044 and DeltaProduct 0.945 -> 0.980 (160 B of spill with the gate): dropped)
    mask_dt = offs_r[:, None] >= offs_r[None, :]
    if USE_G:
        # Γ again, over the whole chunk at once: g re-read (64 values, from L1) rather than the four
        # slab vectors above stitched into one
        b_gt = tl.cumsum(tl.where((offs_r % NH) == 0,
                                  tl.load(g + (offs_r // NH) * H + t0 // NH * H).to(tl.float32), 0.), 0)  # Γ  [BT]
        b_R *= tl.exp(tl.where(mask_dt, b_gt[:, None] - b_gt[None, :], float('-inf')))
    tl.store(Aqk + offs_r[:, None] * (H * BT) + offs_r[None, :] + t0 * H * BT,
             (tl.where(mask_dt, b_R, 0.) * scale).to(DT))
    # -------------------------------------------------------------- (4) A = diag(β) K Kᵀ ⊙ e^{Γ_i−Γ_j}, strictly lower
    b_A00, b_A10, b_A20, b_A30 = b_A00 * b_b0[:, None], b_A10 * b_b1[:, None], b_A20 * b_b2[:, None], b_A30 * b_b3[:, None]
    b_A11, b_A21, b_A31 = b_A11 * b_b1[:, None], b_A21 * b_b2[:, None], b_A31 * b_b3[:, None]
    b_A22, b_A32, b_A33 = b_A22 * b_b2[:, None], b_A32 * b_b3[:, None], b_A33 * b_b3[:, None]
    mask_s = offs_s[:, None] > offs_s[None, :]
    if USE_G:  # decays; in a diagonal block mask before exp (above the diagonal Γ_i − Γ_j > 0)
        b_A00 *= tl.exp(tl.where(mask_s, b_g0[:, None] - b_g0[None, :], float('-inf')))
        b_A11 *= tl.exp(tl.where(mask_s, b_g1[:, None] - b_g1[None, :], float('-inf')))
        b_A22 *= tl.exp(tl.where(mask_s, b_g2[:, None] - b_g2[None, :], float('-inf')))
        b_A33 *= tl.exp(tl.where(mask_s, b_g3[:, None] - b_g3[None, :], float('-inf')))
        b_A10 *= tl.exp(b_g1[:, None] - b_g0[None, :])
        b_A20 *= tl.exp(b_g2[:, None] - b_g0[None, :])
        b_A21 *= tl.exp(b_g2[:, None] - b_g1[None, :])
        b_A30 *= tl.exp(b_g3[:, None] - b_g0[None, :])
        b_A31 *= tl.exp(b_g3[:, None] - b_g1[None, :])
        b_A32 *= tl.exp(b_g3[:, None] - b_g2[None, :])
    b_A00, b_A11 = tl.where(mask_s, b_A00, 0.), tl.where(mask_s, b_A11, 0.)
    b_A22, b_A33 = tl.where(mask_s, b_A22, 0.), tl.where(mask_s, b_A33, 0.)

    # -------------------------------------------------------------- X = (I + A)⁻¹, blocked
    # Diagonal blocks by forward substitution; then block row r of (I + A) X = I gives
    # X_rj = −X_rr Σ_{j ≤ m < r} A_rm X_mj, one block diagonal further out at a time.
    b_X00, b_X11, b_X22, b_X33 = _invert_unit_lower4(b_A00, b_A11, b_A22, b_A33, BS)
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
    if STORE_X != 0:  # for the backward; the blocks above the diagonal are never read. A runtime
        # flag, not a constexpr: the forward and the backward's recomputation share one compiled
        # kernel, the slowest of the family to compile (1.6-4.2 s on the H100, runs 20-22)
        tl.store(X + o_x + t0 * H * BT, b_X00)
        tl.store(X + o_x + (t0 + BS) * H * BT, b_X10)
        tl.store(X + o_x + (t0 + BS) * H * BT + BS, b_X11)
        tl.store(X + o_x + (t0 + 2 * BS) * H * BT, b_X20)
        tl.store(X + o_x + (t0 + 2 * BS) * H * BT + BS, b_X21)
        tl.store(X + o_x + (t0 + 2 * BS) * H * BT + 2 * BS, b_X22)
        tl.store(X + o_x + (t0 + 3 * BS) * H * BT, b_X30)
        tl.store(X + o_x + (t0 + 3 * BS) * H * BT + BS, b_X31)
        tl.store(X + o_x + (t0 + 3 * BS) * H * BT + 2 * BS, b_X32)
        tl.store(X + o_x + (t0 + 3 * BS) * H * BT + 3 * BS, b_X33)
    # the X blocks as dot operands in the input dtype (16-bit tensor cores; a no-op for fp32)
    b_X00, b_X10, b_X11, b_X20, b_X21 = b_X00.to(DT), b_X10.to(DT), b_X11.to(DT), b_X20.to(DT), b_X21.to(DT)
    b_X22, b_X30, b_X31, b_X32, b_X33 = b_X22.to(DT), b_X30.to(DT), b_X31.to(DT), b_X32.to(DT), b_X33.to(DT)

    # -------------------------------------------------------------- (4) W = X diag(β e^Γ) K, slice by slice
    b_c0, b_c1, b_c2, b_c3 = b_b0, b_b1, b_b2, b_b3
    if USE_G:
        b_c0, b_c1, b_c2, b_c3 = b_b0 * tl.exp(b_g0), b_b1 * tl.exp(b_g1), b_b2 * tl.exp(b_g2), b_b3 * tl.exp(b_g3)
    for i_c in range(tl.cdiv(K, BC)):
        offs_k = i_c * BC + offs_c
        mask_c = (offs_k < K)[None, :]
        o_k = o_sk + offs_k[None, :]  # [BS, BC]
        b_y0 = (tl.load(k + o_k, mask=mask_c, other=0.).to(tl.float32) * b_c0[:, None]).to(DT)
        b_y1 = (tl.load(k + o_k + BS * H * K, mask=mask_c, other=0.).to(tl.float32) * b_c1[:, None]).to(DT)
        b_y2 = (tl.load(k + o_k + 2 * BS * H * K, mask=mask_c, other=0.).to(tl.float32) * b_c2[:, None]).to(DT)
        b_y3 = (tl.load(k + o_k + 3 * BS * H * K, mask=mask_c, other=0.).to(tl.float32) * b_c3[:, None]).to(DT)
        b_w = tl.dot(b_X00, b_y0, input_precision=PREC)  # [BS, BC]
        tl.store(w + o_k, b_w.to(DT), mask=mask_c)
        b_w = tl.dot(b_X10, b_y0, input_precision=PREC) + tl.dot(b_X11, b_y1, input_precision=PREC)
        tl.store(w + o_k + BS * H * K, b_w.to(DT), mask=mask_c)
        b_w = (tl.dot(b_X20, b_y0, input_precision=PREC) + tl.dot(b_X21, b_y1, input_precision=PREC)
               + tl.dot(b_X22, b_y2, input_precision=PREC))
        tl.store(w + o_k + 2 * BS * H * K, b_w.to(DT), mask=mask_c)
        b_w = (tl.dot(b_X30, b_y0, input_precision=PREC) + tl.dot(b_X31, b_y1, input_precision=PREC)
               + tl.dot(b_X32, b_y2, input_precision=PREC) + tl.dot(b_X33, b_y3, input_precision=PREC))
        tl.store(w + o_k + 3 * BS * H * K, b_w.to(DT), mask=mask_c)

    # -------------------------------------------------------------- (4) U = X diag(β) V, slice by slice
    for i_c in range(tl.cdiv(V, BC)):
        offs_v = i_c * BC + offs_c
        mask_c = (offs_v < V)[None, :]
        o_v = o_sv + offs_v[None, :]  # [BS, BC]
        b_y0 = (tl.load(v + o_v, mask=mask_c, other=0.).to(tl.float32) * b_b0[:, None]).to(DT)
        b_y1 = (tl.load(v + o_v + BS * H * V, mask=mask_c, other=0.).to(tl.float32) * b_b1[:, None]).to(DT)
        b_y2 = (tl.load(v + o_v + 2 * BS * H * V, mask=mask_c, other=0.).to(tl.float32) * b_b2[:, None]).to(DT)
        b_y3 = (tl.load(v + o_v + 3 * BS * H * V, mask=mask_c, other=0.).to(tl.float32) * b_b3[:, None]).to(DT)
        b_u = tl.dot(b_X00, b_y0, input_precision=PREC)  # [BS, BC]
        tl.store(u + o_v, b_u.to(DT), mask=mask_c)
        b_u = tl.dot(b_X10, b_y0, input_precision=PREC) + tl.dot(b_X11, b_y1, input_precision=PREC)
        tl.store(u + o_v + BS * H * V, b_u.to(DT), mask=mask_c)
        b_u = (tl.dot(b_X20, b_y0, input_precision=PREC) + tl.dot(b_X21, b_y1, input_precision=PREC)
               + tl.dot(b_X22, b_y2, input_precision=PREC))
        tl.store(u + o_v + 2 * BS * H * V, b_u.to(DT), mask=mask_c)
        b_u = (tl.dot(b_X30, b_y0, input_precision=PREC) + tl.dot(b_X31, b_y1, input_precision=PREC)
               + tl.dot(b_X32, b_y2, input_precision=PREC) + tl.dot(b_X33, b_y3, input_precision=PREC))
        tl.store(u + o_v + 3 * BS * H * V, b_u.to(DT), mask=mask_c)


@triton.jit(do_not_specialize=["T"])
def _chunk_state_fwd_kernel(q, k, w, u, gam, Aqk, h0, o, ht, h, v_new, scale, T, H: tl.constexpr,
                            K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr, USE_G: tl.constexpr, USE_H0: tl.constexpr,
                            COMPUTE_O: tl.constexpr, STORE_H: tl.constexpr, PREC: tl.constexpr,
                            NH: tl.constexpr):
    """Step 2: V_new = U − W S; o = e^Γ⊙sQS + R V_new (R = sQKᵀ⊙D from step 1);
    S ← e^{Γ_L}S + (e^{Γ_L−Γ}⊙K)ᵀV_new."""
    # -------------------------------------------------------------- map program -> (V tile, head)
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    DT = k.dtype.element_ty
    NT = tl.cdiv(T, BT)
    offs_r, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    o_bh = i_b * T * H + i_h  # this (batch, head)'s first row: the only 64-bit offset
    o_k = offs_r[:, None] * (H * K) + offs_k[None, :]  # chunk tile, int32  [BT, BK]
    o_v = offs_r[:, None] * (H * V) + offs_v[None, :]  # chunk tile, int32  [BT, BV]
    o_bq = i_b * (T // NH) * H + i_h  # q and o: one row per token (NH micro-steps each)
    q, k, w, u, o, v_new = q + o_bq * K, k + o_bh * K, w + o_bh * K, u + o_bh * V, o + o_bq * V, v_new + o_bh * V
    gam, Aqk = gam + o_bh, Aqk + o_bh * BT
    o_q = (offs_r // NH)[:, None] * (H * K) + offs_k[None, :]  # micro-step r reads token r // NH  [BT, BK]
    o_o = (offs_r // NH)[:, None] * (H * V) + offs_v[None, :]  # [BT, BV]
    o_a = offs_r[:, None] * (H * BT) + offs_r[None, :]  # the chunk's R  [BT, BT]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    mask_tk, mask_tv = mask_k[None, :], mask_v[None, :]  # head dims only: T is a multiple of BT
    mask_to = mask_tv & ((offs_r % NH) == NH - 1)[:, None]  # a token's output is its last micro-step's
    offs_kv = offs_k[:, None] * V + offs_v[None, :]
    # -------------------------------------------------------------- the state, fp32 registers
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh.to(tl.int64) * K * V + offs_kv, mask=mask_kv, other=0.)
    for i_t in range(NT):
        t0 = i_t * BT
        if STORE_H:  # the state entering chunk i_t, for the backward
            p_h = h + ((i_b * NT + i_t) * H + i_h) * K * V
            tl.store(p_h + offs_kv, b_S.to(p_h.dtype.element_ty), mask=mask_kv)
        # ---------------------------------------------------------- (4) V_new = U − W S
        b_w = tl.load(w + o_k + t0 * H * K, mask=mask_tk, other=0.)  # [BT, BK]
        b_u = tl.load(u + o_v + t0 * H * V, mask=mask_tv, other=0.).to(tl.float32)  # [BT, BV]
        b_v_new = b_u - tl.dot(b_w, b_S.to(DT), input_precision=PREC)  # [BT, BV]
        if STORE_H:
            tl.store(v_new + o_v + t0 * H * V, b_v_new.to(DT), mask=mask_tv)
        b_k = tl.load(k + o_k + t0 * H * K, mask=mask_tk, other=0.)  # [BT, BK]
        if USE_G:
            b_g = tl.load(gam + (t0 + offs_r) * H)  # Γ  [BT]
            b_g_last = tl.load(gam + (t0 + BT - 1) * H)  # Γ_L
        # ---------------------------------------------------------- (4) o = e^Γ⊙sQS + R V_new
        if COMPUTE_O:
            b_q = tl.load(q + o_q + t0 // NH * H * K, mask=mask_tk, other=0.)  # [BT, BK]
            b_o = tl.dot(b_q, b_S.to(DT), input_precision=PREC) * scale  # [BT, BV]
            if USE_G:
                b_o = b_o * tl.exp(b_g)[:, None]
            b_R = tl.load(Aqk + o_a + t0 * H * BT)  # sQKᵀ ⊙ D from step 1  [BT, BT]
            b_o += tl.dot(b_R, b_v_new.to(DT), input_precision=PREC)
            tl.store(o + o_o + t0 // NH * H * V, b_o.to(o.dtype.element_ty), mask=mask_to)
        # ---------------------------------------------------------- (4) S ← e^{Γ_L}S + (e^{Γ_L−Γ}⊙K)ᵀV_new
        if USE_G:
            b_v_new = b_v_new * tl.exp(b_g_last - b_g)[:, None]
            b_S = b_S * tl.exp(b_g_last)
        b_S += tl.dot(tl.trans(b_k), b_v_new.to(DT), input_precision=PREC)
    tl.store(ht + i_bh.to(tl.int64) * K * V + offs_kv, b_S, mask=mask_kv)


@triton.jit(do_not_specialize=["T"])
def _chunk_state_bwd_kernel(q, k, w, gam, Aqk, do, dht, dh, dv_new, dh0, scale, T, H: tl.constexpr,
                            K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                            PREC: tl.constexpr, NH: tl.constexpr):
    """Step 3, chunks in reverse: dV_new = RᵀdO + (e^{Γ_L−Γ}⊙K) dS (R = sQKᵀ⊙D from step 1);
    dS ← e^{Γ_L} dS + (e^Γ⊙sQ)ᵀ dO − Wᵀ dV_new. dS is the gradient of the state leaving the chunk."""
    # -------------------------------------------------------------- map program -> (V tile, head)
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    DT = k.dtype.element_ty
    NT = tl.cdiv(T, BT)
    offs_r, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    o_bh = i_b * T * H + i_h  # this (batch, head)'s first row: the only 64-bit offset
    o_k = offs_r[:, None] * (H * K) + offs_k[None, :]  # chunk tile, int32  [BT, BK]
    o_v = offs_r[:, None] * (H * V) + offs_v[None, :]  # chunk tile, int32  [BT, BV]
    o_bq = i_b * (T // NH) * H + i_h  # q and do: one row per token (NH micro-steps each)
    q, k, w, do, dv_new, gam = q + o_bq * K, k + o_bh * K, w + o_bh * K, do + o_bq * V, dv_new + o_bh * V, gam + o_bh
    Aqk = Aqk + o_bh * BT
    o_kT = offs_k[:, None] + offs_r[None, :] * (H * K)  # the transposed chunk tile  [BK, BT]
    o_qT = offs_k[:, None] + (offs_r // NH)[None, :] * (H * K)  # micro-step r reads token r // NH  [BK, BT]
    o_do = (offs_r // NH)[:, None] * (H * V) + offs_v[None, :]  # [BT, BV]
    last = ((offs_r % NH) == NH - 1)[:, None]  # only a token's last micro-step has an output (and a dO)
    mask_kt = mask_k[:, None]
    o_a = offs_r[:, None] * (H * BT) + offs_r[None, :]  # the chunk's R  [BT, BT]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    mask_tk, mask_tv = mask_k[None, :], mask_v[None, :]  # head dims only: T is a multiple of BT
    offs_kv = offs_k[:, None] * V + offs_v[None, :]
    b_dS = tl.zeros([BK, BV], dtype=tl.float32)  # fp32 accumulator
    if USE_DHT:
        b_dS += tl.load(dht + i_bh.to(tl.int64) * K * V + offs_kv, mask=mask_kv, other=0.)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        t0 = i_t * BT
        p_dh = dh + ((i_b * NT + i_t) * H + i_h) * K * V
        tl.store(p_dh + offs_kv, b_dS.to(p_dh.dtype.element_ty), mask=mask_kv)
        # ---------------------------------------------------------- load
        b_k = tl.load(k + o_k + t0 * H * K, mask=mask_tk, other=0.)  # [BT, BK]
        b_qT = tl.load(q + o_qT + t0 // NH * H * K, mask=mask_kt, other=0.)  # Qᵀ, loaded transposed  [BK, BT]
        b_wT = tl.load(w + o_kT + t0 * H * K, mask=mask_kt, other=0.)  # Wᵀ  [BK, BT]
        b_do = tl.where(last, tl.load(do + o_do + t0 // NH * H * V, mask=mask_tv, other=0.), 0.)  # [BT, BV]
        # ---------------------------------------------------------- dV_new
        b_R = tl.load(Aqk + o_a + t0 * H * BT)  # sQKᵀ ⊙ D from step 1  [BT, BT]
        b_dSk = tl.dot(b_k, b_dS.to(DT), input_precision=PREC)  # K dS  [BT, BV]
        b_dos = b_do.to(tl.float32) * scale  # (e^Γ⊙sQ)ᵀdO = Qᵀ(s e^Γ⊙dO): scale the small tile  [BT, BV]
        if USE_G:
            b_g = tl.load(gam + (t0 + offs_r) * H)
            b_g_last = tl.load(gam + (t0 + BT - 1) * H)
            b_dSk = b_dSk * tl.exp(b_g_last - b_g)[:, None]
            b_dos = b_dos * tl.exp(b_g)[:, None]
        b_dv = tl.dot(tl.trans(b_R), b_do, input_precision=PREC) + b_dSk  # [BT, BV]
        tl.store(dv_new + o_v + t0 * H * V, b_dv.to(dv_new.dtype.element_ty), mask=mask_tv)
        # ---------------------------------------------------------- dS of the state entering the chunk
        if USE_G:
            b_dS = b_dS * tl.exp(b_g_last)
        b_dS += tl.dot(b_qT, b_dos.to(DT), input_precision=PREC)
        b_dS -= tl.dot(b_wT, b_dv.to(DT), input_precision=PREC)
    tl.store(dh0 + i_bh.to(tl.int64) * K * V + offs_kv, b_dS, mask=mask_kv)


@triton.jit(do_not_specialize=["T"])
def _chunk_bwd_dqkw_kernel(q, k, gam, h, dh, v_new, do, dv_new, dq, dk, dw, dgam, scale, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BKS: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr,
                           PREC: tl.constexpr, NH: tl.constexpr):
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
    offs_k = i_k * BKS + tl.arange(0, BKS)
    mask_tk = (offs_k < K)[None, :]  # head dims only: T is a multiple of BT
    o_bh = i_b * T * H + i_h  # this (batch, head)'s first row: the only 64-bit offsets
    o_bq = i_b * (T // NH) * H + i_h  # q, dq and do: one row per token (NH micro-steps each)
    q, k, dq, dk, dw = q + o_bq * K, k + o_bh * K, dq + o_bq * K, dk + o_bh * K, dw + o_bh * K
    v_new, do, dv_new, gam = v_new + o_bh * V, do + o_bq * V, dv_new + o_bh * V, gam + o_bh
    h, dh = h + ((i_b * NT + i_t) * H + i_h) * K * V, dh + ((i_b * NT + i_t) * H + i_h) * K * V
    o_k = offs_t[:, None] * (H * K) + offs_k[None, :]  # int32  [BT, BKS]
    o_q = (offs_t // NH)[:, None] * (H * K) + offs_k[None, :]  # micro-step t reads token t // NH  [BT, BKS]
    last = ((offs_r % NH) == NH - 1)[:, None]  # only a token's last micro-step has an output (and a dO)
    # -------------------------------------------------------------- loop over V tiles (fp32 accumulators)
    b_dq = tl.zeros([BT, BKS], dtype=tl.float32)  # dO Sᵀ
    b_dkb = tl.zeros([BT, BKS], dtype=tl.float32)  # V_new dS_outᵀ
    b_dw = tl.zeros([BT, BKS], dtype=tl.float32)  # dV_new Sᵀ
    b_dP = tl.zeros([BT, BT], dtype=tl.float32)  # dO V_newᵀ
    b_dSS = tl.zeros([BKS], dtype=tl.float32)  # Σ_v S ⊙ dS_out, for the chunk decay e^{Γ_L}
    for i_v in range(tl.cdiv(V, BV)):
        offs_v = i_v * BV + tl.arange(0, BV)
        mask_v = offs_v < V
        mask_kv = (offs_k < K)[:, None] & mask_v[None, :]
        mask_tv = mask_v[None, :]
        o_kv = offs_k[:, None] * V + offs_v[None, :]
        o_v = offs_t[:, None] * (H * V) + offs_v[None, :]
        b_h = tl.load(h + o_kv, mask=mask_kv, other=0.)  # S  [BKS, BV]
        b_dh = tl.load(dh + o_kv, mask=mask_kv, other=0.)  # dS_out  [BKS, BV]
        b_vn = tl.load(v_new + o_v, mask=mask_tv, other=0.)  # [BT, BV]
        b_do = tl.where(last, tl.load(do + (offs_t // NH)[:, None] * (H * V) + offs_v[None, :], mask=mask_tv,
                                      other=0.), 0.)
        b_dvn = tl.load(dv_new + o_v, mask=mask_tv, other=0.)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dkb += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw += tl.dot(b_dvn, tl.trans(b_h), input_precision=PREC)
        b_dP += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        if USE_G:
            b_dSS += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 1)
    # -------------------------------------------------------------- intra-chunk terms
    b_q = tl.load(q + o_q, mask=mask_tk, other=0.)  # [BT, BKS]
    b_k = tl.load(k + o_k, mask=mask_tk, other=0.)
    mask_c = offs_r[:, None] >= offs_r[None, :]
    if USE_G:
        b_g = tl.load(gam + offs_t * H)
        t_last = t0 + BT - 1
        b_g_last = tl.load(gam + t_last * H)
        b_dR = b_dP * tl.exp(tl.where(mask_c, b_g[:, None] - b_g[None, :], float('-inf')))
    else:
        b_dR = b_dP
    b_dR = tl.where(mask_c, b_dR, 0.)  # dL/d(sQKᵀ)  [BT, BT]
    b_dq_inter = b_dq
    if USE_G:
        b_dq_inter = b_dq * tl.exp(b_g)[:, None]
    b_dq_out = (b_dq_inter + tl.dot(b_dR.to(DT), b_k, input_precision=PREC)) * scale
    tl.store(dq + o_q, b_dq_out.to(dq.dtype.element_ty), mask=mask_tk & last)
    b_dk_out = tl.dot(tl.trans(b_dR).to(DT), b_q, input_precision=PREC) * scale
    if USE_G:
        b_dk_out += b_dkb * tl.exp(b_g_last - b_g)[:, None]
    else:
        b_dk_out += b_dkb
    tl.store(dk + o_k, b_dk_out.to(dk.dtype.element_ty), mask=mask_tk)
    tl.store(dw + o_k, (-b_dw).to(dw.dtype.element_ty), mask=mask_tk)
    # -------------------------------------------------------------- this slice's share of dΓ
    if USE_G:
        b_Y = b_dR * tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale  # dR ⊙ R (this slice's share)
        b_kdk = tl.sum(b_k.to(tl.float32) * b_dkb, 1) * tl.exp(b_g_last - b_g)  # k̄·dk̄ per row  [BT]
        b_dg = scale * tl.exp(b_g) * tl.sum(b_q.to(tl.float32) * b_dq, 1) + tl.sum(b_Y, 1) - tl.sum(b_Y, 0) - b_kdk
        b_dg += tl.where(offs_t == t_last, tl.sum(b_kdk, 0) + tl.exp(b_g_last) * tl.sum(b_dSS, 0), 0.)
        p_dgam = dgam + i_k.to(tl.int64) * tl.num_programs(2) * T + o_bh  # [NK, B, T, H]
        tl.store(p_dgam + offs_t * H, b_dg)


@triton.jit(do_not_specialize=["T"])
def _chunk_wy_bwd_kernel(k, v, beta, gam, X, dw, dv_new, dk_in, dgam, dk, dv, dbeta, dg, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                         BC: tl.constexpr, NK: tl.constexpr, USE_G: tl.constexpr, PREC: tl.constexpr,
                         NH: tl.constexpr):
    """Step 5: back through W = X diag(β e^Γ) K, U = X diag(β) V and X = (I + A)⁻¹ (dA = −Xᵀ dX Xᵀ).

    Only [BT, BT] matrices stay live (X, dX then dA, and K Kᵀ); k, dW, v and dU are walked in
    column slices of width BC, k and dW twice (before dX is complete and after; the second read
    comes from L2), so no [BT, K] tile holds registers across the kernel: a whole-K version took
    255 registers at 8 warps, one block an SM (run 54)."""
    # -------------------------------------------------------------- map program -> (chunk, head)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    DT = k.dtype.element_ty
    t0 = i_t * BT
    offs_r = tl.arange(0, BT)
    offs_t = t0 + offs_r
    offs_c = tl.arange(0, BC)
    o_bh = i_b * T * H + i_h  # this (batch, head)'s first row: the only 64-bit offsets
    k, dw, dk_in, dk = k + o_bh * K, dw + o_bh * K, dk_in + o_bh * K, dk + o_bh * K
    v, dv_new, dv, X = v + o_bh * V, dv_new + o_bh * V, dv + o_bh * V, X + o_bh * BT
    o_tk, o_tv = offs_t[:, None] * (H * K), offs_t[:, None] * (H * V)  # rows, int32  [BT, 1]
    o_g = o_bh + offs_t * H  # [BT]
    # -------------------------------------------------------------- load X, β, Γ
    mask_low = offs_r[:, None] >= offs_r[None, :]
    b_X = tl.load(X + offs_t[:, None] * (H * BT) + offs_r[None, :], mask=mask_low, other=0.)  # [BT, BT]
    b_Xd = b_X.to(DT)  # X as a 16-bit dot operand where it meets [BT, BC] slices
    b_beta = tl.load(beta + o_g).to(tl.float32)  # [BT]
    b_bg = b_beta  # β e^Γ
    if USE_G:
        b_g = tl.load(gam + o_g)
        b_bg = b_beta * tl.exp(b_g)
    # -------------------------------------------------------------- W = X (β e^Γ ⊙ K): dX = dW (β e^Γ K)ᵀ + ...
    b_dX = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BC)):
        offs_k = i_k * BC + offs_c
        mask_tk = (offs_k < K)[None, :]  # head dims only: T is a multiple of BT
        b_kd = tl.load(k + o_tk + offs_k[None, :], mask=mask_tk, other=0.)  # input dtype  [BT, BC]
        b_dwd = tl.load(dw + o_tk + offs_k[None, :], mask=mask_tk, other=0.)
        b_dX += tl.dot(b_dwd, tl.trans(b_kd), input_precision=PREC)
    b_dX *= b_bg[None, :]
    # -------------------------------------------------------------- U = X (β ⊙ V): ... + dU (β V)ᵀ; dV, dβ
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BC)):
        offs_v = i_v * BC + offs_c
        mask_tv = (offs_v < V)[None, :]
        b_vd = tl.load(v + o_tv + offs_v[None, :], mask=mask_tv, other=0.)  # [BT, BC]
        b_dud = tl.load(dv_new + o_tv + offs_v[None, :], mask=mask_tv, other=0.)
        b_dX += tl.dot(b_dud, tl.trans(b_vd), input_precision=PREC) * b_beta[None, :]
        b_dC = tl.dot(tl.trans(b_Xd), b_dud, input_precision=PREC)  # Xᵀ dU  [BT, BC]
        tl.store(dv + o_tv + offs_v[None, :], (b_dC * b_beta[:, None]).to(dv.dtype.element_ty), mask=mask_tv)
        b_dbeta += tl.sum(b_vd.to(tl.float32) * b_dC, 1)
    # -------------------------------------------------------------- X = (I + A)⁻¹: dA = −Xᵀ dX Xᵀ
    mask_s = offs_r[:, None] > offs_r[None, :]
    b_dA = -tl.dot(tl.dot(tl.trans(b_X), b_dX, input_precision=PREC), tl.trans(b_X), input_precision=PREC)
    if USE_G:
        b_E = tl.exp(tl.where(mask_s, b_g[:, None] - b_g[None, :], float('-inf')))
    else:
        b_E = tl.where(mask_s, 1., 0.)
    # A = diag(β) (K Kᵀ ⊙ E): with dA ⊙ E =: dAE, d(K Kᵀ) = diag(β) dAE, so dk gets (dG + dGᵀ) K
    b_dAE = tl.where(mask_s, b_dA, 0.) * b_E  # [BT, BT]
    b_dGs = (b_dAE * b_beta[:, None] + tl.trans(b_dAE * b_beta[:, None])).to(DT)  # dG + dGᵀ
    # -------------------------------------------------------------- dk = dk_in + β e^Γ ⊙ Xᵀ dW + (dG + dGᵀ) K
    b_G = tl.zeros([BT, BT], dtype=tl.float32)  # K Kᵀ, summed over the slices
    b_kdB = tl.zeros([BT], dtype=tl.float32)  # k·(Xᵀ dW) per row
    for i_k in range(tl.cdiv(K, BC)):
        offs_k = i_k * BC + offs_c
        mask_tk = (offs_k < K)[None, :]
        o_k = o_tk + offs_k[None, :]  # [BT, BC]
        b_kd = tl.load(k + o_k, mask=mask_tk, other=0.)
        b_dwd = tl.load(dw + o_k, mask=mask_tk, other=0.)
        b_G += tl.dot(b_kd, tl.trans(b_kd), input_precision=PREC)
        b_dB = tl.dot(tl.trans(b_Xd), b_dwd, input_precision=PREC)  # Xᵀ dW  [BT, BC]
        b_kdB += tl.sum(b_kd.to(tl.float32) * b_dB, 1)
        b_dk = tl.load(dk_in + o_k, mask=mask_tk, other=0.).to(tl.float32) + b_dB * b_bg[:, None]
        b_dk += tl.dot(b_dGs, b_kd, input_precision=PREC)
        tl.store(dk + o_k, b_dk.to(dk.dtype.element_ty), mask=mask_tk)
    b_dAEG = b_dAE * b_G
    b_dbeta += tl.sum(b_dAEG, 1)  # through A
    if USE_G:
        b_dbeta += b_kdB * tl.exp(b_g)  # through W: dβ = e^Γ (k·dB)
    else:
        b_dbeta += b_kdB
    tl.store(dbeta + o_g, b_dbeta.to(dbeta.dtype.element_ty))
    if USE_G:
        b_Z = b_dAEG * b_beta[:, None]  # dA ⊙ A
        b_dgam = b_bg * b_kdB + tl.sum(b_Z, 1) - tl.sum(b_Z, 0)  # dΓ through W (β e^Γ (k·dB)) and A
        for i_s in range(NK):  # the K slices' shares from step 4
            b_dgam += tl.load(dgam + i_s * tl.num_programs(1) * T + o_g)
        # g_t enters Γ_i for every i ≥ t in its chunk: dg = reverse cumsum of dΓ
        b_dg = tl.sum(b_dgam, 0) - tl.cumsum(b_dgam, 0) + b_dgam
        # g is per token, entering at its first micro-step: that row's dg is the token's
        p_dg = dg + i_b * (T // NH) * H + i_h + (offs_t // NH) * H
        tl.store(p_dg, b_dg.to(dg.dtype.element_ty), mask=(offs_r % NH) == 0)


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
def _chunk_wy_fwd(q, k, v, beta, g, scale, store_X: bool, nh: int):
    B, T, H, K = k.shape
    V = v.shape[-1]
    t = _tiles(K, V, k.dtype)
    NT = triton.cdiv(T, CHUNK)
    w, u = torch.empty_like(k), torch.empty_like(v)
    Aqk = k.new_empty(B, T, H, CHUNK)  # R = sQKᵀ ⊙ D per chunk, input dtype (a dot operand)
    X = k.new_empty(B, T, H, CHUNK, dtype=torch.float32) if store_X else k.new_empty(1, dtype=torch.float32)
    gam = k.new_empty(B, T, H, dtype=torch.float32) if g is not None else w
    launch(_chunk_wy_fwd_kernel, (NT, B * H),
        q, k, v, beta, g if g is not None else beta, w, u, X, gam, Aqk, scale, T, H, K, V, CHUNK,
        t["wy"]["BV"], USE_G=g is not None, STORE_X=int(store_X), PREC=_precision(k.dtype), NH=nh,
        **_launch_options(t["wy"]))
    return w, u, Aqk, (X if store_X else None), (gam if g is not None else None)


def _chunk_state_fwd(q, k, w, u, gam, Aqk, h0, scale, compute_o: bool, store_h: bool, nh: int = 1):
    """Step 2: o (compute_o) and/or the chunk-entry states h and V_new (store_h), and the final
    state. `nh`: micro-steps per row of q and o (only the output reads q). Returns (o, h, v_new, ht),
    None for what it did not compute."""
    B, T, H, K = k.shape
    V = u.shape[-1]
    t = _tiles(K, V, k.dtype)
    c = t["state_fwd" if compute_o else "state_rec"]
    NT = triton.cdiv(T, CHUNK)
    ht = k.new_empty(B, H, K, V, dtype=torch.float32)
    o = torch.empty(B, T // nh, H, V, dtype=q.dtype, device=q.device) if compute_o else None
    h, v_new = (k.new_empty(B, NT, H, K, V), torch.empty_like(u)) if store_h else (None, None)
    launch(_chunk_state_fwd_kernel, (triton.cdiv(V, c["BV"]), B * H),
        q, k, w, u, gam if gam is not None else u, Aqk, h0 if h0 is not None else ht,
        o if compute_o else u, ht, h if store_h else u, v_new if store_h else u,
        scale, T, H, K, V, CHUNK, t["BK"], c["BV"], USE_G=gam is not None, USE_H0=h0 is not None,
        COMPUTE_O=compute_o, STORE_H=store_h, PREC=_precision(k.dtype), NH=nh,
        **_launch_options(c))
    return o, h, v_new, ht


def _pad_to_chunk(steps, tokens, nh):
    """Zero-pad the time axis (dim 1) up to a multiple of CHUNK micro-steps, so the kernels need no
    row masks (a masked tile load costs the sequential kernels their registers: measured with ptxas
    for sm_90, 168 registers unmasked vs 255 plus spills masked). `steps` have a row per micro-step
    (k, v, β), `tokens` a row per token of nh micro-steps (q, g, dO; nh divides CHUNK). Zero k, β
    and g make a padded token the identity transition, and its zero q reads nothing: the real
    tokens are exact. Only a T that is not a multiple of 64 pays for this copy."""
    pad = -steps[0].shape[1] % CHUNK
    if pad == 0:
        return steps, tokens
    fill = lambda x, p: None if x is None else torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, p))  # noqa: E731
    return tuple(fill(x, pad) for x in steps), tuple(fill(x, pad // nh) for x in tokens)


def _direct(nh: int) -> bool:
    """Can the kernels read q, g and dO per token (NH = nh)? Step 1 works on slabs of 16 micro-steps,
    which must hold whole tokens. Otherwise the host interleaves them into micro-steps (NH = 1)."""
    return SOLVE_BLOCK % nh == 0


def _chunk_fwd(q, k, v, g, beta, h0, scale, nh: int = 1, keep: bool = False):
    """o [B, T, H, V], the final state, and (keep) what the backward reads, the tuple SAVED names
    (else None). q, g: a row per token; k, v, β: nh rows per token."""
    if not _direct(nh):
        g = None if g is None else _interleave(g, nh, last=False)
        o, ht, saved = _chunk_fwd(_interleave(q, nh, last=True), k, v, g, beta, h0, scale, keep=keep)
        return o[:, nh - 1::nh].contiguous(), ht, saved
    T = q.shape[1]
    (k, v, beta), (q, g) = _pad_to_chunk((k, v, beta), (q, g), nh)
    w, u, Aqk, X, gam = _chunk_wy_fwd(q, k, v, beta, g, scale, store_X=keep, nh=nh)
    o, h, v_new, ht = _chunk_state_fwd(q, k, w, u, gam, Aqk, h0, scale, compute_o=True, store_h=keep, nh=nh)
    saved = (w, Aqk, X, gam, h, v_new) if keep else None
    return (o if o.shape[1] == T else o[:, :T].contiguous()), ht, saved


def _chunk_bwd(q, k, v, g, beta, h0, do, dht, scale, nh: int = 1, saved=None):
    """dq, dk, dv, dg, dβ, dh0 (empty without h0). q, g, dO: a row per token; k, v, β: nh rows.
    `saved`: the forward's intermediates (_chunk_fwd with keep), or None to recompute them."""
    if not _direct(nh):
        gi = None if g is None else _interleave(g, nh, last=False)
        dq, dk, dv, dg, dbeta, dh0 = _chunk_bwd(_interleave(q, nh, last=True), k, v, gi, beta, h0,
                                                _interleave(do, nh, last=True), dht, scale, saved=saved)
        return dq[:, nh - 1::nh].contiguous(), dk, dv, (dg if g is None else dg[:, ::nh].contiguous()), dbeta, dh0
    T0 = q.shape[1]
    (k, v, beta), (q, g, do) = _pad_to_chunk((k, v, beta), (q, g, do.to(q.dtype).contiguous()), nh)
    B, T, H, K = k.shape
    V = v.shape[-1]
    t = _tiles(K, V, k.dtype)
    NT = triton.cdiv(T, CHUNK)
    NK = triton.cdiv(K, t["BKS"])
    prec = _precision(k.dtype)
    if saved is None:  # recompute step 1 (with X) and step 2 (storing the chunk-entry states and V_new),
        # in the forward's configuration, so both use one compiled step 1: see _chunk_wy_fwd_kernel's STORE_X
        w, u, Aqk, X, gam = _chunk_wy_fwd(q, k, v, beta, g, scale, store_X=True, nh=nh)
        h, v_new = _chunk_state_fwd(q, k, w, u, gam, Aqk, h0, scale, compute_o=False, store_h=True)[1:3]
    else:
        w, Aqk, X, gam, h, v_new = saved
    # step 3
    dh, dv_new = torch.empty_like(h), torch.empty_like(v)
    dh0 = k.new_empty(B, H, K, V, dtype=torch.float32)
    c = t["state_bwd"]
    launch(_chunk_state_bwd_kernel, (triton.cdiv(V, c["BV"]), B * H),
        q, k, w, gam if gam is not None else dh0, Aqk, do, dht if dht is not None else dh0, dh, dv_new,
        dh0, scale, T, H, K, V, CHUNK, t["BK"], c["BV"], USE_G=gam is not None,
        USE_DHT=dht is not None, PREC=prec, NH=nh, **_launch_options(c))
    # step 4
    dq = torch.empty_like(q)
    dk_part, dw = torch.empty_like(k), torch.empty_like(k)  # input dtype: half the bytes of fp32
    dgam = k.new_empty(NK, B, T, H, dtype=torch.float32) if g is not None else dw
    launch(_chunk_bwd_dqkw_kernel, (NK, NT, B * H),
        q, k, gam if gam is not None else dw, h, dh, v_new, do, dv_new, dq, dk_part, dw, dgam,
        scale, T, H, K, V, CHUNK, t["BKS"], t["dqkw"]["BV"], USE_G=g is not None, PREC=prec, NH=nh,
        **_launch_options(t["dqkw"]))
    # step 5
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    dg = torch.empty_like(g) if g is not None else dbeta.new_empty(0)
    launch(_chunk_wy_bwd_kernel, (NT, B * H),
        k, v, beta, gam if gam is not None else dw, X, dw, dv_new, dk_part, dgam, dk, dv, dbeta,
        dg if g is not None else dbeta, T, H, K, V, CHUNK, t["wy_bwd"]["BV"], NK,
        USE_G=g is not None, PREC=prec, NH=nh, **_launch_options(t["wy_bwd"]))
    if T != T0 * nh:  # drop the padding
        dk, dv, dbeta = (x[:, :T0 * nh].contiguous() for x in (dk, dv, dbeta))
        dq = dq[:, :T0].contiguous()
        dg = dg[:, :T0].contiguous() if g is not None else dg
    return dq, dk, dv, dg, dbeta, (dh0 if h0 is not None else dh0.new_empty(0))


def _recurrent_fwd(q, k, v, g, beta, h0, scale, num_householder):
    B, T, H, K = q.shape
    V = v.shape[-1]
    t = _tiles(K, V, k.dtype)
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    ht = q.new_empty(B, H, K, V, dtype=torch.float32)
    launch(_recurrent_fwd_kernel, (triton.cdiv(V, t["recurrent"]["BV"]), B * H),
        q, k, v, g if g is not None else beta, beta, h0 if h0 is not None else ht, o, ht, scale, T,
        H, K, V, num_householder, t["BK"], t["recurrent"]["BV"], USE_G=g is not None, USE_H0=h0 is not None,
        **_launch_options(t["recurrent"]))
    return o, ht


# ================================================================================================
# Custom ops: what torch.compile(fullgraph=True) sees (the kernels stay opaque to it). One set
# serves the family: g = None is DeltaNet; num_householder > 1 is DeltaProduct's decode loop.
# ================================================================================================
def _none_if_empty(x):
    return None if x is None or x.numel() == 0 else x


def _contiguous(*xs):
    return tuple(None if x is None else x.contiguous() for x in xs)


# First calls (fast/_compile.py): in eager mode with gradients on, the forward's two kernels (step 2
# storing h and V_new beside o under SAVE_INTERMEDIATES) and the backward's three (3, 4, 5; and
# steps 1 and 2 again when it recomputes) compile side by side from a dry run on tiny inputs of the
# same dtypes, H, K, V and flags. Measured on the H100
# (runs 20-22: fresh process, empty caches, B = 4, T = 8192, H = 16, K = V = 128): fwd + bwd in
# series 7.3 s (delta rule), 11.3 s (gated), 10.5 s (DeltaProduct); side by side 4.7-5.0, 5.1-5.5,
# 5.9-6.0 s, the WY kernel's compile (1.6-4.2 s, longer beside others) the longest. A forward
# without gradients (two kernels) compiled in series at its launches until session 17: side by
# side its WY compile had slowed more than the other one saved, once (2.7 -> 3.9 s, delta rule,
# run 21). But in runs 58 and 64 every such forward took longer than the same op's forward +
# backward with its five kernels side by side (delta rule 4.06 / 4.86 s against 2.88 / 3.93, gated
# 3.57 / 5.59 against 3.28, DeltaProduct 4.87 against 3.91; each loads its binaries and builds its
# launchers at the launch, not on the pool), and the gated one went over 5 s: so it dry-runs too.
# The latest are in the card's "first call".
def _tiny(x, nh=1):
    """A zero tensor like x [B, T, H(, ·)] with batch 1 and one chunk of micro-steps (CHUNK // nh
    rows for a tensor with a row per token)."""
    return None if x is None else x.new_zeros(1, CHUNK // nh, *x.shape[2:])


def _variants(q, v, g, h0, nh):
    """What decides the chunk kernels' compiled variants (never B or T)."""
    return (q.dtype, q.device, q.shape[2], q.shape[3], v.shape[3], g is None, h0 is None, nh)


def _tiny_inputs(q, k, v, g, beta, nh):
    return _tiny(q, nh), _tiny(k), _tiny(v), _tiny(g, nh), _tiny(beta)


def _tiny_state(h0):
    """A zero state like h0 [B, H, K, V] with batch 1 (None stays None)."""
    return None if h0 is None else h0.new_zeros(1, *h0.shape[1:])


def _fwd_plan(q, k, v, g, beta, h0, scale, nh=1, keep=None):
    """{key: dry run} of the forward, keeping SAVED or not (None: as training calls it, keeping them
    when SAVE_INTERMEDIATES); the tiny inputs are made only if the dry run runs."""
    keep = SAVE_INTERMEDIATES if keep is None else keep
    return {("fwd", keep) + _variants(q, v, g, h0, nh): lambda: _chunk_fwd(
        *_tiny_inputs(q, k, v, g, beta, nh), _tiny_state(h0), scale, nh, keep=keep)}


def _bwd_plan(q, k, v, g, beta, h0, scale, has_dht: bool, saved: bool, nh=1):
    """{key: dry run} of the backward (dht given or not; the forward's intermediates saved or to be
    recomputed); tiny inputs as in _fwd_plan (the tiny forward that makes the saved ones launches
    only kernels the forward's plan has, and a dry run compiles each variant once)."""
    def dry():
        x = _tiny_inputs(q, k, v, g, beta, nh)
        kept = _chunk_fwd(*x, _tiny_state(h0), scale, nh, keep=True)[2] if saved else None
        dht = q.new_zeros(1, q.shape[2], q.shape[3], v.shape[3], dtype=torch.float32) if has_dht else None
        _chunk_bwd(*x, _tiny_state(h0), _tiny(v, nh), dht, scale, nh, saved=kept)
    return {("bwd", has_dht, saved) + _variants(q, v, g, h0, nh): dry}


def chunk_fwd(q, k, v, g, beta, h0, scale: float, output_final_state: bool, num_householder: int = 1):
    """The family's chunk op as the public functions call it: q and g a row per token, k, v, β
    num_householder rows per token. With gradients on, the forward keeps its intermediates for the
    backward (SAVE_INTERMEDIATES). In eager mode the first call compiles the forward's kernels side
    by side, and with gradients on the backward's beside them (see above)."""
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, beta, h0))
    keep = grad and SAVE_INTERMEDIATES
    if not torch.compiler.is_compiling():  # compiled, the ops' own first calls compile theirs
        plans = _fwd_plan(q, k, v, g, beta, h0, scale, num_householder, keep)
        if grad:
            plans.update(_bwd_plan(q, k, v, g, beta, h0, scale, output_final_state, keep, num_householder))
        precompile(plans)
    return torch.ops.zoo.gated_delta_rule_chunk_fwd(q, k, v, g, beta, h0, scale, output_final_state,
                                                    num_householder, keep)[:2]


_FWD_OUT = tuple[(torch.Tensor,) * (2 + len(SAVED))]  # o, the final state, SAVED


@torch.library.custom_op("zoo::gated_delta_rule_chunk_fwd", mutates_args=())
def _chunk_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                  beta: torch.Tensor, h0: Optional[torch.Tensor], scale: float,
                  output_final_state: bool, num_householder: int, keep: bool) -> _FWD_OUT:
    """(o, final state (empty unless output_final_state), *SAVED (keep; else six empty tensors))."""
    q, k, v, g, beta, h0 = _contiguous(q, k, v, g, beta, h0)
    o, ht, saved = _chunk_fwd(q, k, v, g, beta, h0, scale, num_householder, keep)  # compiled in series (above)
    saved = [x if x is not None else q.new_empty(0) for x in saved] if keep else [q.new_empty(0) for _ in SAVED]
    return (o, ht if output_final_state else q.new_empty(0), *saved)


@torch.library.custom_op("zoo::gated_delta_rule_recurrent_fwd", mutates_args=())
def _recurrent_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                      beta: torch.Tensor, h0: Optional[torch.Tensor], scale: float,
                      output_final_state: bool, num_householder: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v, g, beta, h0 = _contiguous(q, k, v, g, beta, h0)
    o, ht = _recurrent_fwd(q, k, v, g, beta, h0, scale, num_householder)
    return o, (ht if output_final_state else q.new_empty(0))


def _fwd_fake(q, k, v, g, beta, h0, scale, output_final_state, num_householder=1):
    B, T, H, K = q.shape
    V = v.shape[-1]
    ht = q.new_empty(B, H, K, V, dtype=torch.float32) if output_final_state else q.new_empty(0)
    return q.new_empty(B, T, H, V), ht


@_chunk_fwd_op.register_fake
def _(q, k, v, g, beta, h0, scale, output_final_state, num_householder, keep):
    out = list(_fwd_fake(q, k, v, g, beta, h0, scale, output_final_state))
    if not keep:
        return (*out, *(q.new_empty(0) for _ in SAVED))
    B, S, H, K = k.shape  # S micro-steps, padded to whole chunks
    S += -S % CHUNK
    V = v.shape[-1]
    gam = k.new_empty(B, S, H, dtype=torch.float32) if g is not None else q.new_empty(0)
    return (*out, k.new_empty(B, S, H, K), k.new_empty(B, S, H, CHUNK), k.new_empty(B, S, H, CHUNK, dtype=torch.float32),
            gam, k.new_empty(B, S // CHUNK, H, K, V), k.new_empty(B, S, H, V))


_recurrent_fwd_op.register_fake(_fwd_fake)


@torch.library.custom_op("zoo::gated_delta_rule_chunk_bwd", mutates_args=())
def _chunk_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                  beta: torch.Tensor, h0: Optional[torch.Tensor], do: torch.Tensor,
                  dht: Optional[torch.Tensor], scale: float, num_householder: int,
                  saved: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor, torch.Tensor]:
    """`saved`: the forward's SAVED intermediates, or [] to recompute them."""
    q, k, v, g, beta, h0, do, dht = _contiguous(q, k, v, g, beta, h0, do, dht)
    kept = tuple(_none_if_empty(x) for x in saved) if saved else None
    precompile(_bwd_plan(q, k, v, g, beta, h0, scale, dht is not None, kept is not None, num_householder))
    return _chunk_bwd(q, k, v, g, beta, h0, do, dht, scale, num_householder, saved=kept)


@_chunk_bwd_op.register_fake
def _(q, k, v, g, beta, h0, do, dht, scale, num_householder, saved):
    dg = q.new_empty(0) if g is None else torch.empty_like(g)
    dh0 = q.new_empty(0) if h0 is None else torch.empty_like(h0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dg, torch.empty_like(beta), dh0


def _interleave(x, n: int, last: bool):
    """[B, T, H, ·] → [B, T·n, H, ·] with x at micro-step n−1 of each token (last) or 0, zeros elsewhere."""
    B, T = x.shape[:2]
    z = x.new_zeros(B, T, n - 1, *x.shape[2:])
    parts = (z, x[:, :, None]) if last else (x[:, :, None], z)
    return torch.cat(parts, dim=2).reshape(B, T * n, *x.shape[2:])


def _setup_context(ctx, inputs, output):
    q, k, v, g, beta, h0, scale, _, num_householder = inputs[:9]
    kept = list(output[2:]) if len(inputs) > 9 and inputs[9] else []  # the chunk op's SAVED, when it kept them
    ctx.save_for_backward(q, k, v, g, beta, h0, *kept)
    ctx.scale, ctx.num_householder = scale, num_householder
    # an output the loss does not reach comes to the backward as None, not as zeros: SAVED gets no
    # cotangent, and filling six of them with zeros took 0.23 ms of a 3 ms forward + backward (run 54)
    ctx.set_materialize_grads(False)


def _backward(ctx, do, dht, *_saved_cotangents):
    """Both ops' gradient is the chunk backward (the recurrent op's included: the same function),
    from the chunk op's saved intermediates when it kept them."""
    q, k, v, g, beta, h0, *kept = ctx.saved_tensors
    if do is None:  # only the final state reaches the loss
        do = q.new_zeros(*q.shape[:3], v.shape[-1])
    dq, dk, dv, dg, dbeta, dh0 = torch.ops.zoo.gated_delta_rule_chunk_bwd(
        q, k, v, g, beta, h0, do, _none_if_empty(dht), ctx.scale, ctx.num_householder, kept)
    grads = (dq, dk, dv, None if g is None else dg, dbeta, None if h0 is None else dh0)
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))  # scale, flags: no gradient


torch.library.register_autograd("zoo::gated_delta_rule_chunk_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("zoo::gated_delta_rule_recurrent_fwd", _backward, setup_context=_setup_context)


# ================================================================================================
# Public ops: the zoo's names and signatures
# ================================================================================================
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as @triton.jit does


def check_fast(q, k, v, initial_state, where: str):
    """What the kernels add to the zoo's checks: a device they can run on, fp16/bf16/fp32 inputs,
    head dims up to MAX_HEAD_DIM. Returns q, k, v in one dtype and the state in fp32."""
    check_device_and_dtype(q, where, INTERPRET, what="q")
    K, V = q.shape[-1], v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"head dims K = {K}, V = {V}: the kernels take K, V <= {MAX_HEAD_DIM}")
    k, v = k.to(q.dtype), v.to(q.dtype)  # one operand dtype for tl.dot
    h0 = None if initial_state is None else initial_state.float()  # the state lives in fp32
    return k, v, h0


def start_decay_check(g, check):
    """Starts `check(g)` (raise if the log decay g > 0) without draining the GPU's queue. On a GPU
    the verdict (g > 0).any() is copied to pinned host memory behind an event, and the kernels are
    queued before finish_decay_check waits for that event: the wait ends when the reduction over g
    is done, while the GPU goes on with the kernels, and the next launches are not held back by a
    round trip through the host (`bool(t)` on a GPU tensor waits for everything queued before it,
    then launches into an idle GPU: 0.10-0.14 ms of a 0.9 ms forward on the H100, run 35).
    Elsewhere (the interpreter) the check runs at once. Under torch.compile it is skipped, as the
    zoo's is. Returns what finish_decay_check needs, or None."""
    if g is None or torch.compiler.is_compiling():
        return None
    if g.device.type != "cuda":
        check(g)
        return None
    verdict = torch.empty((), dtype=torch.bool, pin_memory=True)
    verdict.copy_((g > 0).any(), non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(g.device))  # g's device, which need not be the current one
    return verdict, done, g, check


def finish_decay_check(pending) -> None:
    """Waits for start_decay_check's verdict; on g > 0 runs the check itself, which raises."""
    if pending is None:
        return
    verdict, done, g, check = pending
    done.synchronize()
    if bool(verdict):
        check(g)


def _scale(q, scale):
    return float(q.shape[-1] ** -0.5 if scale is None else scale)


def delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
                     scale: float | None = None, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, chunk_size: int = 64):
    """zoo.deltanet.delta_rule_chunk in Triton, forward and backward (q, k, v, beta, initial
    state). The kernels always use chunks of 64; chunk_size is checked and otherwise only changes
    rounding in the zoo. Returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V] fp32 or None)."""
    zoo_deltanet._check_inputs(q, k, v, beta, initial_state, chunk_size)
    k, v, h0 = check_fast(q, k, v, initial_state, "fast.deltanet.delta_rule_chunk")
    o, ht = chunk_fwd(q, k, v, None, beta, h0, _scale(q, scale), output_final_state)
    return o, (ht if output_final_state else None)


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
                         scale: float | None = None, initial_state: torch.Tensor | None = None,
                         output_final_state: bool = False):
    """zoo.deltanet.delta_rule_recurrent in Triton: a token loop with the state in registers, for
    decoding. Its gradient runs the chunk backward kernels (same function)."""
    zoo_deltanet._check_inputs(q, k, v, beta, initial_state)
    k, v, h0 = check_fast(q, k, v, initial_state, "fast.deltanet.delta_rule_recurrent")
    o, ht = torch.ops.zoo.gated_delta_rule_recurrent_fwd(q, k, v, None, beta, h0, _scale(q, scale),
                                                         output_final_state, 1)
    return o, (ht if output_final_state else None)


# ================================================================================================
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ================================================================================================
class DeltaNet(zoo_deltanet.DeltaNet):
    """zoo.deltanet.DeltaNet running the Triton chunk and recurrent ops (form="parallel" keeps
    the zoo's parallel form: the oracle has no kernel)."""

    chunk_op = staticmethod(delta_rule_chunk)
    recurrent_op = staticmethod(delta_rule_recurrent)


__all__ = ["delta_rule_chunk", "delta_rule_recurrent", "DeltaNet"]


# ================================================================================================
# Benchmark beside the kernels (GPU): `python -m fast.deltanet [B T H D]`. Times each stage of the
# plan above at the headline size, the ops end to end (delta rule, gated, DeltaProduct n_h = 2 on
# the same number of micro-steps), and fla's chunk ops where fla imports. The project-wide
# comparison is `python -m benchmarks`; this is the per-stage view for tuning the kernels.
# ================================================================================================
def _benchmark(B=4, T=8192, H=16, D=128, dtype=torch.bfloat16):
    import time
    from triton.testing import do_bench
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev, generator=gen)
    q = rnd(B, T, H, D).to(dtype)
    k = torch.nn.functional.normalize(rnd(B, T, H, D), dim=-1).to(dtype)
    v = rnd(B, T, H, D).to(dtype)
    beta = torch.rand(B, T, H, device=dev, generator=gen).to(dtype)
    g = -torch.rand(B, T, H, device=dev, generator=gen) * 0.1
    do, scale = torch.randn_like(v), D ** -0.5
    rows = []

    def bench(name, fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        ms = do_bench(fn, warmup=5, rep=50)
        rows.append((name, ms, first))
        print(f"{name:48s} {ms:8.3f} ms   (first call {first:6.2f} s)", flush=True)

    for gate in (None, g):
        tag = "gated" if gate is not None else "delta"
        w, u, Aqk, X, gam = _chunk_wy_fwd(q, k, v, beta, gate, scale, store_X=True, nh=1)
        bench(f"{tag}: 1 wy fwd (W, U, R)", lambda: _chunk_wy_fwd(q, k, v, beta, gate, scale, store_X=False, nh=1))
        bench(f"{tag}: 1 wy fwd storing X", lambda: _chunk_wy_fwd(q, k, v, beta, gate, scale, store_X=True, nh=1))
        bench(f"{tag}: 2 state fwd + output", lambda: _chunk_state_fwd(q, k, w, u, gam, Aqk, None, scale, True, False))
        bench(f"{tag}: 2 state fwd + output storing h, V_new",
              lambda: _chunk_state_fwd(q, k, w, u, gam, Aqk, None, scale, True, True))
        bench(f"{tag}: 2' state fwd storing h, V_new",
              lambda: _chunk_state_fwd(q, k, w, u, gam, Aqk, None, scale, False, True))
        bench(f"{tag}: forward", lambda: _chunk_fwd(q, k, v, gate, beta, None, scale))
        bench(f"{tag}: forward keeping SAVED", lambda: _chunk_fwd(q, k, v, gate, beta, None, scale, keep=True))
        saved = _chunk_fwd(q, k, v, gate, beta, None, scale, keep=True)[2]
        bench(f"{tag}: backward from SAVED (3, 4, 5)",
              lambda: _chunk_bwd(q, k, v, gate, beta, None, do, None, scale, saved=saved))
        bench(f"{tag}: backward recomputing (1, 2', 3, 4, 5)",
              lambda: _chunk_bwd(q, k, v, gate, beta, None, do, None, scale))
        bench(f"{tag}: recurrent fwd (T = 256)", lambda: _recurrent_fwd(
            q[:, :256], k[:, :256], v[:, :256], None if gate is None else gate[:, :256], beta[:, :256], None, scale, 1))

    # the public ops, forward and forward + backward, beside fla
    def fwd_bwd(op, *args, **kw):
        xs = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        o = op(*xs, **kw)[0]
        o.backward(do[:, :o.shape[1]])

    import fast.gated_deltanet as fg
    import fast.deltaproduct as fp
    T2 = T // 2  # DeltaProduct with n_h = 2 over the same T micro-steps
    ops = {
        "delta_rule_chunk": (delta_rule_chunk, (q, k, v, beta), {}),
        "gated_delta_rule_chunk": (fg.gated_delta_rule_chunk, (q, k, v, g, beta), {}),
        "gated_delta_product_chunk n_h=2": (fp.gated_delta_product_chunk, (q[:, :T2], k, v, g[:, :T2], beta),
                                            dict(num_householder=2)),
    }
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        ops["fla chunk_delta_rule"] = (chunk_delta_rule, (q, k, v, beta), dict(scale=scale))
        ops["fla chunk_gated_delta_rule"] = (chunk_gated_delta_rule, (q, k, v, g, beta), dict(scale=scale))
    except ImportError:
        print("fla not importable: no fla rows")
    for name, (op, args, kw) in ops.items():
        try:
            bench(f"{name} fwd", lambda: op(*args, **kw))
            bench(f"{name} fwd+bwd", lambda: fwd_bwd(op, *args, **kw))
        except Exception as e:  # e.g. fla refusing its gated kernels on this Triton
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:200]}")
    return rows


if __name__ == "__main__":
    import sys
    _benchmark(*(int(a) for a in sys.argv[1:5]))
