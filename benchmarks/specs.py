"""The method table of `python -m benchmarks`: one `MethodSpec` per zoo method.

Adding a method is one entry in this file (or, for a prototype, in a module named by the
environment variable BENCH_EXTRA_SPECS, which must hold a list `SPECS`). An entry says:

- `name`: the zoo file's name; the harness imports `zoo.<name>` and `fast.<name>`.
- `chunk_op` / `reference_op`: the op that is timed (zoo eager, zoo under torch.compile, and
  the fast mirror of the same name) and the float64 oracle `err` is measured against.
- `make_inputs(B, T, H, D, dtype, device, causal, seed) -> {name: tensor}`: fresh random
  inputs, never zeros, in the zoo's [B, T, H, D] layout (per-token scalars [B, T, H]).
  `grad_inputs` names the ones that get gradients in the fwd+bwd timing.
- `call(op, inputs, causal) -> o`: how to call any form of this method (they share one
  signature) and pick the output to time and compare (the first element of `(o, state)`).
- `flops(B, T, H, D, causal, direction)` and `bytes(B, T, H, D, causal, direction, elt)`:
  the work and the minimum traffic (each input read once, each output written once) of one
  call, for TFLOP/s and the roofline floor. Say in a comment what is counted.
- optional: `causal_modes` (the modes the method has), `fla` (flash-linear-attention's op for
  the same function, imported lazily), `sdpa_same_function` (SDPA computes exactly this method,
  so its `err` means something; otherwise SDPA is only the speed bar), `approximates_softmax`
  (also report `err_vs_softmax`), `variant` (options fixed for the benchmark, shown in every
  record), `skip(impl, B, T, H, D, causal, device_type) -> reason or None`.

The pattern for a new method, e.g. DeltaNet (q, k L2-normalised, beta in (0, 1)):

    def _deltanet_inputs(B, T, H, D, dtype, device, causal, seed):
        g = generator(device, seed)
        q, k, v = (randn(g, (B, T, H, D), dtype, device) for _ in range(3))
        q, k = (F.normalize(x.float(), dim=-1).to(dtype) for x in (q, k))
        beta = torch.rand(B, T, H, generator=g, device=device).to(dtype)
        return {"q": q, "k": k, "v": v, "beta": beta}

    SPECS.append(MethodSpec(
        name="deltanet", chunk_op="deltanet_chunk", reference_op="deltanet_parallel",
        make_inputs=_deltanet_inputs,
        call=lambda op, x, causal: op(x["q"], x["k"], x["v"], x["beta"])[0],
        grad_inputs=("q", "k", "v", "beta"), causal_modes=(True,),
        flops=lambda B, T, H, D, causal, d: ..., bytes=lambda B, T, H, D, causal, d, elt: ...,
        fla=FlaRef("fla.ops.delta_rule", "chunk_delta_rule",
                   lambda fn, x, causal: fn(x["q"], x["k"], x["v"], x["beta"])[0]),
    ))
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable

import torch
import torch.nn.functional as F

DIRECTIONS = ("fwd", "fwdbwd")


@dataclasses.dataclass(frozen=True)
class FlaRef:
    """flash-linear-attention's op for the same function: `fla` imported lazily by the harness."""

    module: str  # e.g. "fla.ops.linear_attn"
    op: str  # e.g. "chunk_linear_attn"
    call: Callable  # (fla_fn, inputs, causal) -> o
    causal_only: bool = True  # fla's chunk ops are causal only


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    chunk_op: str
    reference_op: str
    make_inputs: Callable
    call: Callable
    flops: Callable
    bytes: Callable
    grad_inputs: tuple[str, ...] = ("q", "k", "v")
    causal_modes: tuple[bool, ...] = (True, False)
    fla: FlaRef | None = None
    sdpa_same_function: bool = False
    approximates_softmax: bool = False
    variant: str = ""
    skip: Callable | None = None
    zoo_module: str | None = None  # default "zoo.<name>"
    fast_module: str | None = None  # default "fast.<name>"
    independent_heads: bool = True  # batch rows and heads never mix: `err` may use a slice

    @property
    def zoo_path(self) -> str:
        return self.zoo_module or f"zoo.{self.name}"

    @property
    def fast_path(self) -> str:
        return self.fast_module or f"fast.{self.name}"


