"""Triton mirror of zoo/hrc_la.py; the math, shapes and equation numbers (1)-(5) are there.

Kernel plan
-----------
The complex feature exp(iΩu)/√M is kept as its real pair [cos Ωu, sin Ωu]/√M (Re(φ̂_q·conj φ̂_k)
= cos_q·cos_k + sin_q·sin_k), so the complex state S = S_c − i·S_s is two real [M, V] blocks.
The feature map is fused: a program loads q and k ([BT, K], what the layer produced), computes the
phases θ = u Ωᵀ on chip (a "tf32x3" dot, fp32-accurate: a tf32 phase error of 1e-3·|θ| would
already move cos θ), and never writes a feature to memory.

Causal forward, parallel over chunks (the default: CHUNK_PARALLEL = True)
-------------------------------------------------------------------------
Two launches over chunks of BT = PARALLEL_BT = 64 tokens (NT = ⌈T/BT⌉; the chunk is fixed, not
keyed on T or chunk_size: the same function, only the summation order moves). Between them, one
record per (batch·head, chunk), hs [B, H, NT, R], R = 2M·V + 2M + 1: S_c, S_s, z_c, z_s, n of the
state BEFORE the chunk, at the scale c_last(n−1) of the previous chunk's last token (c0 first).
  walk, grid (⌈M/BM⌉, B·H), _hrc_la_chunk_h_kernel (fla's chunk_fwd_h): each program holds its
    frequency slice S_c, S_s [BM, V], z_c, z_s [BM] (and the mass n in tile 0) in fp32 registers
    and walks the chunks in order: store the state into chunk n's record (and, tile 0, its scale
    c⁻ into cs [B, H, NT]), then (4) a chunk at a time
        S ← e^{c_last(n−1) − c_last(n)} S + Σ_j e^{a_j − c_last(n)} conj φ̂(k_j) v_jᵀ  ([cos; sin] rows),
    the keys' features and the stabiliser (2) on chip: a_j = ‖u_j‖²/2 from the loaded keys,
    c_last(n) = max(c_last(n−1), a_j of the chunk); the last state goes straight to ht, zt, nt.
    Records are written once and read once (round 1 had phase 1 write increments and phase 2 read
    and rewrite them in place: 4 record passes, phase 2 a dependent load/store chain at ~0.75 TB/s).
    Split walk: when B·H·⌈M/BM⌉ programs leave SMs idle (B = 1, H = 16, T = 65536: 64 programs of
    1024 chunks each, a latency-bound chain), _launch_walk cuts the chunks into NS segments: pass 1
    (LOCAL) walks every segment but the last from an empty state, keeping only its end state L_s
    at its own scale ℓ_s; pass 2 starts segment s from the initial state with L_0..L_{s−1} folded
    in (S ← e^{c−c'} S + e^{ℓ_r−c'} L_r, c' = max(c, ℓ_r): exact, the same function) and walks it,
    writing records. NS = ⌊WALK_SLOTS_PER_SM · SMs / programs⌋, a run-time number (no rebuild).
  phase 3, grid (NT, B·H), _hrc_la_chunk_out_kernel: the stabiliser of its chunk from its keys and
    the record's c⁻ (c_t = max(c⁻, a_1..a_t), a prefix max on chip; a and c written for the
    backward), then (5) for the chunk's queries, all M frequencies walked BM at a time (queries' and
    keys' features on chip):
        A = Σ_m (cos_q cos_kᵀ + sin_q sin_kᵀ) ⊙ Γ,  num_t = (A v)_t + e^{c⁻−c_t} Re(φ̂_tᵀS⁻),
    den and the mass n_t likewise, and (3) o_t = num_t / max(den_t, eps·n_t) in v's dtype: o, den,
    mass written once, no atomics, num never. The mass is computed and stored before the frequency
    loop, so only its floor stays live through it (after the loop it spilled 320 bytes a thread).
  Nothing else runs: no torch pass for the stabiliser or the division (they took 0.35-0.4 ms).
The products are transposed (frequencies down the rows, θᵀ = Ω uᵀ) so the chunk's q and k, fixed
through the frequency loop, are the right-hand operands and stay in shared memory; bf16/fp16
inputs, exact in tf32, split only Ω (phases_t: two tf32 products, the accuracy of tf32x3). With x
on the left and tf32x3, phase 3 took 255 registers and spilled 200-400 bytes a thread at any BM.
Switches (module globals, read at each call; benchmarks/results/h100-2026-11-23/run21-hrc_sweep2.py flips each):
  HALF_RECORDS (on since run 51): records in bf16 for bf16/fp16 inputs (the walk still adds in
    fp32, each stored state is rounded once, 2⁻⁹ relative); measured ±0.1 ms either way in runs
    21-23, 0.15 ms faster (the walk) in run 51 once the walk was memory-bound. FAST_TRIG (on): θ
    reduced to [−π, π] by a two-constant Cody-Waite split of 2π, then the SFU's sin.approx /
    cos.approx (abs error ~1e-6; _random_features.cos_sin), in the walk, phase 3 and the parallel
    backward (the serial kernels keep libdevice's accurate ones: untimed). FEATURE_DOTS_16 (on):
    bf16/fp16 inputs feed phase 3's A, A v and read-out dots in the input dtype (features, A and
    the records' S rounded to it: 2x tf32's tensor-core rate, half the operand registers;
    accumulation stays fp32; the phase products keep their split-Ω tf32; fp32 inputs unchanged);
    its error against the fp64 zoo is printed by the sweep. WALK_TILE (64, 4 warps, 2 stages; run
    49), OUT_TILE (32, 4 warps, 2 stages; runs 21-23, 47, 51): measured fastest, spills and all
    (tests/test_hrc_la.py bounds them).
sm_90 registers (ptxas, Triton 3.9, K = V = 64, M = 256, bf16, BT = 64; tests/test_hrc_la.py's AOT_SCRIPT compiles the defaults):
  walk (session 13's, the stabiliser on chip, the split walk's fold): BM 64 at 4 warps, 2 stages
    254 + 8 B of spill with bf16 records, 16 B with fp32 ones (Triton 3.6's ptxas, what the H100
    runs: 255 + 8 B); BM 32 255 + 32 B (3.6); BM 16 177-198, none. Before session 13 (a and c loaded): BM 32 at 4 warps, 1 stage:
    191, no stack; 2 stages 255 + 72-96 B (Triton 3.6: 255, none); BM 64 at 8 warps 255;
    libdevice sin/cos: 220 + its 32 B of stack.
  phase 3: BM 16 at 8 warps, 2 stages: 230 with both levers (228 with bf16 records), 252 with
    FAST_TRIG alone, 238 + 32 B (libdevice's Payne-Hanek array) with neither; 1 stage 224; BM 32:
    232-236. Still 1 block of 8 warps an SM: the aim of 2 (<= 128 registers at 8 warps, or <= 255
    at 4) is NOT met: at 4 warps 255 + 200-256 B of spill (BM 32, the default: 320 B; session 13
    stores the mass before the frequency loop: 255 + 104 B, 120 B by Triton 3.6's ptxas against 368
    before; 96 B with bf16 records). BT = 128 spills 904 B in phase 3 and 96 B in the walk (the sweep times it anyway).
Cost at the issue's size (B·T = 32768, H = 16, D = 64, M = 256, BT = 64, NT = 128 a sequence):
  bytes: records 8192 × R × 4 B = 1.09 GB (fp32; HALF_RECORDS, the default: 0.55 GB), written
    (walk) and read (phase 3): 2.18 GB (1.09); q, k, v
    67 MB each (k, v read by the walk's 8 frequency tiles of one head, adjacent programs: ~1 GB
    from L2, 134 MB from DRAM), o 67 MB (bf16), a, c, den, mass 2 MB each (written): ~0.4 GB.
    2.6 GB in all with fp32 records: 0.87 ms at 3.0 TB/s (HALF_RECORDS: 1.5 GB, 0.5 ms).
  FLOPs a token and head: phases 2 products × 2·K·M = 66 K (keys, walk) + 131 K (queries and
    keys, phase 3), tf32; dS 2·2M·V = 66 K (tf32); A 2·BT·2M = 66 K; A v 2·BT·V = 8 K; the
    read-out 2·2M·V = 66 K (these three bf16 under FEATURE_DOTS_16): ~400 KFLOP, 210 GFLOP in all:
    0.58 ms at half the bf16 ceiling; and 3·2·M = 1536 sin/cos a token and head (0.8 G: on the
    SFU with FAST_TRIG, ~0.2 ms of MUFU at 16 a clock an SM, spread over both kernels).
  floor: 0.5 ms with HALF_RECORDS (0.87 with fp32 records; memory bound, the tf32 phase products
    close behind).
  Measured: round 1 (H100, run 14, benchmarks/results/h100-2026-11-23/run14-hrc-sweep.log, three
    launches): the op 9.1 ms; phase 3 4.15 ms, phase 2 2.95 ms, phase 1 1.26 ms. This plan (runs
    21-23, benchmarks/results/h100-2026-11-23/run2[123]-*): at the round-2 defaults (walk 32/4/1,
    phase 3 16/8/2) 4.77 ms (walk 1.40, phase 3 2.96); FAST_TRIG off 6.33, FEATURE_DOTS_16 off 5.05
    (error vs the fp64 zoo 1.9e-3 against 2.9e-3 on: the bf16 output's own rounding dominates),
    HALF_RECORDS ±0.1 ms (left off), BT = 128 4.4-8.8 (phase 3 spills); phase 3 at 4 warps 1.71,
    at BM 32 1.43; the walk with 2 stages 0.97. Defaults now: the op 2.79 ms (walk 0.97, phase 3
    1.44; the rest: the stabiliser's a and c, o = num/den), 3.1x the 0.89 ms floor; by
    benchmarks.hrc_seed 3.22 ms = 2.75x the linear attention on 512 features (1.17 ms) and, at
    B = 1, T = 65536, 7.3-9.2 ms = 2.1-2.6x faster than SDPA.
  Session 13 (runs 47-50, benchmarks/results/h100-2026-11-23/run4[7-9]-*, run50-*; each against
    1dedd13's code in the same run): the division in phase 3 (the mass before the loop) 2.80 ->
    2.44 ms (phase 3 1.42 -> 1.28); the stabiliser on chip too, and the walk at BM 64 (0.79 ms; at
    32 it slowed to 1.27 once it computed a itself): 2.07 ms (walk 0.79, phase 3 1.25), 2.4x the
    floor. At B = 1, T = 65536 the walk has 64 programs: unsplit 4.20 ms, split in 4 (the rule)
    2.68, the op 5.23 against 6.40. benchmarks.hrc_seed (run 50; it syncs every call, so the op's
    ~0.2 ms of host work shows): **2.25 ms = 2.03x** the linear attention on 512 features (1.11
    ms), and at B = 1, T = 65536 **5.48 ms = 3.46x** faster than SDPA (18.94). Issue 5's targets
    (<= 1.5x and >= 5x) are still NOT met. Runs 51-52: HALF_RECORDS on (bf16 records, fed to phase
    3's read-out as stored): the walk 0.65 ms, the op 1.92 ms (1.88 with phase 3 at 3 stages:
    left at 2), 3.8x the 0.5 ms floor; benchmarks.hrc_seed **2.155 ms = 1.75x** the linear
    attention on 512 features (1.234 ms in that run; 1.105 in run 50, where 2.155 would be 1.95x),
    **3.45x** SDPA at T = 65536 (5.55 against 19.13 ms). ncu of phase 3 (run 51): 8 warps an SM
    (two 4-warp blocks, 255 registers), 1.31 instructions a cycle, a warp issuing every 6.1
    cycles, the tensor pipe 23% busy, 2.2 M spill requests; the walk 1.12 IPC, DRAM 46%. Both
    wait on latency with too few warps. Tried and not kept (run 53): phase 3 with 32 queries a
    program against the chunk's 64 keys (half the A and read-out accumulators; ptxas still took
    255 registers, 16 B of spill against 152): 2.12 ms against 1.27, the keys' features computed
    twice a chunk for no more warps an SM. Run 54 (benchmarks/results/h100-2026-11-23/run54-*):
    phase 3 under a register cap (Triton's maxnreg) for more blocks an SM, ptxas spilling the rest:
    168 at (32, 4, 2) (three blocks, 600 B of spill) 1.54 ms against 1.27; (16, 4, 2) 1.78; 128 at
    8 warps (two blocks of 8) 2.10-2.50; 128 at 4 warps 3.59: the spills cost more than the warps
    gain. Not kept. Fewer live registers in phase 3 itself: one try, compiled only (session 14,
    no device time left): each frequency tile's A ⊙ Γ multiplied into v at once and the read-out
    added into the same accumulator (num, den; no [64, 64] A held across the loop) takes Triton
    3.6's ptxas 245 registers and no spill at BM 16 (255 + 128 B at 32): still two blocks an SM,
    untimed. Next levers: the rest of phase 3's live set (features, phases); the split walk's pass
    1 (~1 ms of the 2.4 at T = 65536).

Small head dims (runs 40-43, H100 and H200, Triton 3.6): a ptxas miscompile, worked round.
At K = V = M = 32 (causal, bf16) the output came out 0.58 relative RMS error off the zoo (the
interpreter, same inputs: 3.4e-3), at times with an illegal address. memcheck: phase 3's second
K-step of an HGMMA.64x32x16 (a 64×32 tensor-core product, B from shared memory: the S⁻ read-out or
A·v, N = V = 32) reads shared memory at 0x4400, past the kernel's 12,288 bytes. The PTX is right
(descriptor = zext(bfe(addr, 4, 14)) | flags, + 0x40 a K-step); the SASS of Triton 3.6's ptxas
(CUDA 12.8.93) builds the second K-step's descriptor from the raw shared-window base instead
(in the default build, from a uniform register nothing writes): a ptxas miscompile. Run 43 (16
shapes, head dims 16-64, M 16-128, HRC-LA and FAVOR+, bf16 outputs and gradients against the fp64
zoo): the default tiles failed at 7 of them, with head dims 16 and 32 only (outputs 0.4-0.55 off,
a backward 0.76 off, illegal addresses; FAVOR+ NaN at head dim 16, M 128); the same PTX through
CUDA 12.9.86's ptxas passed all 16, and so did the default ptxas with every chunk-parallel kernel
at 2 warps (no wgmma: a warpgroup is 4 warps). So head dims < 64 run those kernels at 2 warps,
BM <= 32 (_random_features.SMALL_HEAD_TILE). The price (run 46, head dim 32, B 4, T 8192, H 16,
against the module tiles built by CUDA 12.9's ptxas): forward 1.0-1.19x, forward + backward
1.19-1.72x (M 32-128).
tests/test_hrc_la.py and tests/test_performer.py probe the shapes on the GPU, each in a child
process.

Causal backward, parallel over chunks (the default: PARALLEL_BWD = True, with CHUNK_PARALLEL)
-------------------------------------------------------------------------------------------
The serial backward below (two sweeps over T a frequency tile, atomics for dq, dk, dv, da) made
fwd+bwd ~62 ms at the issue's size, the backward ~20x the forward. This one is fla's chunk_bwd_dh
plus a per-chunk gradient pass, three launches over the forward's chunks (BT = PARALLEL_BT):
  walk again, grid (⌈M/BM⌉, B·H), _hrc_la_chunk_h_kernel at WALK_TILE: the records hs (S⁻ of each
    chunk at c⁻ = c_last(n−1)); nothing but the inputs is saved by the forward.
  reverse walk, grid (⌈M/BM⌉, B·H), _hrc_la_chunk_dh_kernel at DWALK_TILE: each program holds its
    frequency slice of the state's cotangent dS_c, dS_s [BM, V], dz_c, dz_s [BM] (fp32 registers),
    starting from dht, dzt (the final state is at c_T = c_last(NT−1)), and walks the chunks from the
    last: store dS⁺ (the cotangent of the state AFTER chunk n, what its keys see) into dhs[n], then
        dS⁻ = e^{c⁻ − c_last(n)} dS⁺ + Σ_t e^{c⁻ − c_t} φ̂(q_t) dnum_tᵀ   (dz⁻ with dden_t),
    the transpose of (4)'s decay and of (5)'s read-out; after chunk 0 it is dh0, dz0 (at c0).
    dhs has hs's layout, fp32 (its last element unused).
  gradients, grid (NT, B·H, 2), _hrc_la_chunk_grad_kernel at BWD_TILE, all M frequencies walked BM
    at a time (features transposed, as phase 3), dA = (dnum vᵀ + dden 1ᵀ) ⊙ Γ on both sides:
      side 0 (queries, reads hs[n]):  dφ̂(q_t) = (dA φ̂_k)_t + e^{c⁻−c_t} (S⁻ dnum_t + z⁻ dden_t);
      side 1 (keys, values, dhs[n]):  dφ̂_k(k_j) = (dAᵀ φ̂(q))_j + e^{c_j−c_last} (dS⁺ v_j + dz⁺),
        dv_j = Σ_t (A ⊙ Γ)_tj dnum_t + e^{c_j−c_last} φ̂_k(k_j)ᵀ dS⁺,  da_j = Σ_m dφ̂_k·φ̂_k;
    then dθ = (cos·dsin − sin·dcos)/√M (keys: times e^{a_j − c_j}) and dx = s_u·dθ Ω (tf32x3),
    written once: no atomics for dq, dk, dv, da. dΩ += s_u·dθᵀ x only when Ω needs a gradient
    (the op's need_domega, from ctx.needs_input_grad: a fixed Ω buffer skips it), added by
    tl.atomic_add into [H, M, K] fp32 (1 MB, L2-resident; B·NT programs add into each head's rows).
    Two sides rather than one program: one program held dq, dk, dv and A (four [64, 64] fp32
    accumulators) and spilled 304 B a thread at BM 16, 8 warps (1312 at 4 warps); the sides hold
    half each, at the price of computing the tile's q and k features twice.
  Non-causal, or CHUNK_PARALLEL / PARALLEL_BWD off: the serial backward kernel below.
sm_90 registers (ptxas, Triton 3.9, K = V = 64, M = 256, bf16, BT = 64; tests/test_hrc_la.py's
AOT_BWD_SCRIPT bounds the defaults):
  reverse walk: BM 32 at 4 warps, 2 stages (DWALK_TILE): 193, no stack; 1 stage 195; BM 16 194;
    BM 64 at 8 warps 255 + 32 B.
  gradients (two sides; the larger side sets the count): BM 32 at 8 warps, 1 stage (BWD_TILE):
    255 + 80 B of spill (208 with dΩ); BM 16 at 8 warps 255 + 16 B, the same with dΩ; BM 16 at 4
    warps 255 + 400 B (712 with dΩ), 2 stages 344; BM 32 at 4 warps 672; BM 64 at 8 warps 2488.
    One block of 8 warps an SM (16384 programs at the issue's size). The keys' side sets the count
    (the queries' alone: 174 registers at 8 warps, 238 at 4, no spill). Tried and not kept: A and
    the intra-chunk dv on the queries' side (a second dv buffer added on the host): 253, no spill,
    at 8 warps, still 344 B at 4; plain tf32 for dθ Ω: no fewer spills; DV_PER_TILE (dv's intra
    term per tile, no A): 14.16 ms at (16, 4, 1), an illegal address at (16, 8, 1) on Triton 3.6, removed.
Cost at the issue's size (as the forward's: NT = 128 a sequence, 8192 records of R = 33281 fp32):
  bytes: hs written (walk) and read (side 0), dhs written (reverse walk) and read (side 1): 4 ×
    1.09 GB = 4.4 GB; dnum 134 MB (read by the reverse walk and both sides), dq, dk, dv 134 MB each
    written (fp32, then cast), q, k, v 67 MB each (read 2-3 times, partly from L2): ~1 GB. ~5.4 GB:
    1.8 ms at 3.0 TB/s. dΩ (learnable only): 2 × 8192 × M·K = 268 M fp32 atomics into L2.
  FLOPs a token and head (tf32 dense; the phases' split-Ω products counted as 2): walk again 66 K
    (phases) + 66 K (dS); reverse walk 66 K + 66 K; side 0: phases 131 K, dA φ̂_k 66 K, S⁻ dnumᵀ
    66 K, dθ Ω 98 K (tf32x3); side 1: phases 131 K, A 66 K, dAᵀ φ̂(q) 66 K, dS⁺ vᵀ 66 K, dv 66 K,
    dθ Ω 98 K, intra dv and both dA 24 K: ~1.1 MFLOP, 0.6 TFLOP in all: 1.2 ms at the
    tf32 dense peak (~495 TFLOP/s), 2.4 ms at half of it; dΩ adds 2 × 98 K (0.1 TFLOP). sin/cos:
    3072 a token and head (1.6 G, ~0.45 ms of MUFU).
  floor: ~2.4 ms for the backward (tf32-bound at half the peak; memory 1.8 ms), so ~3.3 ms fwd+bwd
    with the forward's 0.89 ms.
  Measured (H100, Triton 3.6, runs 29-30, benchmarks/results/h100-2026-11-23/run29-hrc_bwd_sweep.py
    and run30-hrc_bwd_sweep2.py): fwd+bwd with fixed Ω at BWD_TILE (16, 8, 1) 15.53 ms (gradient
    kernel 8.97, reverse walk 1.23, walk 1.90 twice, phase 3 1.42), learnable Ω 18.16; the serial
    backward 61.3. BWD_TILE (32, 8, 1), the default: 13.93-13.98 ms (gradient kernel 7.41, the
    fastest despite its 80 B of spill), learnable Ω 16.81; (32, 4, 1) 13.75, (16, 4, 1) 14.48,
    (16, 8, 2) 16.57, (32, 8, 2) 14.87, (64, 8, 1) 24.58; DWALK_TILE (16, 4, 2) 14.12. HALF_RECORDS
    and DWALK_TILE (64, 8, 2) untimed (the sweep's time ran out). Gradients vs the fp64 zoo
    (T = 1024, learnable Ω): rel RMS dq 2.4e-3, dk 2.9e-3, dv 2.2e-3, dΩ 1.8e-3 (run 30), as the
    serial backward's. The gradient kernel is ~3x the card's floor: the lever left. Session 13
    (the walk at BM 64, the stabiliser on chip; run 50, benchmarks.hrc_seed): fwd+bwd 13.59 ms;
    with bf16 records (run 52) 13.26 ms.
  First call (fwd+bwd, fresh process, empty caches): 7.0 s with the four kernels compiled at their
    launches (run 30), 6.0 s side by side from a dry run (_first_call_plan, run 31), 4.66 s (run
    34), 2.94 s (run 50; the forward alone 2.72 s), 3.49 s (run 52, another host; forward 3.43 s):
    under issue 2's 5 s.
  Gradients in 16-bit near the floor (runs 62-63; benchmarks/results/h100-2026-11-23/run63-*): on
    bf16 inputs at B 4, T 4096, H 16, D 64, dq was off by 6.6e-2 of its largest entry (dk 3.5e-2;
    relative RMS 1.0e-2) against the same op on the inputs in fp32, which agrees with the fp64 zoo
    to 2e-6. Not a rounding that grows: the worst rows are those where den_t is within a rounding
    of the floor eps·n_t, and there (3)'s max takes den's side in one precision and the floor's in
    the other, so the gradient through den is there or not (the floor passes none). The
    interpreter reproduces it at T = 128 (dq 1.7e-1 over all 8192 rows, 6.9e-3 without the 27
    within 1% of the floor; run63-hrc_kink_cpu.py), so neither tf32 nor the SFU's sin/cos cause
    it. On the GPU only turning off bf16 records, bf16 feature dots and tf32 together brought it
    to 3.0e-3, at 1.85x the time (12.1 ms against 6.6, that size): a different rounding picks
    other rows' sides, it does not remove the kink. Any max() safeguard has it; the zoo's too.

Serial walk (non-causal, and causal with CHUNK_PARALLEL = False)
----------------------------------------------------------------
Launch grid: one program per (feature tile of BM frequencies, batch·head). Each program walks the
chunks of BT tokens in order holding its slice of the state, S_c and S_s [BM, V] in fp32
registers, and per chunk computes its share of (5):
    num_t = Σ_j A_tj v_j + e^{c⁻−c_t} (cos_t S_c + sin_t S_s),   den_t likewise with v = 1,
    A = (cos_q cos_kᵀ + sin_q sin_kᵀ) ⊙ Γ,   Γ_tj = e^{c_j − c_t} [j ≤ t],
with the keys' features pre-weighted by e^{a_j − c_j} <= 1. Numerators and denominators are sums
over frequencies, so the programs of one (batch, head) add their shares into fp32 buffers
(tl.atomic_add; a plain store when one tile holds all M); the division
o = num / max(den, eps·n) is one elementwise torch line after the kernel, inside the op
(_random_features.divide). The mass n_t (no gradient: the floor passes none) comes from the first
tile. The stabiliser's per-token numbers are computed by the launcher (_stabiliser), from k alone:
a_t = ‖u_t‖²/2 [B, T, H] and the prefix max c_t (a constant). Every path returns (o, den, mass,
a, c, state); the backward takes o's cotangent to num's and den's on the host
(_random_features.output_cotangents: dnum = do/D, dden = −Σ do·o/D where den >= eps·n) and a's
gradient to k inside the backward op (dk += s_u²·da·k, from a = ‖s_u k‖²/2).
Non-causal: a first sweep builds the whole state, a second reads it out.

Serial backward (non-causal; causal with CHUNK_PARALLEL or PARALLEL_BWD off), per program (the
same grid with half the frequencies a tile: it also holds dS): sweep 1
forward in time recomputes the state and gives
    dcos_q = (dA ⊙ Γ) cos_k + e^{c⁻−c_t} (dnum S_cᵀ + dden z_cᵀ),   dA = dnum vᵀ + dden 1ᵀ,
then dθ_q = (cos·dsin − sin·dcos)/√M, dq += √scale · dθ_q Ω, dΩ += dθ_qᵀ u_q; sweep 2 backward
in time carries dS (the gradient of the state, [BM, V] twice) and gives dcos_k, dsin_k, dv, the
gradient of a_t (Σ dφ̂_k·φ̂_k) and dΩ += dθ_kᵀ u_k. dq, dk, dv, da are shared by the tiles: atomics.
dΩ is written per (batch, head, tile) and summed over the batch on the host. Nothing but the
inputs is saved for backward.

The recurrent op (decoding) has its own token-loop kernel, forward only; its gradient is the chunk
backward, since both forms compute the same function.

Cost of the serial walk at the target size (bf16, B·T = 32768, H = 16, D = 64, M = 256, causal;
H100: 11.6 ms, latency-bound, 256 chunks in series a program): inputs q, k, v and
the output: 4 × 67 MB; atomics: M/BM = 8 programs add [T, V] fp32 shares (8 × 134 MB of
read-modify-write, mostly in L2 since the programs of one head run together: the price of keeping
the state slice in registers). FLOPs per token and head: 2·(2·D·M) for the phases (three tf32
passes each), 2·BT·2M (A), 2·BT·V (A v), 2·2M·V·2 (read-out and state): ~0.2 MFLOP, ~110 GFLOP in
all; plus 2·T·M cos/sin pairs per head on the SFUs.

Tile rule of the serial walk and the backward (no autotuning; nothing keyed on T or B): V sits in
one tile (BV = next power of two >= 16, V <= 256), the frequencies take the rest of a register budget of 4096 fp32 state elements
(S_c and S_s: 2·BM·BV): BM = 32 at V = 64 (16 in the backward, which also holds dS).
BT = min(chunk_size, 32): see MAX_BT for the ptxas register counts that chose it. num_warps 8,
num_stages 2.
Large head dims and shared memory (an H100 block has 232448 B): at K = V = 64 every tile above fits
with room and is unchanged; at larger K, V several asked for 245-639 KB (the chunk-parallel walk,
phase 3, reverse walk and gradient kernel, the serial backward) and would fail at launch. So the
rule steps down there, and only there (_random_features.parallel_tiles, tile_rule, serial_bwd_bt
have the bytes): the walks BM 32 at K = 256 and one stage in fp32 past BK + BV = 256, phase 3 one
stage in fp32 past 320, the parallel backward's chunk 32 unless K <= 64 and V <= 128 (16 in fp32
at K = 256), the serial kernels BM <= 32 and, backward, BT 16 at K = 256. K > 256 is refused.
Compiled for sm_90 on a CPU (tests/test_hrc_la.py's AOT_SHARED_SCRIPT checks K = V = 256); not run
on a GPU, and the smaller tiles are untimed.

Naming legend (fla's prefixes, STYLE rule 29):
    i_   program ids and loop indices (i_m frequency tile, i_bh batch·head, i_t chunk)
    p_   pointers          b_   blocks held on chip (zoo names after the prefix: b_S_c, b_A, ...)
    offs_ offsets          mask_ masks (mask_t rows inside T, mask_A the causal mask)
    BT   chunk length (the zoo's L)   BK, BV, BM  tiles of K, V and of the M frequencies   NT chunks
    h0/ht the initial/final state (real pair: rows [0, M) cos, [M, 2M) sin of [B, H, 2M, V])
    hs, R the chunk-parallel path's records [B, H, NT, R] (S_c, S_s, z_c, z_s, n flattened)
    s_u  √scale (u = s_u·x);  r_m  1/√M
"""

