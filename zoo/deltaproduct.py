"""Gated DeltaProduct — n_h delta-rule steps per token: a product of Householder-like transitions.

Paper:  DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products. Julien
        Siems, Timur Carstensen, Arber Zela, Frank Hutter, Massimiliano Pontil, Riccardo Grazzi.
        2025. arXiv:2502.10297.   Negative eigenvalues: Grazzi et al., Unlocking State-Tracking in
        Linear RNNs Through Negative Eigenvalues, ICLR 2025, arXiv:2411.12537.   Layer checked
        against: fla-org/flash-linear-attention fla/layers/gated_deltaproduct.py (0.6.0).
Idea:   One delta-rule step multiplies the state by I − β k kᵀ, a matrix that differs from the
        identity in one direction only. Taking n_h steps per token, each with its own key, value and
        β, makes the per-token transition a product of n_h such factors: rank-n_h changes, and with
        β ∈ (0, 2) reflections and rotations, which is what tracking a permutation needs.
        Written as a sequence of T·n_h micro-steps it is exactly the gated delta rule, with the
        gate on the first micro-step of each token and the output read at the last.

Math (per head, causal; state S ∈ ℝ^{K×V}, every k_{t,j} unit-norm, g_t ≤ 0, s = scale):
  (1) S ← e^{g_t} S;  for j = 1..n_h:  S ← (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) S + β_{t,j} k_{t,j} v_{t,j}ᵀ;  S_t = S
  (2) o_t = S_tᵀ (s q_t)
  (3) micro-steps m = (t, j), m = t·n_h + j − 1 (token-major, as fla interleaves them):
        k_m, v_m, β_m as given · g_m = g_t if j = 1 else 0 · q_m = q_t if j = n_h else 0
      then (1)–(2) is the gated delta rule over T·n_h steps, o_t = o_m at j = n_h, with its
      parallel form   (I + A) U = diag(β)(V − diag(e^Γ) K S_0),  A = tril(diag(β) K Kᵀ ⊙ D, −1),
      O = diag(e^Γ) s Q S_0 + (s Q Kᵀ ⊙ D) U,  Γ_m = Σ_{m'≤m} g_{m'},  D_ab = e^{Γ_a − Γ_b} (b ≤ a)
  (4) chunk form: (3) on chunks of L micro-steps, W = (I + A)⁻¹ diag(β e^Γ) K, X = (I + A)⁻¹ diag(β) V,
      U = X − W S, o = diag(e^Γ) s Q S + (s Q Kᵀ ⊙ D) U, S ← e^{Γ_L} S + (diag(e^{Γ_L − Γ}) K)ᵀ U
Shapes: q [B, T, H, K]   k [B, T·n_h, H, K]   v [B, T·n_h, H, V]   beta [B, T·n_h, H]
        g [B, T, H] or None (no forget gate)   o [B, T, H, V]   S [B, H, K, V]
Cost:   as the gated delta rule over T·n_h steps: parallel O((T n_h)²(K+V) + (T n_h)³) ·
        recurrent O(T·n_h·K·V) · chunk O(T·n_h·(L(K+V) + K·V)) · decode state K·V per head + conv tails.
Forms:  gated_delta_product_parallel (definition (3), oracle) · gated_delta_product_recurrent
        (decode, (1)–(2)) · gated_delta_product_chunk (training, (4))
Fast:   fast/deltaproduct.py — chunk forward + backward, recurrent forward.
Dtype:  computes in the input dtype (float64 is exact); fp16/bf16 inputs compute in float32 and
        return the input dtype; the final state is returned in the compute dtype.
Pitfalls:
  * k, v, beta hold n_h micro-steps per token *token-major*: index t·n_h + j, not j·T + t.
  * chunk_size counts micro-steps (a chunk may split a token: the micro-step recurrence does not care).
  * g > 0 raises ValueError (eager mode only, as in zoo/gated_deltanet.py); k must be unit-norm.
  * with n_h = 1 this is exactly Gated DeltaNet; without g it is DeltaNet with n_h steps per token.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

L2_NORM_EPS = 1e-6  # inside the sqrt, as fla's kernels do: keeps an all-zero q or k finite


# ------------------------------------------------------------------------------------------------
# Input checks and the prologue every form shares
# ------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, g, beta, num_householder, initial_state, chunk_size=None):
    n = num_householder
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_householder must be a positive int, got {n!r}")
    named = (("q", q), ("k", k), ("v", v), ("beta", beta)) + ((("g", g),) if g is not None else ())
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != (B, T * n, H, K):
        raise ValueError(f"k must be [B, T·n_h, H, K] = {(B, T * n, H, K)} (n_h = {n} micro-steps "
                         f"per token, token-major), got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != (B, T * n, H):
        raise ValueError(f"v must be [B, T·n_h, H, V] with B, T·n_h, H = {(B, T * n, H)}, got {tuple(v.shape)}")
    if beta.shape != (B, T * n, H):
        raise ValueError(f"beta must be [B, T·n_h, H] = {(B, T * n, H)}, got {tuple(beta.shape)}")
    if g is not None and g.shape != (B, T, H):
        raise ValueError(f"g must be [B, T, H] = {(B, T, H)} (one gate per token) or None, got {tuple(g.shape)}")
    if initial_state is not None:
        if initial_state.shape != (B, H, K, v.shape[-1]):
            raise ValueError(f"initial_state must be [B, H, K, V] = {(B, H, K, v.shape[-1])}, "
                             f"got {tuple(initial_state.shape)}")
        if initial_state.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"initial_state must be float32 or float64 (it accumulates over the "
                            f"whole sequence), got {initial_state.dtype}")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}")
    if chunk_size is not None and (chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    # g > 0 would grow the state. The value check needs a data-dependent branch: eager mode only.
    if g is not None and not torch.compiler.is_compiling() and bool((g > 0).any()):
        raise ValueError(f"g is a log decay and must be <= 0 (got max {g.max().item():.3g})")


def _prologue(q, k, v, g, beta, num_householder, scale, initial_state, chunk_size=None):
    """Checks, default scale, compute dtype; head-first tensors [B, H, T(·n_h), ·], g zeros if None."""
    _check_inputs(q, k, v, g, beta, num_householder, initial_state, chunk_size)
    B, T, H, K = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; f64 stays f64
    scale = K ** -0.5 if scale is None else scale
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))  # [B, H, T or T·n_h, ·]
    beta = beta.to(dtype).transpose(1, 2)  # [B, H, T·n_h]
    g = q.new_zeros(B, H, T) if g is None else g.to(dtype).transpose(1, 2)  # no gate = g ≡ 0  [B, H, T]
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    return q * scale, k, v, g, beta, S


def _micro_steps(q, g, n):
    """(3): the query at the last micro-step of each token, the gate at the first, zeros elsewhere."""
    B, H, T, K = q.shape
    q_m = F.pad(q[:, :, :, None], (0, 0, n - 1, 0)).reshape(B, H, T * n, K)  # [B, H, T·n_h, K]
    g_m = F.pad(g[..., None], (0, n - 1)).reshape(B, H, T * n)  # [B, H, T·n_h]
    return q_m, g_m


def _decay_matrix(gamma):
    """D_ab = e^{Γ_a − Γ_b} for b ≤ a, else 0; masked before exp (the upper triangle overflows)."""
    L = gamma.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=gamma.device).tril()
    return (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float('-inf')).exp()


# ------------------------------------------------------------------------------------------------
# The three forms
# ------------------------------------------------------------------------------------------------
def gated_delta_product_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 g: torch.Tensor | None, beta: torch.Tensor, *, num_householder: int,
                                 scale: float | None = None, initial_state: torch.Tensor | None = None,
                                 output_final_state: bool = False):
    """The definition (3): the gated delta rule's [T·n_h, T·n_h] solve over the micro-steps.

    Args: q: [B, T, H, K] · k: [B, T·n_h, H, K] · v: [B, T·n_h, H, V] · g: [B, T, H] (≤ 0) or None ·
          beta: [B, T·n_h, H] · num_householder: n_h · initial_state: [B, H, K, V]
    Returns: o [B, T, H, V] (input dtype), final state [B, H, K, V] or None.
    """
    out_dtype, n = q.dtype, num_householder
    q, k, v, g, beta, S0 = _prologue(q, k, v, g, beta, n, scale, initial_state)
    q, g = _micro_steps(q, g, n)  # (3)  [B, H, T·n_h, K], [B, H, T·n_h]
    M = q.shape[2]
    gamma = g.cumsum(-1)  # Γ_m  [B, H, M]
    D = _decay_matrix(gamma)  # [B, H, M, M]
    A = (beta[..., None] * (k @ k.transpose(-1, -2)) * D).tril(-1)  # (3)  [B, H, M, M]
    rhs = beta[..., None] * (v - gamma.exp()[..., None] * (k @ S0))  # (3)  [B, H, M, V]
    eye = torch.eye(M, dtype=q.dtype, device=q.device)
    u = torch.linalg.solve_triangular(eye + A, rhs, upper=False)  # (3) the writes U  [B, H, M, V]
    o = gamma.exp()[..., None] * (q @ S0) + ((q @ k.transpose(-1, -2)) * D) @ u  # (3)  [B, H, M, V]
    S = None
    if output_final_state:
        k_end = (gamma[..., -1:] - gamma).exp()[..., None] * k  # diag(e^{Γ_M − Γ}) K  [B, H, M, K]
        S = gamma[..., -1, None, None].exp() * S0 + k_end.transpose(-1, -2) @ u  # [B, H, K, V]
    o = o[:, :, n - 1::n]  # read at the last micro-step of each token  [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), S


def gated_delta_product_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  g: torch.Tensor | None, beta: torch.Tensor, *, num_householder: int,
                                  scale: float | None = None, initial_state: torch.Tensor | None = None,
                                  output_final_state: bool = False):
    """Token by token, n_h steps each, (1)–(2): what decoding runs. Under torch.compile the loops
    are unrolled: compile it only for small T. Args and returns as gated_delta_product_parallel."""
    out_dtype, n = q.dtype, num_householder
    q, k, v, g, beta, S = _prologue(q, k, v, g, beta, n, scale, initial_state)
    o = []
    for t in range(q.shape[2]):
        S = g[:, :, t, None, None].exp() * S  # (1) the gate, once per token
        for j in range(t * n, t * n + n):  # (1) the n_h Householder-like steps of token t
            k_j, b_j = k[:, :, j], beta[:, :, j, None]  # [B, H, K], [B, H, 1]
            u_j = b_j * (v[:, :, j] - torch.einsum('bhk,bhkv->bhv', k_j, S))  # β(v − Sᵀk)
            S = S + torch.einsum('bhk,bhv->bhkv', k_j, u_j)  # S ← (I − βkkᵀ)S + βkvᵀ
        o.append(torch.einsum('bhk,bhkv->bhv', q[:, :, t], S))  # (2) o_t = S_tᵀ(s q_t)
    o = torch.stack(o, dim=2) if o else v.new_zeros(*v.shape[:2], 0, v.shape[-1])  # [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


def gated_delta_product_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              g: torch.Tensor | None, beta: torch.Tensor, *, num_householder: int,
                              scale: float | None = None, initial_state: torch.Tensor | None = None,
                              output_final_state: bool = False, chunk_size: int = 64):
    """Chunkwise WY/UT form (4) over the micro-steps: what training runs and fast/ implements.
    chunk_size = L micro-steps per chunk (a power of two). Args and returns as the parallel form."""
    out_dtype, n = q.dtype, num_householder
    q, k, v, g, beta, S = _prologue(q, k, v, g, beta, n, scale, initial_state, chunk_size)
    q, g = _micro_steps(q, g, n)  # (3)  [B, H, T·n_h, K], [B, H, T·n_h]
    B, H, M, K = q.shape
    L = chunk_size
    N = -(-M // L)
    # Pad the micro-steps up to N·L with zeros: k = 0, β = 0, g = 0 is the identity transition
    # (no decay, no write), so the state and the real outputs are exact.
    pad = N * L - M
    q, k, v = (F.pad(x, (0, 0, 0, pad)).view(B, H, N, L, -1) for x in (q, k, v))  # [B, H, N, L, ·]
    g, beta = (F.pad(x, (0, pad)).view(B, H, N, L) for x in (g, beta))  # [B, H, N, L]
    eye = torch.eye(L, dtype=q.dtype, device=q.device)

    # Stage 1, intra-chunk (4): Γ restarts in every chunk; the WY factors need no state.
    gamma = g.cumsum(-1)  # [B, H, N, L]
    D = _decay_matrix(gamma)  # [B, H, N, L, L]
    A = (beta[..., None] * (k @ k.transpose(-1, -2)) * D).tril(-1)  # [B, H, N, L, L]
    W = torch.linalg.solve_triangular(eye + A, (beta * gamma.exp())[..., None] * k, upper=False)  # [B, H, N, L, K]
    X = torch.linalg.solve_triangular(eye + A, beta[..., None] * v, upper=False)  # [B, H, N, L, V]
    qk = (q @ k.transpose(-1, -2)) * D  # [B, H, N, L, L]
    q_in = gamma.exp()[..., None] * q  # diag(e^Γ) sQ  [B, H, N, L, K]
    k_out = (gamma[..., -1:] - gamma).exp()[..., None] * k  # diag(e^{Γ_L − Γ}) K  [B, H, N, L, K]
    decay = gamma[..., -1].exp()  # e^{Γ_L}  [B, H, N]

    # Stage 2, state pass (sequential over chunks), with stage 3's outputs read on the way.
    o = []
    for c in range(N):
        u = X[:, :, c] - W[:, :, c] @ S  # (4) the writes of chunk c  [B, H, L, V]
        o.append(q_in[:, :, c] @ S + qk[:, :, c] @ u)  # (4) o = diag(e^Γ)sQS + (sQKᵀ⊙D)U  [B, H, L, V]
        S = decay[:, :, c, None, None] * S + k_out[:, :, c].transpose(-1, -2) @ u  # (4)  [B, H, K, V]
    o = torch.cat(o, dim=2)[:, :, n - 1:M:n]  # the last micro-step of each token  [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)