# ------------------------------------------------------------------------------------------------
# Shared helpers for entries
# ------------------------------------------------------------------------------------------------
def generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def randn(g: torch.Generator, size, dtype, device) -> torch.Tensor:
    """Standard normal values drawn in fp32 on `device`, then rounded to `dtype`."""
    return torch.randn(*size, generator=g, device=device, dtype=torch.float32).to(dtype)


def qkv_inputs(B, T, H, D, dtype, device, causal, seed):
    """q, k, v ~ N(0, 1), [B, T, H, D] each."""
    g = generator(device, seed)
    return {name: randn(g, (B, T, H, D), dtype, device) for name in ("q", "k", "v")}


def stream_bytes(B, T, H, D, elt, tensors: int) -> float:
    """Bytes moved by reading or writing `tensors` arrays of [B, T, H, D] once."""
    return float(tensors) * B * T * H * D * elt


# Minimum traffic shared by q, k, v -> o methods: forward reads q, k, v and writes o (4 arrays);
# forward + backward reads q, k, v, do and writes o, dq, dk, dv (8 arrays). Anything an
# implementation keeps between the passes (lse, chunk states) is extra and not counted.
def qkv_o_bytes(B, T, H, D, causal, direction, elt) -> float:
    return stream_bytes(B, T, H, D, elt, 4 if direction == "fwd" else 8)


# ------------------------------------------------------------------------------------------------
# softmax_attention: exact attention, the reference every approximation is measured against
# ------------------------------------------------------------------------------------------------
# Forward: two matmuls of [T, D] x [D, T] size (S = q kᵀ, o = P v): 4·T²·D per head, half of it
# when causal (the FlashAttention papers' count). Forward + backward: the backward recomputes P
# and runs five matmuls, counted as 2.5 × the forward (FlashAttention's convention), so 3.5 ×.
def softmax_flops(B, T, H, D, causal, direction) -> float:
    fwd = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
    return fwd if direction == "fwd" else 3.5 * fwd


# The zoo chunk form loops over key blocks in Python; torch.compile unrolls that loop, so its graph
# (and compile time, forward and backward) grows with T / L. Beyond this many blocks compiling
# takes minutes: those rows say so instead.
SOFTMAX_COMPILE_MAX_BLOCKS = 16
SOFTMAX_CHUNK = 64  # the zoo's default chunk_size