import os

import torch
import torch._dynamo  # noqa: F401  a custom op's first call imports it lazily (~1-2 s): pay it here, at import
import triton
import triton.language as tl

import zoo.hrc_la as zhrc
from zoo.hrc_la import EPS_DENOMINATOR, HRCMultiheadAttention as _ZooLayer, _check_inputs

from fast._random_features import (
    EMPTY, EMPTY_SCALE, PHASE_PRECISION, causal_decay, chunk_end, chunk_rows, chunk_program, chunk_record,
    chunk_state_in,
    cos_sin, frequency_tile, half_operand, load_rows, omega_tile, phases_t, prefix_max, record_operand, state_or_zeros,
    state_ptrs, store_chunk_out, store_share, store_state,
)
from fast import _random_features as _rf
from fast._compile import launch, precompile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as @triton.jit does
# The causal chunk forward: True runs the chunk-parallel kernels (two launches, the card's state
# walk and phase 3), False the serial walk per frequency tile (_hrc_la_chunk_fwd_kernel). Read at each call.
CHUNK_PARALLEL = True
PARALLEL_BT = 64  # their chunk, whatever chunk_size asks (the same function; only summation order moves)
# (BM, num_warps, num_stages) of the state walk and of phase 3 (BM capped at M's power of two); the
# card has the sm_90 register counts. Read at each call. Chosen by measurement on the H100 at the
# issue's size: phase 3 at 4 warps 1.43-1.71 ms against 2.96 at 8 (runs 21-23: one 8-warp block an
# SM; at 4, two blocks hide each other's latency), BM 32 beating 16 and 64 (runs 47-48); the walk,
# since it computes the stabiliser itself (run 49), at BM 64 0.79 ms against 1.27 at 32, 1.63 at 16,
# 1.21 at 8 warps and 0.92 with 3 stages.
WALK_TILE = (64, 4, 2)
OUT_TILE = (32, 4, 2)
# The split walk (_launch_walk): segments enough for WALK_SLOTS_PER_SM walk programs an SM (4 warps
# at <= 255 registers: 2 blocks an SM); WALK_SEGMENTS, when not None, forces the count (tests and
# sweeps). B = 1, T = 65536 (run 49): 64 programs, 4 segments, the walk 2.68 ms against 4.20 unsplit.
WALK_SLOTS_PER_SM = 2
WALK_SEGMENTS = None
# Phase 3's levers, read at each call (the GPU sweep compares them; the card says why each default):
# FAST_TRIG: sin/cos after an explicit 2π range reduction on the SFU (fast/_random_features.py's
#   cos_sin) instead of libdevice's accurate ones (Payne-Hanek slow path); the state walk too.
# FEATURE_DOTS_16: for bf16/fp16 inputs, the features, A and the records' S enter phase 3's dots in
#   the input dtype (tensor cores at 2x tf32, half the operand registers); fp32 inputs unchanged.
FAST_TRIG = True
FEATURE_DOTS_16 = True
# The per-chunk records between the walk and phase 3 (1.09 GB in fp32 at the size, written
# once and read once): True stores them in bf16 for bf16/fp16 inputs, halving those bytes (the walk
# still adds in fp32; each stored state is rounded once, 2⁻⁹ relative, under the half-precision
# output's own rounding). fp32 inputs always keep fp32 records. On since run 51: the walk 0.80 ->
# 0.65 ms, the op 2.07 -> 1.92 ms; under FEATURE_DOTS_16 phase 3 rounds S⁻ to bf16 for its dots anyway
# (record_operand now feeds a bf16 record to them as stored), so only z and n are new roundings
# (error against the fp64 zoo 3.01e-3 -> 3.17e-3, the bf16 output's own rounding ~2e-3).
HALF_RECORDS = True
# The causal backward: True runs the chunk-parallel kernels (the card's "Causal backward, parallel
# over chunks": the walk again, a reverse walk, then every chunk's gradients), False the serial
# _hrc_la_chunk_bwd_kernel. Only with CHUNK_PARALLEL (non-causal always takes the serial one). Read
# at each call. DWALK_TILE and BWD_TILE: (BM, num_warps, num_stages) of the reverse walk and of the
# per-chunk gradient kernel (BM capped at M's power of two); the card has the sm_90 registers.
PARALLEL_BWD = True
DWALK_TILE = (32, 4, 2)
BWD_TILE = (32, 8, 1)