def softmax_skip(impl, B, T, H, D, causal, device_type):
    blocks = -(-T // SOFTMAX_CHUNK)
    if impl == "zoo-compile" and blocks > SOFTMAX_COMPILE_MAX_BLOCKS:
        return (f"not compiled: the chunk form's Python loop unrolls {blocks} key blocks "
                f"(> {SOFTMAX_COMPILE_MAX_BLOCKS}); compile time grows with T")
    return None


SOFTMAX_ATTENTION = MethodSpec(
    name="softmax_attention",
    chunk_op="softmax_attention_chunk",
    reference_op="softmax_attention_parallel",
    make_inputs=qkv_inputs,
    call=lambda op, x, causal: op(x["q"], x["k"], x["v"], causal=causal),
    flops=softmax_flops,
    bytes=qkv_o_bytes,
    sdpa_same_function=True,
    skip=softmax_skip,
)


# ------------------------------------------------------------------------------------------------
# linear_attention: Katharopoulos et al. 2020, un-normalised (normalize=False) for the headline
# comparison with fla's chunk_linear_attn(..., normalize=False), which computes the same function
# on the same q, k, v and scale.
# ------------------------------------------------------------------------------------------------
LINEAR_CHUNK = 64  # the zoo's default chunk length L; the FLOP count below is the chunk algorithm's


def linear_inputs(B, T, H, D, dtype, device, causal, seed):
    """q, k already feature-mapped, as the ops take them (φ(x) = elu(x) + 1 > 0, what the layer
    applies); v ~ N(0, 1)."""
    g = generator(device, seed)
    q, k, v = (randn(g, (B, T, H, D), torch.float32, device) for _ in range(3))
    return {"q": (F.elu(q) + 1).to(dtype), "k": (F.elu(k) + 1).to(dtype), "v": v.to(dtype)}


# Forward, per head, chunk length L: inter-chunk q S and state update kᵀ v, 2·T·D² each; causal
# adds the intra-chunk q kᵀ and A v on full L × L tiles, 2·T·L·D each. Non-causal is q (kᵀ v):
# 4·T·D². Backward: each matmul has two input gradients, counted as 2 × the forward.
def linear_flops(B, T, H, D, causal, direction) -> float:
    per_head = 4.0 * T * D * D + (4.0 * T * LINEAR_CHUNK * D if causal else 0.0)
    fwd = B * H * per_head
    return fwd if direction == "fwd" else 3.0 * fwd


def _fla_linear(fn, x, causal):
    return fn(x["q"], x["k"], x["v"], scale=x["q"].shape[-1] ** -0.5, normalize=False)[0]


LINEAR_ATTENTION = MethodSpec(
    name="linear_attention",
    chunk_op="linear_attention_chunk",
    reference_op="linear_attention_parallel",
    make_inputs=linear_inputs,
    call=lambda op, x, causal: op(x["q"], x["k"], x["v"], causal=causal, normalize=False)[0],
    flops=linear_flops,
    bytes=qkv_o_bytes,
    fla=FlaRef("fla.ops.linear_attn", "chunk_linear_attn", _fla_linear, causal_only=True),
    variant="normalize=False",
)


# ------------------------------------------------------------------------------------------------
# The delta-rule family (issue 3): deltanet, gated_deltanet, deltaproduct. Inputs as the layers
# hand them to the ops: q, k L2-normalised, β = σ(·) ∈ (0, 1) (DeltaProduct: 2σ(·) ∈ (0, 2), fla's
# allow_neg_eigval default), log decay g ≤ 0 in fp32 (as the layers compute it; fla's tests draw
# logsigmoid(U(0, 1)) ∈ [−0.69, −0.31]). fla's ops get the same tensors.
# ------------------------------------------------------------------------------------------------
DELTA_CHUNK = 64  # the zoo's default chunk length L (micro-steps for DeltaProduct)
DELTA_HOUSEHOLDER = 2  # n_h of the DeltaProduct rows: 2·T micro-steps for T tokens
# torch.compile unrolls the zoo chunk form's Python loop over chunks; beyond this many chunks per
# micro-step of a token (T = 1024 at L = 64) its compile, forward and backward, takes minutes of
# the GPU run's budget: those rows say so instead.
DELTA_COMPILE_MAX_CHUNKS = 16


def _delta_inputs(B, T, H, D, dtype, device, seed, *, steps=1, gate=False, beta_max=1.0):
    """q [B, T, H, D]; unit-norm k, v, beta with `steps` micro-steps per token; g [B, T, H] fp32."""
    g = generator(device, seed)
    q = randn(g, (B, T, H, D), torch.float32, device)
    k = randn(g, (B, T * steps, H, D), torch.float32, device)
    x = {"q": F.normalize(q, dim=-1).to(dtype), "k": F.normalize(k, dim=-1).to(dtype),
         "v": randn(g, (B, T * steps, H, D), dtype, device),
         "beta": (beta_max * torch.rand(B, T * steps, H, generator=g, device=device)).to(dtype)}
    if gate:
        x["g"] = F.logsigmoid(torch.rand(B, T, H, generator=g, device=device))
    return x


# Forward, per head and chunk of L (micro-)steps, K = V = D: A = K Kᵀ and Q Kᵀ (2·L²·D each), the
# triangular solves for W and X (L²·D each), (Q Kᵀ ⊙ D) U (2·L²·D), and W S, Q S, Kᵀ U (2·L·D²
# each): per step 8·L·D + 6·D². Backward: each matmul has two input gradients, 2 × the forward.
# Elementwise gate work is not counted. DeltaProduct counts its n_h·T micro-steps.
def _delta_flops(steps):
    def flops(B, T, H, D, causal, direction) -> float:
        fwd = B * H * steps * T * (8.0 * DELTA_CHUNK * D + 6.0 * D * D)
        return fwd if direction == "fwd" else 3.0 * fwd
    return flops


# Minimum traffic: forward reads q, k, v (k, v for every micro-step), β (and g), writes o; the
# backward also reads do and writes dq, dk, dv, dβ (and dg).
def _delta_bytes(steps, gate):
    def nbytes(B, T, H, D, causal, direction, elt) -> float:
        arrays = 2 + 2 * steps  # q, o + k, v per micro-step
        scalars = B * T * H * (steps * elt + (4 if gate else 0))  # β per micro-step, g in fp32
        if direction == "fwd":
            return stream_bytes(B, T, H, D, elt, arrays) + scalars
        return stream_bytes(B, T, H, D, elt, 2 * arrays) + 2 * scalars
    return nbytes


def _delta_skip(steps):
    def skip(impl, B, T, H, D, causal, device_type):
        chunks = -(-steps * T // DELTA_CHUNK)
        if impl == "zoo-compile" and chunks > DELTA_COMPILE_MAX_CHUNKS * steps:
            return (f"not compiled: the chunk form's Python loop unrolls {chunks} chunks "
                    f"(> {DELTA_COMPILE_MAX_CHUNKS * steps}); compile time grows with T")
        return None
    return skip


DELTANET = MethodSpec(
    name="deltanet",
    chunk_op="delta_rule_chunk",
    reference_op="delta_rule_parallel",
    make_inputs=lambda B, T, H, D, dtype, device, causal, seed: _delta_inputs(B, T, H, D, dtype, device, seed),
    call=lambda op, x, causal: op(x["q"], x["k"], x["v"], x["beta"])[0],
    flops=_delta_flops(1),
    bytes=_delta_bytes(1, gate=False),
    grad_inputs=("q", "k", "v", "beta"),
    causal_modes=(True,),
    fla=FlaRef("fla.ops.delta_rule", "chunk_delta_rule",
               lambda fn, x, causal: fn(x["q"], x["k"], x["v"], x["beta"])[0]),
    skip=_delta_skip(1),
)

GATED_DELTANET = MethodSpec(
    name="gated_deltanet",
    chunk_op="gated_delta_rule_chunk",
    reference_op="gated_delta_rule_parallel",
    make_inputs=lambda B, T, H, D, dtype, device, causal, seed: _delta_inputs(B, T, H, D, dtype, device, seed,
                                                                                gate=True),
    # check_decay=False, as the layers call it (their g is <= 0 by construction) and as fla has no
    # such check: the zoo's g <= 0 value check is a host sync (0.14-0.64 ms a call on the H100, run 27);
    # fast/'s reads its verdict after the kernels are queued (fast.deltanet.start_decay_check)
    call=lambda op, x, causal: op(x["q"], x["k"], x["v"], x["g"], x["beta"], check_decay=False)[0],
    flops=_delta_flops(1),
    bytes=_delta_bytes(1, gate=True),
    grad_inputs=("q", "k", "v", "g", "beta"),
    causal_modes=(True,),
    fla=FlaRef("fla.ops.gated_delta_rule", "chunk_gated_delta_rule",
               lambda fn, x, causal: fn(x["q"], x["k"], x["v"], x["g"], x["beta"])[0]),
    skip=_delta_skip(1),
)

# The reference is the zoo chunk form in float64 (equal to the [T·n_h, T·n_h] parallel definition
# to 1e-10, tests/test_deltaproduct.py): the parallel form needs 2·(n_h·T)² floats per (b, h)
# pair, 17 GB each at T = 16384.
DELTAPRODUCT = MethodSpec(
    name="deltaproduct",
    chunk_op="gated_delta_product_chunk",
    reference_op="gated_delta_product_chunk",
    make_inputs=lambda B, T, H, D, dtype, device, causal, seed: _delta_inputs(
        B, T, H, D, dtype, device, seed, steps=DELTA_HOUSEHOLDER, gate=True, beta_max=2.0),
    call=lambda op, x, causal: op(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                  num_householder=DELTA_HOUSEHOLDER, check_decay=False)[0],  # as above
    flops=_delta_flops(DELTA_HOUSEHOLDER),
    bytes=_delta_bytes(DELTA_HOUSEHOLDER, gate=True),
    grad_inputs=("q", "k", "v", "g", "beta"),
    causal_modes=(True,),
    fla=FlaRef("fla.ops.gated_delta_product", "chunk_gated_delta_product",
               lambda fn, x, causal: fn(q=x["q"], k=x["k"], v=x["v"], g=x["g"], beta=x["beta"],
                                        num_householder=DELTA_HOUSEHOLDER)[0]),
    variant=f"num_householder={DELTA_HOUSEHOLDER}, beta in (0, 2), forget gate",
    skip=_delta_skip(DELTA_HOUSEHOLDER),
)


# ------------------------------------------------------------------------------------------------
# based (issue 4): Taylor linear attention. q, k are feature_dim = 16 wide (the layer's proj_q,
# proj_k), v and o are D wide; normalised (the layer's default, and fla's use_norm=True). fla's
# parallel_based and fused_chunk_based compute the same function (kernel 1 + s + s²/2 with
# s = q·k/√16, o / (z + 1e-6)); the second is timed under its own entry, fla rows only.
# ------------------------------------------------------------------------------------------------
BASED_FEATURE_DIM = 16
BASED_CHUNK = 64  # the zoo's default chunk length L
BASED_M = 1 + BASED_FEATURE_DIM + BASED_FEATURE_DIM ** 2  # the Taylor map's width, 273


def based_inputs(B, T, H, D, dtype, device, causal, seed):
    """q, k ~ N(0, 1) [B, T, H, 16]; v ~ N(0, 1) [B, T, H, D]."""
    g = generator(device, seed)
    q, k = (randn(g, (B, T, H, BASED_FEATURE_DIM), dtype, device) for _ in range(2))
    return {"q": q, "k": k, "v": randn(g, (B, T, H, D), dtype, device)}


# Forward, per head and token, the chunk algorithm (K = 16, M = 273, V = D): intra-chunk q kᵀ and
# A v on full L × L tiles (2·L·K + 2·L·V), the readout φ(q) S and the state update φ(k)ᵀ v
# (2·M·V each); non-causal only the last two. Backward: every matmul has two input gradients,
# counted as 2 × the forward, so 3 × in all.
def based_flops(B, T, H, D, causal, direction) -> float:
    per_token = 4.0 * BASED_M * D + (2.0 * BASED_CHUNK * (BASED_FEATURE_DIM + D) if causal else 0.0)
    fwd = B * H * T * per_token
    return fwd if direction == "fwd" else 3.0 * fwd


# Minimum traffic: forward reads q, k (16 wide) and v, writes o (D wide); forward + backward also
# reads do and writes dq, dk, dv: twice that.
def based_bytes(B, T, H, D, causal, direction, elt) -> float:
    fwd = stream_bytes(B, T, H, BASED_FEATURE_DIM, elt, 2) + stream_bytes(B, T, H, D, elt, 2)
    return fwd if direction == "fwd" else 2.0 * fwd


def _fla_based(fn, x, causal):
    o = fn(x["q"], x["k"], x["v"], scale=BASED_FEATURE_DIM ** -0.5, use_norm=True)
    return o[0] if isinstance(o, tuple) else o


def _only_fla(impl, B, T, H, D, causal, device_type):
    return None if impl == "fla" else "timed under method 'based': this entry holds fla's fused_chunk_based only"


BASED = MethodSpec(
    name="based",
    chunk_op="based_chunk",
    reference_op="based_parallel",
    make_inputs=based_inputs,
    call=lambda op, x, causal: op(x["q"], x["k"], x["v"], causal=causal)[0],
    flops=based_flops,
    bytes=based_bytes,
    causal_modes=(True,),
    fla=FlaRef("fla.ops.based", "parallel_based", _fla_based, causal_only=True),
    approximates_softmax=True,
    variant=f"feature_dim={BASED_FEATURE_DIM}, normalize=True",
)

BASED_FLA_FUSED_CHUNK = dataclasses.replace(
    BASED, name="based_fla_fused_chunk", zoo_module="zoo.based", fast_module="fast.based",
    fla=FlaRef("fla.ops.based", "fused_chunk_based", _fla_based, causal_only=True), skip=_only_fla,
    approximates_softmax=False,
)


# ------------------------------------------------------------------------------------------------
# sliding_window_attention (issue 4): causal softmax over the last W keys, W = 64 and W = 512 (one
# entry each). SDPA (full causal flash) is the bar: compare the `tflops` column, which for both
# counts only the (query, key) pairs actually attended, i.e. throughput on the tokens attended.
# ------------------------------------------------------------------------------------------------
def _swa_pairs(T, W) -> float:
    """Σ_i min(i + 1, W): the (query, key) pairs a causal window of W keys attends."""
    W = min(W, T)
    return W * (W + 1) / 2 + (T - W) * W


def _swa_flops(W):
    # 4·D per attended pair forward (q kᵀ and P v), as the softmax entry; fwd+bwd 3.5 ×.
    def flops(B, T, H, D, causal, direction) -> float:
        fwd = 4.0 * B * H * D * _swa_pairs(T, W)
        return fwd if direction == "fwd" else 3.5 * fwd
    return flops


def _swa_skip(impl, B, T, H, D, causal, device_type):
    if impl == "fla":
        return "fla has no sliding-window op"
    return None


# The float64 reference is the zoo chunk form, whose memory does not grow with T (equal to the
# [T, T] parallel form in float64, tests/test_sliding_window_attention.py): with gradients the
# parallel one ran out of memory on the H100 at T = 32768 (16 GiB per [T, T] float64 matrix).
def _swa_spec(W, name):
    return MethodSpec(
        name=name,
        chunk_op="sliding_window_attention_chunk",
        reference_op="sliding_window_attention_chunk",
        make_inputs=qkv_inputs,
        call=lambda op, x, causal: op(x["q"], x["k"], x["v"], window=W),
        flops=_swa_flops(W),
        bytes=qkv_o_bytes,
        causal_modes=(True,),
        approximates_softmax=True,  # err_vs_softmax: what the window forgets, against full attention
        variant=f"window={W}",
        skip=_swa_skip,
        zoo_module="zoo.sliding_window_attention",
        fast_module="fast.sliding_window_attention",
    )


SLIDING_WINDOW_64 = _swa_spec(64, "sliding_window_attention")
SLIDING_WINDOW_512 = _swa_spec(512, "sliding_window_attention_w512")


# ------------------------------------------------------------------------------------------------
# Random-feature attention (issue 5): hrc_la (complex / trigonometric features) and performer
# (FAVOR+, positive features), M = 256 features, non-causal and causal. One Ω [M, D] shared by the
# heads, passed inside a tuple so the harness neither casts it nor slices it into (b, h) pairs. The
# float64 reference is the zoo chunk form (equal to the [T, T] parallel form to 1e-10,
# tests/test_hrc_la.py, tests/test_performer.py): the parallel one needs 16 bytes × T² per pair.
# err_vs_softmax is the estimator's own error against exact softmax on N(0, 1) inputs.
# ------------------------------------------------------------------------------------------------
RF_M = 256  # random features (the target size)
RF_CHUNK = 64  # the zoo's default chunk length L
RF_COMPILE_MAX_CHUNKS = 16  # the zoo chunk form's Python loop unrolls under torch.compile


def _rf_inputs(module):
    def make(B, T, H, D, dtype, device, causal, seed):
        x = qkv_inputs(B, T, H, D, dtype, device, causal, seed)
        gen = torch.Generator().manual_seed(seed)  # Ω is drawn on the CPU from its own seed
        x["omega"] = (importlib.import_module(module).orthogonal_random_features(RF_M, D, generator=gen)
                      .to(device),)
        return x
    return make


def _rf_call(op, x, causal):
    q = x["q"]
    omega = x["omega"][0].expand(q.shape[2], *x["omega"][0].shape)  # [H, M, D], one Ω for every head
    return op(q, x["k"], x["v"], omega, causal=causal)[0]


# Forward, per head and token (V = D), the chunk algorithm with F real features per token (hrc_la:
# F = 2M, cos and sin; performer: F = M): the phases u Ωᵀ for q and k (2·2·D·M), the intra-chunk
# φ_q φ_kᵀ and A v on full L × L tiles (2·L·F + 2·L·D, causal only), the read-out φ_q S and the
# state update φ_kᵀ v (2·F·D each). Backward: every matmul has two input gradients, 3 × in all.
def _rf_flops(F_per_M):
    def flops(B, T, H, D, causal, direction) -> float:
        Fw = F_per_M * RF_M
        per_token = 4.0 * D * RF_M + 4.0 * Fw * D + (2.0 * RF_CHUNK * (Fw + D) if causal else 0.0)
        fwd = B * H * T * per_token
        return fwd if direction == "fwd" else 3.0 * fwd
    return flops


def _rf_skip(impl, B, T, H, D, causal, device_type):
    if impl == "fla":
        return "fla has no random-feature attention op"
    chunks = -(-T // RF_CHUNK)
    if impl == "zoo-compile" and chunks > RF_COMPILE_MAX_CHUNKS:
        return (f"not compiled: the chunk form's Python loop unrolls {chunks} chunks "
                f"(> {RF_COMPILE_MAX_CHUNKS}); compile time grows with T")
    return None


HRC_LA = MethodSpec(
    name="hrc_la",
    chunk_op="hrc_la_chunk",
    reference_op="hrc_la_chunk",
    make_inputs=_rf_inputs("zoo.hrc_la"),
    call=_rf_call,
    flops=_rf_flops(2),
    bytes=qkv_o_bytes,
    approximates_softmax=True,
    variant=f"M={RF_M} (orthogonal, chi lengths), eps=0.01",
    skip=_rf_skip,
)

PERFORMER = MethodSpec(
    name="performer",
    chunk_op="performer_chunk",
    reference_op="performer_chunk",
    make_inputs=_rf_inputs("zoo.performer"),
    call=_rf_call,
    flops=_rf_flops(1),
    bytes=qkv_o_bytes,
    approximates_softmax=True,
    variant=f"M={RF_M} (FAVOR+, orthogonal, chi lengths)",
    skip=_rf_skip,
)


# ------------------------------------------------------------------------------------------------
# hyper_attention (issue 6): HyperAttention with the official defaults, b = s = 256, r = 8 LSH
# directions, min_seq_len = 2048. SDPA (exact softmax, flash) is the speed bar; err_vs_softmax is
# the estimator's own error against exact softmax on N(0, 1) inputs. The LSH directions travel in a
# tuple (the harness neither casts nor slices them); the samples come from a CPU generator seeded
# on every call, so every impl draws the same samples. `err` compares with the float64 zoo on the
# first and last (batch, head) pairs only: the sliced problem draws [2, 1, s] samples instead of
# [B, H, s], so only pair (0, 0) gets the same samples; `err` is therefore the spread between two
# draws of the estimator, not a kernel error (tests/test_hyper_attention.py checks fast = zoo).
# ------------------------------------------------------------------------------------------------
HYPER = dict(block_size=256, sample_size=256, min_seq_len=2048)
HYPER_PROJS = 8


def _hyper_inputs(B, T, H, D, dtype, device, causal, seed):
    x = qkv_inputs(B, T, H, D, dtype, device, causal, seed)
    proj = importlib.import_module("zoo.hyper_attention").lsh_projections(D, HYPER_PROJS, seed=seed)
    x["proj"] = (proj.to(device),)
    return x


def _hyper_call(op, x, causal):
    return op(x["q"], x["k"], x["v"], proj=x["proj"][0], causal=causal,
              generator=torch.Generator().manual_seed(0), **HYPER)


def _hyper_pairs(T: int, causal: bool) -> float:
    """(query, key) pairs attended per head: b + s keys per query non-causally (all T below
    min_seq_len); causally, the recursion's exact leaves plus T/2 queries per level attending
    the lower-left block non-causally."""
    b, s, m = HYPER["block_size"], HYPER["sample_size"], HYPER["min_seq_len"]

    def noncausal(n):
        return n * n if n < m else n * (min(b, n) + (s if n > b else 0))

    if not causal:
        return float(noncausal(T))
    pairs, n, pieces = 0.0, T, 1
    while n > m:
        n = (n + 1) // 2
        pairs += pieces * noncausal(n)  # the lower-left block of every piece at this level
        pieces *= 2
    return pairs + pieces * n * (n + 1) / 2  # exact causal leaves


# 4·D per attended pair forward (q kᵀ and P v), the softmax entry's count; the hash (2·D·r per
# token for q and k) is negligible. Forward + backward 3.5 × (FlashAttention's convention; the
# kernels recompute P, 7 matmuls per tile in the backward).
def _hyper_flops(B, T, H, D, causal, direction) -> float:
    fwd = 4.0 * B * H * D * _hyper_pairs(T, causal)
    return fwd if direction == "fwd" else 3.5 * fwd


HYPER_ATTENTION = MethodSpec(
    name="hyper_attention",
    chunk_op="hyper_attention_chunk",
    reference_op="hyper_attention_chunk",
    make_inputs=_hyper_inputs,
    call=_hyper_call,
    flops=_hyper_flops,
    bytes=qkv_o_bytes,
    approximates_softmax=True,
    variant="block_size=256, sample_size=256, lsh_num_projs=8, min_seq_len=2048",
    skip=lambda impl, B, T, H, D, causal, device_type: "fla has no HyperAttention" if impl == "fla" else None,
)


# ------------------------------------------------------------------------------------------------
# holographic (issue 7): LongAttention's fused scan. Its lanes are element-wise, so a "head" only
# tiles them; v1 sizes hd_dim = 4 × the model width, so each head here gets 4·D lanes: at the
# harness's H = 16, D = 128 that is hd_dim = 8192 (the headline, B·T = 32768). Inputs are
# a_phase, a_mag, q_re, q_im [B, T, H, 4D] (N(0, 1)); one row of integer frequencies [1, 4D],
# inside a tuple (not cast, not sliced), expanded to every head. Output o [B, T, H, 8D].
# ------------------------------------------------------------------------------------------------
HOLO_LANES_PER_D = 4


def _holo_inputs(B, T, H, D, dtype, device, causal, seed):
    g = generator(device, seed)
    x = {n: randn(g, (B, T, H, HOLO_LANES_PER_D * D), dtype, device) for n in ("a_phase", "a_mag", "q_re", "q_im")}
    x["freqs"] = (importlib.import_module("zoo.holographic").random_frequencies(1, HOLO_LANES_PER_D * D, seed)
                  .to(device),)
    return x


def _holo_call(op, x, causal):
    H = x["a_phase"].shape[2]
    return op(x["a_phase"], x["a_mag"], x["q_re"], x["q_im"], x["freqs"][0].expand(H, -1))[0]


# Counted per token-lane: the complex arithmetic only, binding 2 (|b|·cos, |b|·sin), scan 2,
# retrieval 6, scale 2: 12 forward; backward ~3 ×. (σ, tanh, sin, cos are not counted.)
def _holo_flops(B, T, H, D, causal, direction) -> float:
    fwd = 12.0 * B * T * H * HOLO_LANES_PER_D * D
    return fwd if direction == "fwd" else 4.0 * fwd


# Minimum traffic in [B, T, H, 4D] arrays: forward reads 4 and writes o (2 arrays' worth); the
# backward reads the 4 inputs and do (2) and writes 4 gradients: 6 forward, 6 + 10 = 16 in all.
def _holo_bytes(B, T, H, D, causal, direction, elt) -> float:
    return stream_bytes(B, T, H, HOLO_LANES_PER_D * D, elt, 6 if direction == "fwd" else 16)


HOLOGRAPHIC = MethodSpec(
    name="holographic",
    chunk_op="holographic_chunk",
    reference_op="holographic_parallel",
    make_inputs=_holo_inputs,
    call=_holo_call,
    flops=_holo_flops,
    bytes=_holo_bytes,
    grad_inputs=("a_phase", "a_mag", "q_re", "q_im"),
    causal_modes=(True,),
    variant="hd_dim = 4·H·D lanes, chunk_size=64",
    skip=lambda impl, B, T, H, D, causal, device_type: (
        {"fla": "fla has no holographic op", "sdpa": "no q, k, v: SDPA is not a speed bar for it"}.get(impl)),
)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
SPECS: list[MethodSpec] = [SOFTMAX_ATTENTION, LINEAR_ATTENTION, DELTANET, GATED_DELTANET, DELTAPRODUCT,
                           BASED, BASED_FLA_FUSED_CHUNK, SLIDING_WINDOW_64, SLIDING_WINDOW_512,
                           HRC_LA, PERFORMER, HYPER_ATTENTION, HOLOGRAPHIC]


def all_specs() -> dict[str, MethodSpec]:
    """Every entry above, plus those of the module(s) named in $BENCH_EXTRA_SPECS (comma-separated
    import paths, each holding a list `SPECS`): a prototype or a test's stub method."""
    specs = {s.name: s for s in SPECS}
    for path in filter(None, os.environ.get("BENCH_EXTRA_SPECS", "").split(",")):
        for s in importlib.import_module(path.strip()).SPECS:
            specs[s.name] = s
    return specs


def module_available(path: str) -> str | None:
    """None if `path` imports; else the reason, as text."""
    try:
        importlib.import_module(path)
        return None
    except Exception as e:  # a module under construction may raise anything on import
        return f"{type(e).__name__}: {e}"