# ------------------------------------------------------------------------------------------------
# Tile rule
# ------------------------------------------------------------------------------------------------
def _tile_rule(K: int, V: int, M: int):
    """(BK, BV, BM, num_warps, num_stages) from the head dims and M alone (see the card): the state
    budget holds two blocks, S_c and S_s."""
    return _rf.tile_rule(K, V, M, 2)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _phases(x, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K: tl.constexpr):
    """u = s_u·x for the chunk's rows [BT, BK] and θ = u Ωᵀ [BT, BM] (fp32-accurate, PHASE_PRECISION)."""
    b_u = s_u * load_rows(x, p_t, mask_t, offs_k, mask_k, K)
    return b_u, tl.dot(b_u, tl.trans(b_omega), input_precision=PHASE_PRECISION)


@triton.jit
def _key_features(k, p_t, mask_t, offs_k, mask_k, b_omega, b_rm, b_w, s_u, K: tl.constexpr):
    """The keys' features pre-weighted by w_j = e^{a_j − c} [BT]: w·(cos θ, sin θ)/√M, [BT, BM] each."""
    _, b_th = _phases(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
    return tl.cos(b_th) * b_w[:, None] * b_rm[None, :], tl.sin(b_th) * b_w[:, None] * b_rm[None, :]


@triton.jit
def _initial_state(h0, z0, n0, c0, i_bh, offs_m, offs_v, mask_m, mask_v, HAS_H0: tl.constexpr, M: tl.constexpr,
                   V: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr):
    """This tile's slice of the state [B, H, 2M, V] (rows [0, M) cos, [M, 2M) sin): pointers p_Sc, p_zc
    (p_Ss, p_zs = + M·V, + M), mask_S, and the fp32 blocks S_c, S_s, z_c, z_s, the mass n and the
    log-scale c they are kept at (h0.. when HAS_H0, else zeros at c0)."""
    p_Sc, p_zc, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, 2 * M, V)  # rows [0, M): cos
    b_Sc, b_zc = state_or_zeros(h0, z0, p_Sc, p_zc, mask_S, mask_m, HAS_H0, BM, BV)
    b_Ss, b_zs = state_or_zeros(h0, z0, p_Sc + M * V, p_zc + M, mask_S, mask_m, HAS_H0, BM, BV)  # rows [M, 2M): sin
    b_crun = tl.load(c0 + i_bh)
    b_n = b_crun * 0.0
    if HAS_H0:
        b_n += tl.load(n0 + i_bh)
    return p_Sc, p_zc, mask_S, b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _hrc_la_chunk_fwd_kernel(
    q, k, v, omega, a, c,  # [B, T, H, K] ×2, [B, T, H, V], [H, M, K], [B, T, H] ×2 (fp32)
    num, den, mass,  # [B, T, H, V], [B, T, H], [B, T, H] fp32 (zeroed when ATOMIC)
    h0, z0, n0, c0, ht, zt, nt,  # [B, H, 2M, V], [B, H, 2M], [B, H], [B, H] fp32 (h0.. may be None)
    s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    CAUSAL: tl.constexpr, ATOMIC: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    DOT: tl.constexpr,
):
    """This tile's share of num_t = Re(φ̂_tᵀS_t), den_t = Re(φ̂_tᵀz_t) (zoo (5)); n_t from tile 0."""
    # -- map the program to a frequency tile of one (batch, head) ----------------------------------
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)  # b_rm = 0 on padding frequencies (θ = 0 there: cos = 1)
    NT = tl.cdiv(T, BT)
    first = i_m == 0

    # -- the state slice: S_c, S_s [BM, BV], z_c, z_s [BM], mass n and log-scale c, fp32 -----------
    p_Sc, p_zc, mask_S, b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun = _initial_state(
        h0, z0, n0, c0, i_bh, offs_m, offs_v, mask_m, mask_v, HAS_H0, M, V, BM, BV)  # b_crun: the state's scale
    p_Ss, p_zs = p_Sc + M * V, p_zc + M  # rows [M, 2M): sin

    # -- non-causal: build the whole state first (every c_t is the global maximum) ----------------
    if not CAUSAL:
        b_cT = tl.load(c + row0 * H + i_h)
        b_dec = tl.exp(b_crun - b_cT)  # (4) the initial state, brought to the final scale
        b_Sc, b_Ss, b_zc, b_zs, b_n = b_Sc * b_dec, b_Ss * b_dec, b_zc * b_dec, b_zs * b_dec, b_n * b_dec
        b_crun = b_cT
        for i_t in range(NT):
            offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
            b_w = tl.exp(tl.load(a + p_t, mask=mask_t, other=float("-inf")) - b_cT)  # e^{a_j − c} [BT]
            b_ck, b_sk = _key_features(k, p_t, mask_t, offs_k, mask_k, b_omega, b_rm, b_w, s_u, K)  # [BT, BM]
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            b_Sc += tl.dot(tl.trans(b_ck), b_v, input_precision=DOT)  # (4) Σ_j w_j conj φ̂(k_j) v_jᵀ, real part
            b_Ss += tl.dot(tl.trans(b_sk), b_v, input_precision=DOT)  # minus the imaginary part
            b_zc += tl.sum(b_ck, 0)
            b_zs += tl.sum(b_sk, 0)
            b_n += tl.sum(b_w, 0)

    # -- the sweep, chunk by chunk -----------------------------------------------------------------
    for i_t in range(NT):
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        _, b_th = _phases(q, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
        b_cq, b_sq = tl.cos(b_th) * b_rm[None, :], tl.sin(b_th) * b_rm[None, :]  # φ̂(q): e^{a(q)} cancels (2)
        if CAUSAL:
            b_c = tl.load(c + p_t, mask=mask_t, other=0.0)  # c_t, the prefix max [BT]
            b_e = tl.exp(tl.load(a + p_t, mask=mask_t, other=float("-inf")) - b_c)  # e^{a_j − c_j} <= 1
            b_ck, b_sk = _key_features(k, p_t, mask_t, offs_k, mask_k, b_omega, b_rm, b_e, s_u, K)  # [BT, BM]
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            # (3) intra-chunk: Γ_tj = e^{c_j − c_t} for j <= t, so A_tj = Re(φ̂_t conj φ̂_j)·e^{a_j − c_t}
            b_G = causal_decay(offs_t, mask_t, b_c)
            b_A = (tl.dot(b_cq, tl.trans(b_ck), input_precision=DOT) + tl.dot(b_sq, tl.trans(b_sk), input_precision=DOT)) * b_G  # [BT, BT]
            # (5) inter-chunk: the state at scale c⁻, brought to c_t
            b_dec = tl.exp(tl.where(mask_t, b_crun - b_c, float("-inf")))  # [BT]
            b_o = tl.dot(b_A, b_v, input_precision=DOT) + b_dec[:, None] * (tl.dot(b_cq, b_Sc, input_precision=DOT) + tl.dot(b_sq, b_Ss, input_precision=DOT))
            b_d = tl.sum(b_A, 1) + b_dec * (tl.sum(b_cq * b_zc[None, :], 1) + tl.sum(b_sq * b_zs[None, :], 1))
            if first:
                tl.store(mass + p_t, tl.sum(b_G * b_e[None, :], 1) + b_dec * b_n, mask=mask_t)
            # (4) state pass: to the scale of the chunk's last token
            b_clast, b_gl = chunk_end(b_c, mask_t)  # e^{c_j − c_last} [BT]
            b_dS = tl.exp(b_crun - b_clast)
            b_Sc = b_Sc * b_dS + tl.dot(tl.trans(b_ck * b_gl[:, None]), b_v, input_precision=DOT)
            b_Ss = b_Ss * b_dS + tl.dot(tl.trans(b_sk * b_gl[:, None]), b_v, input_precision=DOT)
            b_zc = b_zc * b_dS + tl.sum(b_ck * b_gl[:, None], 0)
            b_zs = b_zs * b_dS + tl.sum(b_sk * b_gl[:, None], 0)
            b_n = b_n * b_dS + tl.sum(b_e * b_gl, 0)
            b_crun = b_clast
        else:
            b_o = tl.dot(b_cq, b_Sc, input_precision=DOT) + tl.dot(b_sq, b_Ss, input_precision=DOT)
            b_d = tl.sum(b_cq * b_zc[None, :], 1) + tl.sum(b_sq * b_zs[None, :], 1)
            if first:
                tl.store(mass + p_t, tl.zeros([BT], dtype=tl.float32) + b_n, mask=mask_t)
        store_share(num, den, p_t, mask_t, offs_v, mask_v, b_o, b_d, V, ATOMIC)  # the tiles of one head add

    # -- the final state ---------------------------------------------------------------------------
    if STORE_HT:
        store_state(ht, zt, p_Sc, p_zc, mask_S, mask_m, b_Sc, b_zc)
        store_state(ht, zt, p_Ss, p_zs, mask_S, mask_m, b_Ss, b_zs)
        if first:
            tl.store(nt + i_bh, b_n)


# ------------------------------------------------------------------------------------------------
# Causal forward, parallel over chunks (the default causal path: CHUNK_PARALLEL)
# ------------------------------------------------------------------------------------------------
# One chunk's record in the state buffer hs [B, H, NT, R], R = 2M·V + 2M + 1 fp32: S_c, S_s (rows
# [0, M) cos, [M, 2M) sin, each row V wide), then z_c, z_s, then the mass n. The scan treats the
# record as a flat vector: every element decays by the same scalar e^{c⁻−c_last} per chunk.
@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
})
@triton.jit(do_not_specialize=["T", "NT", "SEG", "NS"])
def _hrc_la_chunk_h_kernel(
    k, v, omega, hs, cs,  # [B, T, H, K], [B, T, H, V], [H, M, K], [B, H, NT, R] (records), [B, H, NT] fp32
    h0, z0, n0, c0, ht, zt, nt,  # [B, H, 2M, V], [B, H, 2M], [B, H], [B, H] fp32 (h0.., ht.. may be None)
    ls, lc,  # [B, H, NS, R], [B, H, NS] fp32: each segment's own state and scale (a split walk's pass 1)
    s_u, r_m, T, H, NT, SEG, NS, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, LOCAL: tl.constexpr, FAST_TRIG: tl.constexpr,
    DOT: tl.constexpr,
):
    """The state walk (phases 1 + 2, fla's chunk_fwd_h), one program per (frequency tile of BM,
    batch·head, segment of SEG chunks), its slice S_c, S_s [BM, BV], z_c, z_s [BM] (and the mass n
    in tile 0) in fp32 registers, walking its chunks in order. Per chunk n, (4) a chunk at a time:
        record n  <-  the state before the chunk, at scale c_last(n−1) (c0 for the first),
        S <- e^{c_last(n−1) − c_last(n)} S + Σ_j e^{a_j − c_last(n)} conj φ̂(k_j) v_jᵀ  (as [cos; sin] rows),
    z likewise with v = 1, n with φ̂ = 1. The keys' features stay on chip; the records are written
    once (here) and read once (phase 3). The stabiliser (2) comes from the keys as they pass: the
    chunk's a_j = ‖u_j‖²/2 and its scale c_last = max(c⁻, a_j...); tile 0 writes each record's
    scale c⁻ into cs (phase 3 takes its c_t from there and its own keys).
    Split walk (NS > 1 segments, when B·H is too small to fill the GPU): pass 1 (LOCAL) walks each
    segment but the last from an empty state, writing no records, and leaves its state and scale
    in ls, lc; pass 2 starts segment s from the initial state with segments 0..s−1 folded in,
        S <- e^{c − c'} S + e^{ℓ_r − c'} L_r,  c' = max(c, ℓ_r),
    then walks it as above. NS = 1: pass 2 alone, the plain walk.
    WALK_TILE: BM = 64 at 4 warps (the card has the registers)."""
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)  # b_rm = 0 on padding frequencies (θ = 0 there: cos = 1)
    i_s = tl.program_id(2)
    first = i_m == 0
    # a record's offsets: S_c, S_s rows of V, then z_c, z_s, then n (see chunk_record)
    o_S = offs_m[:, None] * V + offs_v[None, :]

    # -- the state slice, fp32, at the log-scale b_crun ----------------------------------------------
    p_Sc, p_zc, mask_S, b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun = _initial_state(
        h0, z0, n0, c0, i_bh, offs_m, offs_v, mask_m, mask_v, HAS_H0 and not LOCAL, M, V, BM, BV)
    p_Ss, p_zs = p_Sc + M * V, p_zc + M  # rows [M, 2M): sin
    if LOCAL:
        b_crun = tl.full([], EMPTY, tl.float32)  # a segment alone: the empty state
    else:
        for i_r in range(i_s):  # fold in the segments before this one (pass 1's states)
            p_l = chunk_record(ls, i_bh, i_r, NS, R)
            b_cl = tl.load(lc + i_bh.to(tl.int64) * NS + i_r)
            b_cnew = tl.maximum(b_crun, b_cl)
            b_d, b_dl = tl.exp(b_crun - b_cnew), tl.exp(b_cl - b_cnew)
            b_Sc = b_Sc * b_d + b_dl * tl.load(p_l + o_S, mask=mask_S, other=0.0)
            b_Ss = b_Ss * b_d + b_dl * tl.load(p_l + M * V + o_S, mask=mask_S, other=0.0)
            b_zc = b_zc * b_d + b_dl * tl.load(p_l + 2 * M * V + offs_m, mask=mask_m, other=0.0)
            b_zs = b_zs * b_d + b_dl * tl.load(p_l + 2 * M * V + M + offs_m, mask=mask_m, other=0.0)
            b_n = b_n * b_d + b_dl * tl.load(p_l + 2 * M * V + 2 * M)
            b_crun = b_cnew

    for i_t in range(i_s * SEG, tl.minimum(i_s * SEG + SEG, NT)):
        # -- record n: the state before the chunk, as phase 3 reads it -------------------------------
        if not LOCAL:
            p_h = chunk_record(hs, i_bh, i_t, NT, R)
            tl.store(p_h + o_S, b_Sc.to(hs.dtype.element_ty), mask=mask_S)
            tl.store(p_h + M * V + o_S, b_Ss.to(hs.dtype.element_ty), mask=mask_S)
            tl.store(p_h + 2 * M * V + offs_m, b_zc.to(hs.dtype.element_ty), mask=mask_m)
            tl.store(p_h + 2 * M * V + M + offs_m, b_zs.to(hs.dtype.element_ty), mask=mask_m)
            if first:
                tl.store(p_h + 2 * M * V + 2 * M, b_n.to(hs.dtype.element_ty))
                tl.store(cs + i_bh.to(tl.int64) * NT + i_t, b_crun)  # c⁻, the record's scale (fp32 whatever hs holds)
        # -- (4) the chunk's keys, at the scale of its last token ------------------------------------
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_xkT = tl.trans(load_rows(k, p_t, mask_t, offs_k, mask_k, K))  # [BK, BT], unscaled (see phases_t)
        b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
        # (2) the stabiliser: a_j = ‖s_u·k_j‖²/2, c_last = max(c⁻, the chunk's a) (c is a prefix max)
        b_a = tl.where(mask_t, (0.5 * s_u * s_u) * tl.sum(b_xkT * b_xkT, 0), float("-inf"))  # [BT]
        b_clast = tl.maximum(b_crun, tl.max(b_a, 0))
        b_w = tl.exp(b_a - b_clast)  # e^{a_j − c_last} <= 1
        b_th = phases_t(b_xkT, b_omega, s_u, k.dtype.element_ty != tl.float32)  # θᵀ = Ω uᵀ [BM, BT]
        b_cos, b_sin = cos_sin(b_th, FAST_TRIG)
        b_ck = b_cos * b_w[None, :] * b_rm[:, None]  # e^{a_j − c_last} Re conj φ̂(k_j), transposed
        b_sk = b_sin * b_w[None, :] * b_rm[:, None]  # minus its imaginary part
        b_dec = tl.exp(b_crun - b_clast)  # e^{c_last(n−1) − c_last(n)}
        b_Sc = b_Sc * b_dec + tl.dot(b_ck, b_v, input_precision=DOT)
        b_Ss = b_Ss * b_dec + tl.dot(b_sk, b_v, input_precision=DOT)
        b_zc = b_zc * b_dec + tl.sum(b_ck, 1)
        b_zs = b_zs * b_dec + tl.sum(b_sk, 1)
        b_n = b_n * b_dec + tl.sum(b_w, 0)
        b_crun = b_clast

    # -- the segment's state (pass 1), or the final state ------------------------------------------------
    if LOCAL:
        p_l = chunk_record(ls, i_bh, i_s, NS, R)
        tl.store(p_l + o_S, b_Sc, mask=mask_S)
        tl.store(p_l + M * V + o_S, b_Ss, mask=mask_S)
        tl.store(p_l + 2 * M * V + offs_m, b_zc, mask=mask_m)
        tl.store(p_l + 2 * M * V + M + offs_m, b_zs, mask=mask_m)
        if first:
            tl.store(p_l + 2 * M * V + 2 * M, b_n)
            tl.store(lc + i_bh.to(tl.int64) * NS + i_s, b_crun)
    elif STORE_HT:
        if i_s == NS - 1:
            store_state(ht, zt, p_Sc, p_zc, mask_S, mask_m, b_Sc, b_zc)
            store_state(ht, zt, p_Ss, p_zs, mask_S, mask_m, b_Ss, b_zs)
            if first:
                tl.store(nt + i_bh, b_n)


@triton.jit(do_not_specialize=["T", "NT"])
def _hrc_la_chunk_out_kernel(
    q, k, v, omega, hs, cs,  # inputs as in the walk; hs, cs: the states before each chunk and their scales
    o, den, mass, a, c,  # [B, T, H, V] in v's dtype, [B, T, H] ×4 fp32, written once
    s_u, eps, r_m, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr,
    FAST_TRIG: tl.constexpr, DOTS_16: tl.constexpr,
):
    """Phase 3, one program per (chunk, batch·head): (5) for the chunk's queries, all M frequencies
    walked BM at a time (queries' and keys' features on chip), so o, den and the mass are
    written once, with no atomics:
        A = Σ_m (cos_q cos_kᵀ + sin_q sin_kᵀ) ⊙ Γ,  keys weighted e^{a_j − c_j},
        Γ_tj = e^{c_j − c_t} [j ≤ t],
        num_t = (A v)_t + e^{c⁻−c_t} (cos_t S_c + sin_t S_s),  den_t likewise with z, n_t with n⁻,
        o_t = num_t / max(den_t, eps·n_t)  (3), num never written;
    the stabiliser (2) from the chunk's keys, a_j = ‖u_j‖²/2, c_t = max(c⁻, a_1..a_t), with c⁻ the
    walk's (cs): a and c are written for the backward and the final state's scale.
    OUT_TILE: BM = 16 at 8 warps, 2 stages: 230 registers on sm_90 (the card has the others); the
    chunk's record is read once, BM rows at a time. FAST_TRIG and DOTS_16: the card's switches."""
    # the chunk's q, k transposed [BK, BT] (unscaled: see phases_t) and its record
    i_t, i_bh, i_h, row0, s_u, r_m, offs_k, offs_v, mask_k, mask_v, offs_t, mask_t, p_t, b_xqT, b_xkT = \
        chunk_program(q, k, s_u, r_m, T, H, K, V, BT, BK, BV)
    p_h = chunk_record(hs, i_bh, i_t, NT, R)
    # (2) the stabiliser: a_j = ‖s_u·k_j‖²/2 and the prefix max c_t from the record's scale c⁻ on
    b_cprev = tl.load(cs + i_bh.to(tl.int64) * NT + i_t)  # c⁻
    b_a = tl.where(mask_t, (0.5 * s_u * s_u) * tl.sum(b_xkT * b_xkT, 0), float("-inf"))  # [BT]
    b_c = tl.maximum(prefix_max(b_a), b_cprev)  # c_t [BT]
    tl.store(a + p_t, b_a, mask=mask_t)
    tl.store(c + p_t, b_c, mask=mask_t)
    b_e = tl.exp(b_a - b_c)  # e^{a_j − c_j} <= 1
    b_dec = tl.exp(tl.where(mask_t, b_cprev - b_c, float("-inf")))  # e^{c⁻ − c_t}
    # the mass n_t = Σ_{j<=t} e^{a_j − c_t} + e^{c⁻ − c_t} n⁻, stored now: only its floor stays live
    b_n = tl.sum(causal_decay(offs_t, mask_t, b_c) * b_e[None, :], 1)
    b_n += b_dec * tl.load(p_h + 2 * M * V + 2 * M).to(tl.float32)
    tl.store(mass + p_t, b_n, mask=mask_t)
    b_floor = tl.cast(eps, tl.float32) * b_n
    b_A = tl.zeros([BT, BT], dtype=tl.float32)  # Re(φ̂_t conj φ̂_j) e^{a_j − c_j}, summed over frequencies
    b_oi = tl.zeros([BT, BV], dtype=tl.float32)  # Re(φ̂_tᵀ S⁻)
    b_di = tl.zeros([BT], dtype=tl.float32)  # Re(φ̂_tᵀ z⁻)
    # the dots' operands: fp32 (tf32 products), or (DOTS_16, bf16/fp16 inputs) in the input dtype
    FT = q.dtype.element_ty if DOTS_16 else tl.float32
    for i_m in range(tl.cdiv(M, BM)):  # features transposed, [BM, BT]: see phases_t
        offs_m, mask_m, b_rm, b_omega = omega_tile(omega, i_h, i_m, r_m, offs_k, mask_k, K, M, BM)
        b_th = phases_t(b_xqT, b_omega, s_u, q.dtype.element_ty != tl.float32)
        b_cos, b_sin = cos_sin(b_th, FAST_TRIG)
        b_cq = half_operand(b_cos * b_rm[:, None], FT)  # φ̂(q)ᵀ: e^{a(q)} cancels (2)
        b_sq = half_operand(b_sin * b_rm[:, None], FT)
        b_th = phases_t(b_xkT, b_omega, s_u, k.dtype.element_ty != tl.float32)
        b_cos, b_sin = cos_sin(b_th, FAST_TRIG)
        b_ck = half_operand(b_cos * b_e[None, :] * b_rm[:, None], FT)
        b_sk = half_operand(b_sin * b_e[None, :] * b_rm[:, None], FT)
        b_A += tl.dot(tl.trans(b_cq), b_ck, input_precision=DOT) + tl.dot(tl.trans(b_sq), b_sk, input_precision=DOT)
        mask_S = mask_m[:, None] & mask_v[None, :]
        p_S = p_h + offs_m[:, None] * V + offs_v[None, :]
        b_Sc = record_operand(p_S, mask_S, FT)  # S⁻ (bf16: HALF_RECORDS)
        b_Ss = record_operand(p_S + M * V, mask_S, FT)
        b_oi += tl.dot(tl.trans(b_cq), b_Sc, input_precision=DOT)  # (5) inter-chunk
        b_oi += tl.dot(tl.trans(b_sq), b_Ss, input_precision=DOT)
        b_zc = tl.load(p_h + 2 * M * V + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        b_zs = tl.load(p_h + 2 * M * V + M + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        b_di += tl.sum(b_cq.to(tl.float32) * b_zc[:, None], 0) + tl.sum(b_sq.to(tl.float32) * b_zs[:, None], 0)
    # (3) intra-chunk: A_tj = Re(φ̂_t conj φ̂_j)·e^{a_j − c_t} for j <= t
    b_A *= causal_decay(offs_t, mask_t, b_c)  # Γ again: held through the loop for the mass, it spilled
    store_chunk_out(o, den, v, b_A, b_oi, b_di, b_dec, b_floor, p_t, mask_t, offs_v, mask_v, V, FT, DOT)  # (3)


# ------------------------------------------------------------------------------------------------
# Causal backward, parallel over chunks (the default causal backward: PARALLEL_BWD; the card)
# ------------------------------------------------------------------------------------------------
# dhs [B, H, NT, R] fp32, the records' layout (S_c, S_s, z_c, z_s rows; the last element unused):
# record n holds the gradient of the loss w.r.t. the state AFTER chunk n (at its scale c_last(n)),
# the cotangent chunk n's keys write into.
@triton.heuristics({
    "HAS_H0": lambda args: args["dh0"] is not None,
    "HAS_DHT": lambda args: args["dht"] is not None,
})
@triton.jit(do_not_specialize=["T", "NT"])
def _hrc_la_chunk_dh_kernel(
    q, c, c0, dnum, dden, dht, dzt, dhs,  # [B, T, H, K], [B, T, H], [B, H], dnum [B, T, H, V], dden [B, T, H] fp32,
    dh0, dz0,  # ... [B, H, 2M, V], [B, H, 2M] fp32 (may be None) ×2, dhs [B, H, NT, R] fp32
    omega, s_u, r_m, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, FAST_TRIG: tl.constexpr, DOT: tl.constexpr,
):
    """The reverse state walk (fla's chunk_bwd_dh), one program per (frequency tile of BM, batch·head),
    its slice of the state's cotangent dS_c, dS_s [BM, BV], dz_c, dz_s [BM] in fp32 registers,
    walking the chunks from last to first. The running value starts as the final state's cotangent
    (dht, dzt: the final state is at scale c_T = c_last(NT − 1)); per chunk n:
        record n  <-  dS⁺, the cotangent of the state after the chunk (what its keys see),
        dS⁻ = e^{c⁻ − c_last(n)} dS⁺ + Σ_t e^{c⁻ − c_t} φ̂(q_t) dnum_tᵀ  (the transpose of (4)'s decay
              and of (5)'s read-out; dz⁻ likewise with dden_t),
    c⁻ = c_last(n − 1) (c0 for chunk 0), the queries' features on chip. After chunk 0 the running
    value is the initial state's gradient (dh0, dz0, at c0's scale)."""
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)  # b_rm = 0 on padding frequencies
    p_Sc, p_zc, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, 2 * M, V)  # rows [0, M): cos
    p_Ss, p_zs = p_Sc + M * V, p_zc + M  # rows [M, 2M): sin
    b_dSc, b_dzc = state_or_zeros(dht, dzt, p_Sc, p_zc, mask_S, mask_m, HAS_DHT, BM, BV)
    b_dSs, b_dzs = state_or_zeros(dht, dzt, p_Ss, p_zs, mask_S, mask_m, HAS_DHT, BM, BV)
    b_c0 = tl.load(c0 + i_bh)
    o_S = offs_m[:, None] * V + offs_v[None, :]  # a record's offsets, as the walk writes them

    for i_r in range(NT):
        i_t = NT - 1 - i_r
        # -- record n: the cotangent of the state after the chunk ---------------------------------
        p_h = chunk_record(dhs, i_bh, i_t, NT, R)
        tl.store(p_h + o_S, b_dSc, mask=mask_S)
        tl.store(p_h + M * V + o_S, b_dSs, mask=mask_S)
        tl.store(p_h + 2 * M * V + offs_m, b_dzc, mask=mask_m)
        tl.store(p_h + 2 * M * V + M + offs_m, b_dzs, mask=mask_m)
        # -- through the chunk: its decay, then its queries' read-out of the state before it ---------
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_xqT = tl.trans(load_rows(q, p_t, mask_t, offs_k, mask_k, K))  # [BK, BT], unscaled (see phases_t)
        b_c = tl.load(c + p_t, mask=mask_t, other=0.0)
        b_clast = tl.load(c + (row0 + tl.minimum(i_t * BT + BT, T) - 1) * H + i_h)
        b_cprev = tl.where(i_t > 0, tl.load(c + (row0 + tl.maximum(i_t * BT - 1, 0)) * H + i_h), b_c0)
        b_gq = tl.exp(tl.where(mask_t, b_cprev - b_c, float("-inf")))  # e^{c⁻ − c_t} [BT]
        b_dn = load_rows(dnum, p_t, mask_t, offs_v, mask_v, V)  # [BT, BV]
        b_dd = tl.load(dden + p_t, mask=mask_t, other=0.0)
        b_th = phases_t(b_xqT, b_omega, s_u, q.dtype.element_ty != tl.float32)  # θᵀ [BM, BT]
        b_cos, b_sin = cos_sin(b_th, FAST_TRIG)
        b_cq = b_cos * b_rm[:, None] * b_gq[None, :]  # e^{c⁻ − c_t} φ̂(q_t), transposed
        b_sq = b_sin * b_rm[:, None] * b_gq[None, :]
        b_dec = tl.exp(b_cprev - b_clast)  # e^{c⁻ − c_last(n)}
        b_dSc = b_dSc * b_dec + tl.dot(b_cq, b_dn, input_precision=DOT)
        b_dSs = b_dSs * b_dec + tl.dot(b_sq, b_dn, input_precision=DOT)
        b_dzc = b_dzc * b_dec + tl.sum(b_cq * b_dd[None, :], 1)
        b_dzs = b_dzs * b_dec + tl.sum(b_sq * b_dd[None, :], 1)

    if HAS_H0:
        store_state(dh0, dz0, p_Sc, p_zc, mask_S, mask_m, b_dSc, b_dzc)
        store_state(dh0, dz0, p_Ss, p_zs, mask_S, mask_m, b_dSs, b_dzs)


@triton.jit
def _grad_features(b_xqT, b_xkT, b_omega, b_rm, b_e, s_u, X_IS_TF32: tl.constexpr, FAST_TRIG: tl.constexpr):
    """A frequency tile's features, transposed [BM, BT] (see phases_t): cos θ_q, sin θ_q, then φ̂(q)ᵀ
    (cos, sin)/√M, the keys' cos θ_k, sin θ_k, their weight e^{a_j − c_j}/√M and φ̂_k(k)ᵀ."""
    b_cos_q, b_sin_q = cos_sin(phases_t(b_xqT, b_omega, s_u, X_IS_TF32), FAST_TRIG)
    b_cos_k, b_sin_k = cos_sin(phases_t(b_xkT, b_omega, s_u, X_IS_TF32), FAST_TRIG)
    b_wk = b_e[None, :] * b_rm[:, None]
    return (b_cos_q, b_sin_q, b_cos_q * b_rm[:, None], b_sin_q * b_rm[:, None], b_cos_k, b_sin_k, b_wk,
            b_cos_k * b_wk, b_sin_k * b_wk)


@triton.jit(do_not_specialize=["T", "NT"])
def _hrc_la_chunk_grad_kernel(
    q, k, v, omega, a, c, c0, hs, dhs, dnum, dden,  # inputs as in phase 3, the records of both walks, cotangents
    dq, dk, dv, da, domega,  # fp32 [B, T, H, K] ×2, [B, T, H, V], [B, T, H] written once; [H, M, K] zeroed (DOMEGA)
    s_u, r_m, T, H, NT, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr,
    FAST_TRIG: tl.constexpr, DOMEGA: tl.constexpr,
):
    """The gradients of one chunk's tokens, one program per (chunk, batch·head, side), all M
    frequencies walked BM at a time (features transposed [BM, BT], as phase 3), written once:
        dA = (dnum vᵀ + dden 1ᵀ) ⊙ Γ                                   (the transpose of (3)),
      side 0, the queries (reads hs[n]):
        dφ̂(q_t) = (dA φ̂_k)_t + e^{c⁻ − c_t} (S⁻ dnum_t + z⁻ dden_t),
      side 1, the keys and values (reads dhs[n]):
        dφ̂_k(k_j) = (dAᵀ φ̂(q))_j + e^{c_j − c_last} (dS⁺ v_j + dz⁺),
        dv_j = Σ_t (A ⊙ Γ)_tj dnum_t + e^{c_j − c_last} φ̂_k(k_j)ᵀ dS⁺,
    keys weighted e^{a_j − c_j} (so da_j = Σ_m dφ̂_k·φ̂_k), then dθ = (cos·dsin − sin·dcos)/√M
    (keys: times their weight), dx = s_u·dθ Ω, and (DOMEGA) dΩ += s_u·dθᵀ x, added into [H, M, K]
    by atomics (the only ones). Two sides, not one program: each holds half the accumulators (one
    program held dq, dk, dv and A: 255 registers and 300-1300 B of spill on sm_90) at the price of
    computing the tile's features twice. BWD_TILE: the card has its registers."""
    i_t, i_bh, i_h, row0, s_u, r_m, offs_k, offs_v, mask_k, mask_v, offs_t, mask_t, p_t, b_xqT, b_xkT = \
        chunk_program(q, k, s_u, r_m, T, H, K, V, BT, BK, BV)
    b_c = tl.load(c + p_t, mask=mask_t, other=0.0)  # c_t, the prefix max [BT] (the forward's)
    b_e = tl.exp(tl.load(a + p_t, mask=mask_t, other=float("-inf")) - b_c)  # e^{a_j − c_j} <= 1
    b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)  # [BT, BV]
    b_dn = load_rows(dnum, p_t, mask_t, offs_v, mask_v, V)
    b_dd = tl.load(dden + p_t, mask=mask_t, other=0.0)
    b_G = causal_decay(offs_t, mask_t, b_c)
    b_dA = (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT) + b_dd[:, None]) * b_G  # [BT (t), BT (j)]
    X_IS_TF32 = q.dtype.element_ty != tl.float32  # bf16/fp16: exact in tf32 (phases_t)
    mask_tk = mask_t[:, None] & mask_k[None, :]
    if tl.program_id(2) == 0:
        # -- the queries: dq ---------------------------------------------------------------------
        b_dec, p_h = chunk_state_in(c, c0, hs, i_t, i_bh, i_h, row0, b_c, mask_t, H, NT, R, BT)  # e^{c⁻−c_t}, hs[n]
        b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # dθ Ω, summed over frequencies (times s_u at the end)
        for i_m in range(tl.cdiv(M, BM)):
            offs_m, mask_m, b_rm, b_omega = omega_tile(omega, i_h, i_m, r_m, offs_k, mask_k, K, M, BM)
            b_cos_q, b_sin_q, b_cq, b_sq, b_cos_k, b_sin_k, b_wk, b_ck, b_sk = _grad_features(
                b_xqT, b_xkT, b_omega, b_rm, b_e, s_u, X_IS_TF32, FAST_TRIG)
            mask_S = mask_m[:, None] & mask_v[None, :]
            p_S = p_h + offs_m[:, None] * V + offs_v[None, :]
            b_Sc = tl.load(p_S, mask=mask_S, other=0.0).to(tl.float32)  # S⁻ at c⁻ (bf16: HALF_RECORDS)
            b_Ss = tl.load(p_S + M * V, mask=mask_S, other=0.0).to(tl.float32)
            b_zc = tl.load(p_h + 2 * M * V + offs_m, mask=mask_m, other=0.0).to(tl.float32)
            b_zs = tl.load(p_h + 2 * M * V + M + offs_m, mask=mask_m, other=0.0).to(tl.float32)
            b_dcq = tl.dot(b_ck, tl.trans(b_dA), input_precision=DOT) + b_dec[None, :] * (
                tl.dot(b_Sc, tl.trans(b_dn), input_precision=DOT) + b_zc[:, None] * b_dd[None, :])  # dφ̂(q)ᵀ
            b_dsq = tl.dot(b_sk, tl.trans(b_dA), input_precision=DOT) + b_dec[None, :] * (
                tl.dot(b_Ss, tl.trans(b_dn), input_precision=DOT) + b_zs[:, None] * b_dd[None, :])
            b_dth = (b_cos_q * b_dsq - b_sin_q * b_dcq) * b_rm[:, None]  # dθ_qᵀ [BM, BT]
            b_dq += tl.dot(tl.trans(b_dth), b_omega, input_precision=PHASE_PRECISION)
            if DOMEGA:
                tl.atomic_add(domega + (i_h * M + offs_m[:, None]) * K + offs_k[None, :],
                              s_u * tl.dot(b_dth, tl.trans(b_xqT), input_precision=PHASE_PRECISION),
                              mask=mask_m[:, None] & mask_k[None, :])
        tl.store(dq + p_t[:, None] * K + offs_k[None, :], s_u * b_dq, mask=mask_tk)
    else:
        # -- the keys and values: dk, dv, da -----------------------------------------------------
        p_dh = chunk_record(dhs, i_bh, i_t, NT, R)  # dS⁺ at the scale c_last of the chunk's last token
        _, b_gl = chunk_end(b_c, mask_t)  # e^{c_j − c_last} [BT]
        b_A = tl.zeros([BT, BT], dtype=tl.float32)  # Re(φ̂_t conj φ̂_j) e^{a_j − c_j}, summed over frequencies
        b_dk = tl.zeros([BT, BK], dtype=tl.float32)
        b_dv = tl.zeros([BT, BV], dtype=tl.float32)
        b_da = tl.zeros([BT], dtype=tl.float32)
        for i_m in range(tl.cdiv(M, BM)):
            offs_m, mask_m, b_rm, b_omega = omega_tile(omega, i_h, i_m, r_m, offs_k, mask_k, K, M, BM)
            b_cos_q, b_sin_q, b_cq, b_sq, b_cos_k, b_sin_k, b_wk, b_ck, b_sk = _grad_features(
                b_xqT, b_xkT, b_omega, b_rm, b_e, s_u, X_IS_TF32, FAST_TRIG)
            b_A += tl.dot(tl.trans(b_cq), b_ck, input_precision=DOT) + tl.dot(tl.trans(b_sq), b_sk,
                                                                             input_precision=DOT)
            mask_S = mask_m[:, None] & mask_v[None, :]
            p_S = p_dh + offs_m[:, None] * V + offs_v[None, :]
            b_dSc = tl.load(p_S, mask=mask_S, other=0.0)
            b_dSs = tl.load(p_S + M * V, mask=mask_S, other=0.0)
            b_dzc = tl.load(p_dh + 2 * M * V + offs_m, mask=mask_m, other=0.0)
            b_dzs = tl.load(p_dh + 2 * M * V + M + offs_m, mask=mask_m, other=0.0)
            b_dck = tl.dot(b_cq, b_dA, input_precision=DOT) + b_gl[None, :] * (
                tl.dot(b_dSc, tl.trans(b_v), input_precision=DOT) + b_dzc[:, None])  # dφ̂_k(k)ᵀ
            b_dsk = tl.dot(b_sq, b_dA, input_precision=DOT) + b_gl[None, :] * (
                tl.dot(b_dSs, tl.trans(b_v), input_precision=DOT) + b_dzs[:, None])
            b_dv += tl.dot(tl.trans(b_ck * b_gl[None, :]), b_dSc, input_precision=DOT)
            b_dv += tl.dot(tl.trans(b_sk * b_gl[None, :]), b_dSs, input_precision=DOT)
            b_da += tl.sum(b_dck * b_ck + b_dsk * b_sk, 0)  # φ̂_k ∝ e^{a_j}
            b_dth = (b_cos_k * b_dsk - b_sin_k * b_dck) * b_wk  # dθ_kᵀ [BM, BT]
            b_dk += tl.dot(tl.trans(b_dth), b_omega, input_precision=PHASE_PRECISION)
            if DOMEGA:
                tl.atomic_add(domega + (i_h * M + offs_m[:, None]) * K + offs_k[None, :],
                              s_u * tl.dot(b_dth, tl.trans(b_xkT), input_precision=PHASE_PRECISION),
                              mask=mask_m[:, None] & mask_k[None, :])
        b_dv += tl.dot(tl.trans(b_A * b_G), b_dn, input_precision=DOT)  # (3)'s intra-chunk values
        tl.store(dk + p_t[:, None] * K + offs_k[None, :], s_u * b_dk, mask=mask_tk)
        tl.store(dv + p_t[:, None] * V + offs_v[None, :], b_dv, mask=mask_t[:, None] & mask_v[None, :])
        tl.store(da + p_t, b_da, mask=mask_t)


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "HAS_DHT": lambda args: args["dht"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _hrc_la_chunk_bwd_kernel(
    q, k, v, omega, a, c, dnum, dden,  # inputs as in the forward; dnum [B, T, H, V], dden [B, T, H] fp32
    h0, z0, c0, dht, dzt,  # [B, H, 2M, V], [B, H, 2M], [B, H], [B, H, 2M, V], [B, H, 2M] (may be None)
    dq, dk, dv, da, domega, dh0, dz0,  # fp32: [B, T, H, K] ×2, [B, T, H, V], [B, T, H] zeroed; [B, H, M, K]; ...
    s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, DOT: tl.constexpr,
):
    """This tile's share of dq, dk, dv, da, and its rows of dΩ, dh0, dz0 (the card's two sweeps)."""
    # -- map the program, as in the forward ----------------------------------------------------------
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)
    b_domega = tl.zeros([BM, BK], dtype=tl.float32)
    NT = tl.cdiv(T, BT)
    p_Sc, p_zc, mask_S = state_ptrs(i_bh, offs_m, offs_v, mask_m, mask_v, 2 * M, V)  # rows [0, M): cos
    p_Ss, p_zs = p_Sc + M * V, p_zc + M  # rows [M, 2M): sin

    # -- sweep 1, forward in time: the state again, and dq ------------------------------------------
    b_Sc, b_zc = state_or_zeros(h0, z0, p_Sc, p_zc, mask_S, mask_m, HAS_H0, BM, BV)
    b_Ss, b_zs = state_or_zeros(h0, z0, p_Ss, p_zs, mask_S, mask_m, HAS_H0, BM, BV)
    b_c0 = tl.load(c0 + i_bh)
    b_crun = b_c0
    b_cT = tl.load(c + (row0 + T - 1) * H + i_h)  # the scale of the final state
    if not CAUSAL:
        b_dec = tl.exp(b_crun - b_cT)
        b_Sc, b_Ss, b_zc, b_zs = b_Sc * b_dec, b_Ss * b_dec, b_zc * b_dec, b_zs * b_dec
        for i_t in range(NT):
            offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
            b_w = tl.exp(tl.load(a + p_t, mask=mask_t, other=float("-inf")) - b_cT)
            b_ck, b_sk = _key_features(k, p_t, mask_t, offs_k, mask_k, b_omega, b_rm, b_w, s_u, K)
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            b_Sc += tl.dot(tl.trans(b_ck), b_v, input_precision=DOT)
            b_Ss += tl.dot(tl.trans(b_sk), b_v, input_precision=DOT)
            b_zc += tl.sum(b_ck, 0)
            b_zs += tl.sum(b_sk, 0)
    # the gradient of the state, for sweep 2 (non-causal: every query's, summed here)
    b_dSc, b_dzc = state_or_zeros(dht, dzt, p_Sc, p_zc, mask_S, mask_m, HAS_DHT, BM, BV)
    b_dSs, b_dzs = state_or_zeros(dht, dzt, p_Ss, p_zs, mask_S, mask_m, HAS_DHT, BM, BV)

    for i_t in range(NT):
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_uq, b_th = _phases(q, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
        b_cos, b_sin = tl.cos(b_th), tl.sin(b_th)
        b_cq, b_sq = b_cos * b_rm[None, :], b_sin * b_rm[None, :]
        b_dn = load_rows(dnum, p_t, mask_t, offs_v, mask_v, V)
        b_dd = tl.load(dden + p_t, mask=mask_t, other=0.0)
        if CAUSAL:
            b_c = tl.load(c + p_t, mask=mask_t, other=0.0)
            b_e = tl.exp(tl.load(a + p_t, mask=mask_t, other=float("-inf")) - b_c)
            b_ck, b_sk = _key_features(k, p_t, mask_t, offs_k, mask_k, b_omega, b_rm, b_e, s_u, K)
            b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
            b_G = causal_decay(offs_t, mask_t, b_c)
            b_dA = (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT) + b_dd[:, None]) * b_G  # (ĝ_t·ṽ_j) Γ_tj
            b_dec = tl.exp(tl.where(mask_t, b_crun - b_c, float("-inf")))
            b_dcq = tl.dot(b_dA, b_ck, input_precision=DOT) + b_dec[:, None] * (tl.dot(b_dn, tl.trans(b_Sc), input_precision=DOT) + b_dd[:, None] * b_zc[None, :])
            b_dsq = tl.dot(b_dA, b_sk, input_precision=DOT) + b_dec[:, None] * (tl.dot(b_dn, tl.trans(b_Ss), input_precision=DOT) + b_dd[:, None] * b_zs[None, :])
            b_clast, b_gl = chunk_end(b_c, mask_t)
            b_dS = tl.exp(b_crun - b_clast)
            b_Sc = b_Sc * b_dS + tl.dot(tl.trans(b_ck * b_gl[:, None]), b_v, input_precision=DOT)
            b_Ss = b_Ss * b_dS + tl.dot(tl.trans(b_sk * b_gl[:, None]), b_v, input_precision=DOT)
            b_zc = b_zc * b_dS + tl.sum(b_ck * b_gl[:, None], 0)
            b_zs = b_zs * b_dS + tl.sum(b_sk * b_gl[:, None], 0)
            b_crun = b_clast
        else:
            b_dcq = tl.dot(b_dn, tl.trans(b_Sc), input_precision=DOT) + b_dd[:, None] * b_zc[None, :]
            b_dsq = tl.dot(b_dn, tl.trans(b_Ss), input_precision=DOT) + b_dd[:, None] * b_zs[None, :]
            b_dSc += tl.dot(tl.trans(b_cq), b_dn, input_precision=DOT)  # Σ_t φ̂(q_t) dnum_tᵀ, at the final scale
            b_dSs += tl.dot(tl.trans(b_sq), b_dn, input_precision=DOT)
            b_dzc += tl.sum(b_cq * b_dd[:, None], 0)
            b_dzs += tl.sum(b_sq * b_dd[:, None], 0)
        # through φ̂(q) = (cos θ, sin θ)/√M and θ = u Ωᵀ
        b_dth = (b_cos * b_dsq - b_sin * b_dcq) * b_rm[None, :]  # [BT, BM]
        tl.atomic_add(dq + p_t[:, None] * K + offs_k[None, :], s_u * tl.dot(b_dth, b_omega, input_precision=PHASE_PRECISION),
                      mask=mask_t[:, None] & mask_k[None, :])
        b_domega += tl.dot(tl.trans(b_dth), b_uq, input_precision=PHASE_PRECISION)

    # -- sweep 2, backward in time: dk, dv, da (causal: dS carried at the chunk end's scale) -------
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        offs_t, mask_t, p_t = chunk_rows(i_t, row0, i_h, T, H, BT)
        b_uk, b_th = _phases(k, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
        b_cos, b_sin = tl.cos(b_th), tl.sin(b_th)
        b_v = load_rows(v, p_t, mask_t, offs_v, mask_v, V)
        b_a = tl.load(a + p_t, mask=mask_t, other=float("-inf"))
        if CAUSAL:
            b_c = tl.load(c + p_t, mask=mask_t, other=0.0)
            b_e = tl.exp(b_a - b_c)
            b_ck = b_cos * b_e[:, None] * b_rm[None, :]
            b_sk = b_sin * b_e[:, None] * b_rm[None, :]
            _, b_thq = _phases(q, p_t, mask_t, offs_k, mask_k, b_omega, s_u, K)
            b_cq, b_sq = tl.cos(b_thq) * b_rm[None, :], tl.sin(b_thq) * b_rm[None, :]
            b_dn = load_rows(dnum, p_t, mask_t, offs_v, mask_v, V)
            b_dd = tl.load(dden + p_t, mask=mask_t, other=0.0)
            b_G = causal_decay(offs_t, mask_t, b_c)
            b_dA = (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT) + b_dd[:, None]) * b_G
            b_A = (tl.dot(b_cq, tl.trans(b_ck), input_precision=DOT) + tl.dot(b_sq, tl.trans(b_sk), input_precision=DOT)) * b_G
            b_clast, b_gl = chunk_end(b_c, mask_t)  # keys' weight at the chunk end's scale
            b_dck = tl.dot(tl.trans(b_dA), b_cq, input_precision=DOT) + b_gl[:, None] * (tl.dot(b_v, tl.trans(b_dSc), input_precision=DOT) + b_dzc[None, :])
            b_dsk = tl.dot(tl.trans(b_dA), b_sq, input_precision=DOT) + b_gl[:, None] * (tl.dot(b_v, tl.trans(b_dSs), input_precision=DOT) + b_dzs[None, :])
            b_dv = tl.dot(tl.trans(b_A), b_dn, input_precision=DOT) + b_gl[:, None] * (tl.dot(b_ck, b_dSc, input_precision=DOT) + tl.dot(b_sk, b_dSs, input_precision=DOT))
            # carry dS to the scale of the previous chunk's end (c0 before the first chunk)
            p_prev = (row0 + tl.maximum(i_t * BT - 1, 0)) * H + i_h
            b_cprev = tl.where(i_t > 0, tl.load(c + p_prev), b_c0)
            b_gq = tl.exp(tl.where(mask_t, b_cprev - b_c, float("-inf")))
            b_dS = tl.exp(b_cprev - b_clast)
            b_dSc = b_dSc * b_dS + tl.dot(tl.trans(b_cq * b_gq[:, None]), b_dn, input_precision=DOT)
            b_dSs = b_dSs * b_dS + tl.dot(tl.trans(b_sq * b_gq[:, None]), b_dn, input_precision=DOT)
            b_dzc = b_dzc * b_dS + tl.sum(b_cq * (b_gq * b_dd)[:, None], 0)
            b_dzs = b_dzs * b_dS + tl.sum(b_sq * (b_gq * b_dd)[:, None], 0)
        else:
            b_e = tl.exp(b_a - b_cT)
            b_ck = b_cos * b_e[:, None] * b_rm[None, :]
            b_sk = b_sin * b_e[:, None] * b_rm[None, :]
            b_dck = tl.dot(b_v, tl.trans(b_dSc), input_precision=DOT) + b_dzc[None, :]
            b_dsk = tl.dot(b_v, tl.trans(b_dSs), input_precision=DOT) + b_dzs[None, :]
            b_dv = tl.dot(b_ck, b_dSc, input_precision=DOT) + tl.dot(b_sk, b_dSs, input_precision=DOT)
        # through φ_k = e^{a − c}(cos θ, sin θ)/√M: the weight gives da, the phases dθ
        b_dth = (b_cos * b_dsk - b_sin * b_dck) * b_e[:, None] * b_rm[None, :]
        tl.atomic_add(da + p_t, tl.sum(b_dck * b_ck + b_dsk * b_sk, 1), mask=mask_t)
        tl.atomic_add(dk + p_t[:, None] * K + offs_k[None, :], s_u * tl.dot(b_dth, b_omega, input_precision=PHASE_PRECISION),
                      mask=mask_t[:, None] & mask_k[None, :])
        tl.atomic_add(dv + p_t[:, None] * V + offs_v[None, :], b_dv, mask=mask_t[:, None] & mask_v[None, :])
        b_domega += tl.dot(tl.trans(b_dth), b_uk, input_precision=PHASE_PRECISION)

    # -- dΩ rows of this tile, and the initial state's gradient ------------------------------------
    tl.store(domega + (i_bh.to(tl.int64) * M + offs_m[:, None]) * K + offs_k[None, :], b_domega,
             mask=mask_m[:, None] & mask_k[None, :])
    if HAS_H0:
        if not CAUSAL:  # the initial state entered at weight e^{c0 − c_T}
            b_dec = tl.exp(b_c0 - b_cT)
            b_dSc, b_dSs, b_dzc, b_dzs = b_dSc * b_dec, b_dSs * b_dec, b_dzc * b_dec, b_dzs * b_dec
        store_state(dh0, dz0, p_Sc, p_zc, mask_S, mask_m, b_dSc, b_dzc)
        store_state(dh0, dz0, p_Ss, p_zs, mask_S, mask_m, b_dSs, b_dzs)


@triton.jit
def _hrc_la_recurrent_update(k, v, a, c, b_omega, b_rm, Sc, Ss, zc, zs, n, crun, p_t, s_u, offs_k, mask_k,
                             offs_v, mask_v, K: tl.constexpr, V: tl.constexpr):
    """(4) for one token: S = e^{c_{t−1}−c_t} S + e^{a_t−c_t} conj φ̂(k_t) v_tᵀ (as [cos, sin]); z, n likewise."""
    b_uk = s_u * tl.load(k + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_th = tl.sum(b_omega * b_uk[None, :], 1)  # θ = Ω u [BM]
    b_c = tl.load(c + p_t)
    b_dec = tl.exp(crun - b_c)
    b_w = tl.exp(tl.load(a + p_t) - b_c)  # e^{a_t − c_t} <= 1
    b_v = tl.load(v + p_t * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    b_ck, b_sk = tl.cos(b_th) * b_rm * b_w, tl.sin(b_th) * b_rm * b_w  # [BM]
    return (Sc * b_dec + b_ck[:, None] * b_v[None, :], Ss * b_dec + b_sk[:, None] * b_v[None, :],
            zc * b_dec + b_ck, zs * b_dec + b_sk, n * b_dec + b_w, b_c)


@triton.heuristics({
    "HAS_H0": lambda args: args["h0"] is not None,
    "STORE_HT": lambda args: args["ht"] is not None,
})
@triton.jit(do_not_specialize=["T"])
def _hrc_la_recurrent_fwd_kernel(
    q, k, v, omega, a, c, num, den, mass, h0, z0, n0, c0, ht, zt, nt,
    s_u, r_m, T, H, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    """Token by token (zoo (4)): c_t = max(c_{t−1}, a_t), S_t = e^{c_{t−1}−c_t} S_{t−1} + e^{a_t−c_t} φ̄_k v_tᵀ."""
    # -- map the program to a frequency tile of one (batch, head) ----------------------------------
    i_m, i_bh, i_h, row0, s_u, offs_k, offs_v, offs_m, mask_k, mask_v, mask_m, b_rm, b_omega = frequency_tile(
        omega, s_u, r_m, T, H, K, V, M, BK, BV, BM)  # b_rm = 0 on padding frequencies (θ = 0 there: cos = 1)
    first = i_m == 0

    # -- the state slice, fp32 ---------------------------------------------------------------------
    p_Sc, p_zc, mask_S, b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun = _initial_state(
        h0, z0, n0, c0, i_bh, offs_m, offs_v, mask_m, mask_v, HAS_H0, M, V, BM, BV)  # b_crun: the state's scale
    p_Ss, p_zs = p_Sc + M * V, p_zc + M  # rows [M, 2M): sin

    # -- non-causal: a first loop builds the state from every key ----------------------------------
    if not CAUSAL:
        for t in range(T):
            b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun = _hrc_la_recurrent_update(
                k, v, a, c, b_omega, b_rm, b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun, (row0 + t) * H + i_h, s_u,
                offs_k, mask_k, offs_v, mask_v, K, V)

    # -- the token loop ----------------------------------------------------------------------------
    for t in range(T):
        p_t = (row0 + t) * H + i_h
        if CAUSAL:
            b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun = _hrc_la_recurrent_update(
                k, v, a, c, b_omega, b_rm, b_Sc, b_Ss, b_zc, b_zs, b_n, b_crun, p_t, s_u,
                offs_k, mask_k, offs_v, mask_v, K, V)
        b_uq = s_u * tl.load(q + p_t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        b_th = tl.sum(b_omega * b_uq[None, :], 1)
        b_cq, b_sq = tl.cos(b_th) * b_rm, tl.sin(b_th) * b_rm
        b_o = tl.sum(b_cq[:, None] * b_Sc + b_sq[:, None] * b_Ss, 0)  # (4) Re(φ̂ᵀS) [BV]
        b_d = tl.sum(b_cq * b_zc + b_sq * b_zs, 0)
        tl.atomic_add(num + p_t * V + offs_v, b_o, mask=mask_v)
        tl.atomic_add(den + p_t, b_d)
        if first:
            tl.store(mass + p_t, b_n)

    # -- the final state ---------------------------------------------------------------------------
    if STORE_HT:
        store_state(ht, zt, p_Sc, p_zc, mask_S, mask_m, b_Sc, b_zc)
        store_state(ht, zt, p_Ss, p_zs, mask_S, mask_m, b_Ss, b_zs)
        if first:
            tl.store(nt + i_bh, b_n)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def _stabiliser(k, s_u, c0, causal):
    """(2) a_t = ‖u_t‖²/2 [B, T, H] and c_t, its prefix max (the global max when non-causal) and at
    least c0, in fp32: the serial kernels' inputs (the chunk-parallel walk computes both on chip)."""
    a = (0.5 * s_u * s_u) * k.float().square().sum(-1)
    return a, _rf.running_scale(a, c0, causal)


def _launch_fwd(q, k, v, omega, h0, z0, n0, c0, s_u, eps, causal, output_final_state, chunk_size):
    """o [B, T, H, V] in v's dtype; den, mass, the stabiliser's a and c [B, T, H] (fp32); the final
    state (ht, zt, nt) or Nones."""
    if causal and chunk_size is not None and CHUNK_PARALLEL:
        return _launch_parallel_fwd(q, k, v, omega, h0, z0, n0, c0, s_u, eps, output_final_state)
    a, c = _stabiliser(k, s_u, c0, causal)
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    tiles = _tile_rule(K, V, M)
    atomic = triton.cdiv(M, tiles[2]) > 1 or chunk_size is None  # the recurrent kernel always adds
    f32 = dict(device=q.device, dtype=torch.float32)
    alloc = torch.zeros if atomic else torch.empty
    num, den, mass = alloc(B, T, H, V, **f32), alloc(B, T, H, **f32), torch.empty(B, T, H, **f32)
    ht = torch.empty(B, H, 2 * M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, 2 * M, **f32) if output_final_state else None
    nt = torch.empty(B, H, **f32) if output_final_state else None
    args = (q, k, v, omega, a, c, num, den, mass, h0, z0, n0, c0, ht, zt, nt, s_u, M ** -0.5, T, H)
    _rf.launch_fwd(_hrc_la_chunk_fwd_kernel, _hrc_la_recurrent_fwd_kernel, args, q, V, M, tiles, atomic, causal,
                   chunk_size)
    return _rf.divide(num, den, eps * mass, v.dtype), den, mass, a, c, ht, zt, nt


def _parallel_tiles(K: int, V: int, M: int, fp32: bool = False):
    """(BT, BK, BV, (BM, num_warps, num_stages) of the state walk, (BM, num_warps, num_stages) of
    phase 3) of the chunk-parallel causal forward, from the head dims, M and whether the inputs are
    fp32 (nothing keyed on T or B): see the card. The walk's BM and phase 3's tile come from
    WALK_TILE and OUT_TILE (BM capped by M's power of two; stepped down where shared memory needs it)."""
    return _rf.parallel_tiles(K, V, M, PARALLEL_BT, WALK_TILE, OUT_TILE, fp32)


def _walk_segments(programs: int, NT: int, device: torch.device) -> int:
    """NS, the segments of the state walk: as many as fill the GPU's WALK_SLOTS_PER_SM programs an SM
    (floor: no split while B·H·tiles programs fill it), at most one a chunk; WALK_SEGMENTS forces
    it. A run-time number (grid and loop bounds): no rebuild whatever B or T."""
    if WALK_SEGMENTS is not None:
        return max(1, min(WALK_SEGMENTS, NT))
    if device.type != "cuda":
        return 1
    slots = WALK_SLOTS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(slots // programs, NT))


def _launch_walk(k, v, omega, hs, cs, h0, z0, n0, c0, ht, zt, nt, s_u, T, NT, R, BT, BK, BV, tile, dot):
    """The state walk (the card's plan), split into segments when B·H leaves the GPU half idle: pass 1
    (LOCAL) the segments' own states into ls, lc, then pass 2 every segment's records."""
    B, _, H, K = k.shape
    V, M = v.shape[-1], omega.shape[1]
    BM, warps, stages = tile
    grid = (triton.cdiv(M, BM), B * H)
    NS = _walk_segments(grid[0] * grid[1], NT, k.device)
    SEG = triton.cdiv(NT, NS)
    NS = triton.cdiv(NT, SEG)  # no empty segment
    ls, lc = cs, cs  # unread when NS = 1 (the same pointer types: the same compiled pass 2)
    if NS > 1:
        ls, lc = k.new_empty(B, H, NS, R, dtype=torch.float32), k.new_empty(B, H, NS, dtype=torch.float32)
    for local in ((True, False) if NS > 1 else (False,)):
        launch(_hrc_la_chunk_h_kernel, (*grid, NS - 1 if local else NS),
               k, v, omega, hs, cs, h0, z0, n0, c0, ht, zt, nt, ls, lc, s_u, M ** -0.5, T, H, NT, SEG, NS, K=K, V=V,
               M=M, R=R, BT=BT, BK=BK, BV=BV, BM=BM, LOCAL=local, FAST_TRIG=FAST_TRIG, DOT=dot, num_warps=warps,
               num_stages=stages)


def _launch_parallel_fwd(q, k, v, omega, h0, z0, n0, c0, s_u, eps, output_final_state):
    """The causal forward in two launches (the card's plan): the state walk writes each chunk's
    starting state, then every chunk's outputs. Returns what _launch_fwd returns."""
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    BT, BK, BV, walk_tile, (BMo, warps_o, stages_o) = _parallel_tiles(K, V, M, q.dtype == torch.float32)
    NT, R = triton.cdiv(T, BT), 2 * M * V + 2 * M + 1  # a chunk's record: S_c, S_s, z_c, z_s, n
    f32 = dict(device=q.device, dtype=torch.float32)
    half = HALF_RECORDS and q.dtype != torch.float32
    hs = torch.empty(B, H, NT, R, device=q.device, dtype=torch.bfloat16 if half else torch.float32)
    o, den, mass = v.new_empty(B, T, H, V), torch.empty(B, T, H, **f32), torch.empty(B, T, H, **f32)
    a, c = torch.empty(B, T, H, **f32), torch.empty(B, T, H, **f32)  # written by phase 3
    cs = torch.empty(B, H, NT, **f32)  # each record's scale c⁻, written by the walk
    ht = torch.empty(B, H, 2 * M, V, **f32) if output_final_state else None
    zt = torch.empty(B, H, 2 * M, **f32) if output_final_state else None
    nt = torch.empty(B, H, **f32) if output_final_state else None
    r_m, dot = M ** -0.5, _rf.dot_precision(q)
    dots16 = FEATURE_DOTS_16 and q.dtype != torch.float32
    _launch_walk(k, v, omega, hs, cs, h0, z0, n0, c0, ht, zt, nt, s_u, T, NT, R, BT, BK, BV, walk_tile, dot)
    launch(_hrc_la_chunk_out_kernel, (NT, B * H),
           q, k, v, omega, hs, cs, o, den, mass, a, c, s_u, eps, r_m, T, H, NT, K=K, V=V, M=M, R=R, BT=BT, BK=BK,
           BV=BV, BM=BMo, DOT=dot, FAST_TRIG=FAST_TRIG, DOTS_16=dots16, num_warps=warps_o, num_stages=stages_o)
    return o, den, mass, a, c, ht, zt, nt


def _launch_parallel_bwd(dnum, dden, dht, dzt, q, k, v, omega, a, c, h0, z0, c0, s_u, need_domega):
    """The causal backward in three launches (the card's plan): the forward's state walk again (the
    records hs), the reverse walk (the records dhs and dh0, dz0), then every chunk's gradients.
    Returns what _launch_bwd returns (dΩ zeros when not need_domega)."""
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    fp32 = q.dtype == torch.float32
    BT, BK, BV, walk_tile, (BMg, warps_g, stages_g) = _rf.parallel_tiles(K, V, M, PARALLEL_BT, WALK_TILE, BWD_TILE,
                                                                         fp32, backward=True)
    _, _, _, (BMd, warps_d, stages_d), _ = _rf.parallel_tiles(K, V, M, PARALLEL_BT, DWALK_TILE, BWD_TILE, fp32,
                                                              backward=True)
    NT, R = triton.cdiv(T, BT), 2 * M * V + 2 * M + 1
    f32 = dict(device=q.device, dtype=torch.float32)
    half = HALF_RECORDS and q.dtype != torch.float32
    hs = torch.empty(B, H, NT, R, device=q.device, dtype=torch.bfloat16 if half else torch.float32)
    dhs = torch.empty(B, H, NT, R, **f32)
    n0 = torch.zeros(B, H, **f32) if h0 is not None else None  # the records' mass: unread here
    r_m, dot = M ** -0.5, _rf.dot_precision(q)
    cs = torch.empty(B, H, NT, **f32)  # unread here: the gradient kernels take c from the forward
    _launch_walk(k, v, omega, hs, cs, h0, z0, n0, c0, None, None, None, s_u, T, NT, R, BT, BK, BV, walk_tile, dot)
    dh0 = torch.empty(B, H, 2 * M, V, **f32) if h0 is not None else None
    dz0 = torch.empty(B, H, 2 * M, **f32) if h0 is not None else None
    launch(_hrc_la_chunk_dh_kernel, (triton.cdiv(M, BMd), B * H),
           q, c, c0, dnum, dden, dht, dzt, dhs, dh0, dz0, omega, s_u, r_m, T, H, NT, K=K, V=V, M=M, R=R, BT=BT, BK=BK,
           BV=BV, BM=BMd, FAST_TRIG=FAST_TRIG, DOT=dot, num_warps=warps_d, num_stages=stages_d)
    dq, dk = torch.empty(B, T, H, K, **f32), torch.empty(B, T, H, K, **f32)
    dv, da = torch.empty(B, T, H, V, **f32), torch.empty(B, T, H, **f32)
    domega = torch.zeros(H, M, K, **f32)
    launch(_hrc_la_chunk_grad_kernel, (NT, B * H, 2),
           q, k, v, omega, a, c, c0, hs, dhs, dnum, dden, dq, dk, dv, da, domega, s_u, r_m, T, H, NT, K=K, V=V, M=M,
           R=R, BT=BT, BK=BK, BV=BV, BM=BMg, DOT=dot, FAST_TRIG=FAST_TRIG, DOMEGA=need_domega, num_warps=warps_g,
           num_stages=stages_g)
    return dq, dk, dv, da, domega, dh0, dz0


def _first_call_plan(q, v, omega, h0, s_u, output_final_state, need_domega):
    """{key: dry run} of the causal chunk-parallel forward and backward (fast/_compile.py): their four
    kernels' variants compile side by side on the first call, not one after another at their launches
    (H100, run 30: fwd + bwd first call 7.0 s, compiles 0.7 + 1.6 + 0.7 + 2.4 s in series). The dry
    run is the two launchers on one chunk of zeros with the call's dtype, head dims, Ω and flags; the
    final state's cotangent is guessed present when the final state is returned."""
    H, K, V, M = q.shape[2], q.shape[3], v.shape[3], omega.shape[1]
    key = ("hrc_la", q.dtype, q.device, H, K, V, M, h0 is None, output_final_state, need_domega, FAST_TRIG,
           FEATURE_DOTS_16, HALF_RECORDS, PARALLEL_BT, WALK_TILE, OUT_TILE, DWALK_TILE, BWD_TILE)

    def dry():
        f32 = lambda *shape: q.new_zeros(*shape, dtype=torch.float32)  # noqa: E731
        x, xv = q.new_zeros(1, PARALLEL_BT, H, K), q.new_zeros(1, PARALLEL_BT, H, V)
        c0 = f32(1, H)
        h0t, z0t, n0t = (f32(1, H, 2 * M, V), f32(1, H, 2 * M), f32(1, H)) if h0 is not None else (None,) * 3
        _, _, _, a, c, *_ = _launch_parallel_fwd(x, x, xv, omega, h0t, z0t, n0t, c0, s_u, EPS_DENOMINATOR,
                                                 output_final_state)
        dht, dzt = (f32(1, H, 2 * M, V), f32(1, H, 2 * M)) if output_final_state else (None, None)
        _launch_parallel_bwd(f32(1, PARALLEL_BT, H, V), f32(1, PARALLEL_BT, H), dht, dzt, x, x, xv, omega, a, c,
                             h0t, z0t, c0, s_u, need_domega)
    return {key: dry}


def _launch_bwd(dnum, dden, dht, dzt, q, k, v, omega, a, c, h0, z0, c0, s_u, causal, chunk_size, need_domega=True):
    if causal and CHUNK_PARALLEL and PARALLEL_BWD:
        return _launch_parallel_bwd(dnum, dden, dht, dzt, q, k, v, omega, a, c, h0, z0, c0, s_u, need_domega)
    B, T, H, K = q.shape
    V, M = v.shape[-1], omega.shape[1]
    f32 = dict(device=q.device, dtype=torch.float32)
    dq, dk = torch.zeros(B, T, H, K, **f32), torch.zeros(B, T, H, K, **f32)
    dv, da = torch.zeros(B, T, H, V, **f32), torch.zeros(B, T, H, **f32)
    domega = torch.empty(B, H, M, K, **f32)
    dh0 = torch.empty(B, H, 2 * M, V, **f32) if h0 is not None else None
    dz0 = torch.empty(B, H, 2 * M, **f32) if h0 is not None else None
    args = (q, k, v, omega, a, c, dnum, dden, h0, z0, c0, dht, dzt, dq, dk, dv, da, domega, dh0, dz0,
            s_u, M ** -0.5, T, H)
    _rf.launch_bwd(_hrc_la_chunk_bwd_kernel, args, q, V, M, _tile_rule(K, V, M), causal, chunk_size)
    return dq, dk, dv, da, domega.sum(0), dh0, dz0


# ------------------------------------------------------------------------------------------------
# Custom ops: what torch.compile(fullgraph=True) sees (the kernels stay opaque to it)
# ------------------------------------------------------------------------------------------------
def _fwd_like(q, v, omega, output_final_state):
    B, T, H, _ = q.shape
    V, M = v.shape[-1], omega.shape[1]
    f32 = dict(dtype=torch.float32)
    e = q.new_empty(0, **f32)
    st = (q.new_empty(B, H, 2 * M, V, **f32), q.new_empty(B, H, 2 * M, **f32), q.new_empty(B, H, **f32))
    return (v.new_empty(B, T, H, V), *(q.new_empty(B, T, H, **f32) for _ in range(4)),
            *(st if output_final_state else (e, e, e)))


# outputs: o, den, mass, a, c, then the final state (ht, zt, nt) or empties
_FWD_SIG = ("(Tensor q, Tensor k, Tensor v, Tensor omega, Tensor? h0, Tensor? z0, Tensor? n0, Tensor c0, float s_u, "
            "float eps, bool causal, bool output_final_state, int chunk_size) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("zoo::hrc_la_chunk_bwd", mutates_args=())
def _chunk_bwd_op(dnum: torch.Tensor, dden: torch.Tensor, dht: torch.Tensor | None, dzt: torch.Tensor | None,
                  dnt: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor,
                  a: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None, z0: torch.Tensor | None,
                  c0: torch.Tensor, s_u: float, causal: bool, chunk_size: int,
                  need_domega: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor]:
    dnum, dden, dht, dzt, h0, z0 = _rf.contig(dnum, dden, dht, dzt, h0, z0)
    q, k, v, omega, a, c, c0 = _rf.contig(q, k, v, omega, a, c, c0)  # saved inputs may be views (an expanded Ω)
    dq, dk, dv, da, domega, dh0, dz0 = _launch_bwd(dnum, dden, dht, dzt, q, k, v, omega, a, c, h0, z0, c0, s_u,
                                                   causal, chunk_size, need_domega)
    if dnt is not None:  # the final mass n_T = n0·e^{c0 − c_T} + Σ_j e^{a_j − c_T}
        da += dnt[:, None] * torch.exp(a - c[:, -1:])
    dk += (s_u * s_u) * da[..., None] * k.float()  # (2) a_j = ‖s_u·k_j‖²/2: the stabiliser's path to k
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), domega.to(omega.dtype), _rf.or_empty(dh0, a),
            _rf.or_empty(dz0, a))


@_chunk_bwd_op.register_fake
def _(dnum, dden, dht, dzt, dnt, q, k, v, omega, a, c, h0, z0, c0, s_u, causal, chunk_size, need_domega):
    e = a.new_empty(0)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(omega),
            e if h0 is None else torch.empty_like(h0), e if z0 is None else torch.empty_like(z0))


def _setup_context(ctx, inputs, output):
    q, k, v, omega, h0, z0, n0, c0, s_u, eps, causal, _, chunk_size = inputs
    ctx.save_for_backward(q, k, v, omega, h0, z0, c0, *output[:5])  # o, den, mass, a, c
    ctx.opts = (s_u, eps, causal, chunk_size if chunk_size > 0 else 64, n0 is not None)


def _backward(ctx, do, dden, dmass, da, dc, dht, dzt, dnt):
    """The op's outputs a and c (the stabiliser) and mass carry no gradient of their own: the zoo
    detaches c and the floor, and a reaches k inside the backward op."""
    q, k, v, omega, h0, z0, c0, o, den, mass, a, c = ctx.saved_tensors
    s_u, eps, causal, chunk_size, has_n0 = ctx.opts
    # The state is (S, z, n): a half without a cotangent gets zeros; n's cotangent is added in the op.
    dht, dzt = _rf.state_cotangents(dht, dzt, q, 2 * omega.shape[1], v.shape[-1])
    dnum, dden = _rf.output_cotangents(do, dden, o, den, eps * mass, v.shape[-1])  # (3) backwards, the floor constant
    need_domega = ctx.needs_input_grad[3]  # Ω: a fixed buffer unless learnable_omega (then dΩ's atomics run)
    dnt = _rf.or_none(dnt)
    dq, dk, dv, domega, dh0, dz0 = torch.ops.zoo.hrc_la_chunk_bwd(
        dnum, dden, dht, dzt, dnt, q, k, v, omega, a, c, h0, z0, c0, s_u, causal, chunk_size, need_domega)
    dn0 = dnt * torch.exp(c0 - c[:, -1]) if dnt is not None and has_n0 else None
    return (dq, dk, dv, domega if need_domega else None, _rf.or_none(dh0), _rf.or_none(dz0), dn0, None, None, None,
            None, None, None)


_chunk_fwd_op, _recurrent_fwd_op = _rf.register_fwd_ops(
    "hrc_la", _FWD_SIG, _launch_fwd, lambda *args: _fwd_like(args[0], args[2], args[3], args[-2]), _setup_context,
    _backward)


# ------------------------------------------------------------------------------------------------
# Public ops: the zoo's names and signatures
# ------------------------------------------------------------------------------------------------
def _check_fast(q, k, v, omega, initial_state, chunk_size=None):
    """The zoo's checks, then what the kernels add."""
    _check_inputs(q, k, v, omega, initial_state, chunk_size)
    _rf.check_kernel_inputs("hrc_la", q, v, chunk_size, INTERPRET)


def _run(op, q, k, v, omega, scale, causal, eps, initial_state, output_final_state, chunk_size):
    B, T, H, K = q.shape
    M = omega.shape[1]
    scale = K ** -0.5 if scale is None else scale
    s_u = scale ** 0.5
    omega32 = omega.float()
    if initial_state is None:
        h0 = z0 = n0 = None
        c0 = q.new_full((B, H), EMPTY_SCALE, dtype=torch.float32)
    else:
        S0, z0c, n0, c0 = initial_state
        h0 = torch.cat([S0.real, -S0.imag], dim=2).float()  # [B, H, 2M, V]: S = S_c − i·S_s
        z0 = torch.cat([z0c.real, -z0c.imag], dim=2).float()
        n0, c0 = n0.float(), c0.detach().float()
    ins = (q, k, v, omega, *(initial_state or ()))
    grad = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in ins)
    if (grad and causal and chunk_size and CHUNK_PARALLEL and PARALLEL_BWD and not torch.compiler.is_compiling()):
        precompile(_first_call_plan(q, v, omega32, h0, float(s_u), output_final_state, omega.requires_grad))
    # (3) o = num / max(den, eps·n) and (2) the stabiliser's a, c [B, T, H] come out of the op
    o, _, _, _, c, ht, zt, nt = op(q, k, v, omega32, h0, z0, n0, c0, float(s_u), float(eps), causal,
                                   output_final_state, chunk_size)
    if not output_final_state:
        return o, None
    S = torch.complex(ht[:, :, :M], -ht[:, :, M:])  # back to the zoo's complex state
    z = torch.complex(zt[:, :, :M], -zt[:, :, M:])
    return o, (S, z, nt, c[:, -1])


def hrc_la_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                 scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR, initial_state=None,
                 output_final_state: bool = False, chunk_size: int = 64):
    """zoo.hrc_la.hrc_la_chunk in Triton, forward and backward, feature map fused. Returns
    (o [B, T, H, V] in v's dtype, final_state (S, z, n, c) in complex64/float32, or None)."""
    _check_fast(q, k, v, omega, initial_state, chunk_size)
    return _run(torch.ops.zoo.hrc_la_chunk_fwd, q, k, v, omega, scale, causal, eps, initial_state,
                output_final_state, chunk_size)


def hrc_la_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                     scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                     initial_state=None, output_final_state: bool = False):
    """zoo.hrc_la.hrc_la_recurrent in Triton: a token loop for decoding (forward kernel; its
    gradient runs the chunk backward). Returns (o, final_state or None)."""
    _check_fast(q, k, v, omega, initial_state)
    return _run(torch.ops.zoo.hrc_la_recurrent_fwd, q, k, v, omega, scale, causal, eps, initial_state,
                output_final_state, 0)


# ------------------------------------------------------------------------------------------------
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ------------------------------------------------------------------------------------------------
class HRCMultiheadAttention(_ZooLayer):
    """zoo.hrc_la.HRCMultiheadAttention running the Triton chunk and recurrent ops
    (form="parallel" keeps the zoo's parallel form: there is no kernel for the oracle)."""

    chunk_op = staticmethod(hrc_la_chunk)
    recurrent_op = staticmethod(hrc_la_recurrent)


__all__ = ["hrc_la_chunk", "hrc_la_recurrent", "HRCMultiheadAttention", "orthogonal_random_features",
           "hrc_feature_map"]
orthogonal_random_features = zhrc.orthogonal_random_features
hrc_feature_map = zhrc.hrc_feature_map
