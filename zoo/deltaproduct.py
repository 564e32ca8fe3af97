"""Gated DeltaProduct — n_h delta-rule steps per token: a product of Householder-like transitions.

Paper:  DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products. Julien
        Siems, Timur Carstensen, Arber Zela, Frank Hutter, Massimiliano Pontil, Riccardo Grazzi.
        2025. arXiv:2502.10297.   Negative eigenvalues: Grazzi et al., Unlocking State-Tracking in
        Linear RNNs Through Negative Eigenvalues, ICLR 2025, arXiv:2411.12537.   Layer written
        from: fla-org/flash-linear-attention fla/layers/gated_deltaproduct.py (0.6.0), same names.
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
  * g > 0 raises ValueError (eager mode only; `check_decay=False` skips the check's host sync, and
    the layer passes it: its g is ≤ 0 by construction; as in zoo/gated_deltanet.py); k must be unit-norm.
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
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
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


def _check_log_decay(g):
    """g > 0 would grow the state. The value check needs a host sync and a data-dependent branch:
    eager mode only."""
    if g is not None and not torch.compiler.is_compiling() and bool((g > 0).any()):
        raise ValueError(f"g is a log decay and must be <= 0 (got max {g.max().item():.3g})")


def _prologue(q, k, v, g, beta, num_householder, scale, initial_state, check_decay, chunk_size=None):
    """Checks, default scale, compute dtype; head-first tensors [B, H, T(·n_h), ·], g zeros if None."""
    _check_inputs(q, k, v, g, beta, num_householder, initial_state, chunk_size)
    if check_decay:
        _check_log_decay(g)
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
                                 output_final_state: bool = False, check_decay: bool = True):
    """The definition (3): the gated delta rule's [T·n_h, T·n_h] solve over the micro-steps.

    Args: q: [B, T, H, K] · k: [B, T·n_h, H, K] · v: [B, T·n_h, H, V] · g: [B, T, H] (≤ 0) or None ·
          beta: [B, T·n_h, H] · num_householder: n_h · initial_state: [B, H, K, V] ·
          check_decay: raise if g > 0 (eager mode; a host sync)
    Returns: o [B, T, H, V] (input dtype), final state [B, H, K, V] or None.
    """
    out_dtype, n = q.dtype, num_householder
    q, k, v, g, beta, S0 = _prologue(q, k, v, g, beta, n, scale, initial_state, check_decay)
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
                                  output_final_state: bool = False, check_decay: bool = True):
    """Token by token, n_h steps each, (1)–(2): what decoding runs. Under torch.compile the loops
    are unrolled: compile it only for small T. Args and returns as gated_delta_product_parallel."""
    out_dtype, n = q.dtype, num_householder
    q, k, v, g, beta, S = _prologue(q, k, v, g, beta, n, scale, initial_state, check_decay)
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
                              output_final_state: bool = False, chunk_size: int = 64,
                              check_decay: bool = True):
    """Chunkwise WY/UT form (4) over the micro-steps: what training runs and fast/ implements.
    chunk_size = L micro-steps per chunk (a power of two). Args and returns as the parallel form."""
    out_dtype, n = q.dtype, num_householder
    q, k, v, g, beta, S = _prologue(q, k, v, g, beta, n, scale, initial_state, check_decay, chunk_size)
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


# ------------------------------------------------------------------------------------------------
# The layer (fla's GatedDeltaProduct: same arguments, defaults, parameter names and shapes)
# ------------------------------------------------------------------------------------------------
def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """x / √(Σx² + ε) over the last dim, in at least float32, as fla's kernels normalise q and k."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    return (y * torch.rsqrt(y.square().sum(-1, keepdim=True) + L2_NORM_EPS)).to(x.dtype)


def short_conv(conv: nn.Conv1d, x: torch.Tensor, tail: torch.Tensor | None, silu: bool):
    """Depthwise causal convolution over time, x [B, T, C], continuing from `tail`, the last W − 1
    inputs seen ([B, C, W − 1]; None = zeros = fla's left padding). Returns (y [B, T, C], new tail)."""
    W = conv.kernel_size[0]
    x = x.transpose(1, 2)  # [B, C, T]
    if tail is None:
        tail = x.new_zeros(x.shape[0], x.shape[1], W - 1)
    x = torch.cat([tail.to(x.dtype), x], dim=-1)  # [B, C, W − 1 + T]
    y = F.conv1d(x, conv.weight, conv.bias, groups=x.shape[1])  # [B, C, T]
    y = F.silu(y) if silu else y
    return y.transpose(1, 2), x[..., x.shape[-1] - (W - 1):]  # [B, T, C], [B, C, W − 1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gate: torch.Tensor | None = None):
    """fla's RMSNorm over the last dim in float32; with a gate, fla's FusedRMSNormGated
    (output ⊙ gate·σ(gate)). Returns x's dtype."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * weight.to(y.dtype)
    if gate is not None:
        y = y * F.silu(gate.to(y.dtype))
    return y.to(x.dtype)


class GatedDeltaProduct(nn.Module):
    """fla's GatedDeltaProduct layer: as Gated DeltaNet, but k_proj, v_proj and b_proj emit n_h
    keys, values and betas per token (features ordered (j, head, dim), j slowest), which become n_h
    micro-steps, token-major. The forget gate (A_log, dt_bias, a_proj) is optional; β ∈ (0, 2) by
    default (allow_neg_eigval). State dicts load both ways with fla's layer.
    `form` picks the op forward and prefill use; step always runs the recurrent op.
    Decode cache: {"S": [B, HV, K, V]} plus, with short convs, "conv_q" [B, key_dim, W−1],
    "conv_k" [B, n_h·key_dim, W−1], "conv_v" [B, n_h·value_dim, W−1]."""

    parallel_op = staticmethod(gated_delta_product_parallel)
    recurrent_op = staticmethod(gated_delta_product_recurrent)
    chunk_op = staticmethod(gated_delta_product_chunk)

    def __init__(self, hidden_size: int = 2048, expand_v: float = 2, head_dim: int = 256,
                 num_heads: int = 6, num_v_heads: int | None = None, use_output_gate: bool = True,
                 use_short_conv: bool = True, conv_size: int = 4, conv_bias: bool = False,
                 norm_eps: float = 1e-5, use_forget_gate: bool = True, allow_neg_eigval: bool = True,
                 num_householder: int = 2, form: str = 'chunk'):
        super().__init__()
        HV, n = (num_heads if num_v_heads is None else num_v_heads), num_householder
        if HV % num_heads:
            raise ValueError(f"num_v_heads={HV} must be a multiple of num_heads={num_heads}")
        if head_dim * expand_v != int(head_dim * expand_v):
            raise ValueError(f"head_dim * expand_v = {head_dim * expand_v} must be an integer")
        if form not in ('chunk', 'recurrent', 'parallel'):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.hidden_size, self.num_heads, self.num_v_heads, self.form = hidden_size, num_heads, HV, form
        self.head_k_dim, self.head_v_dim = head_dim, int(head_dim * expand_v)
        self.key_dim, self.value_dim = num_heads * head_dim, HV * self.head_v_dim
        self.num_householder, self.use_forget_gate, self.allow_neg_eigval = n, use_forget_gate, allow_neg_eigval
        self.use_output_gate, self.use_short_conv, self.conv_size = use_output_gate, use_short_conv, conv_size
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim * n, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim * n, bias=False)
        self.b_proj = nn.Linear(hidden_size, HV * n, bias=False)
        if use_forget_gate:  # fla's (Mamba2's) gate init, as in zoo/gated_deltanet.py
            self.a_proj = nn.Linear(hidden_size, HV, bias=False)
            self.A_log = nn.Parameter(torch.empty(HV).uniform_(0, 16).log())
            dt = torch.exp(torch.rand(HV) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
            self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        if use_short_conv:  # fla's ShortConvolution is an nn.Conv1d: same names and shapes
            for name, dim in (('q_conv1d', self.key_dim), ('k_conv1d', self.key_dim * n),
                              ('v_conv1d', self.value_dim * n)):
                setattr(self, name, nn.Conv1d(dim, dim, conv_size, groups=dim, padding=conv_size - 1, bias=conv_bias))
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_norm = nn.RMSNorm(self.head_v_dim, eps=norm_eps)  # holds o_norm.weight; math in rms_norm
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def _mix(self, x, op, cache, output_final_state):
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, C] with C = {self.hidden_size}, got {tuple(x.shape)}")
        B, T, _ = x.shape
        H, HV, n = self.num_heads, self.num_v_heads, self.num_householder
        cache = cache or {}
        new_cache = {}
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, key_dim], [B, T, n_h·key_dim], ...
        if self.use_short_conv:
            q, new_cache['conv_q'] = short_conv(self.q_conv1d, q, cache.get('conv_q'), True)
            k, new_cache['conv_k'] = short_conv(self.k_conv1d, k, cache.get('conv_k'), True)
            v, new_cache['conv_v'] = short_conv(self.v_conv1d, v, cache.get('conv_v'), True)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = l2_norm(q.view(B, T, H, self.head_k_dim))  # [B, T, H, K]
        k = l2_norm(k.reshape(B, T * n, H, self.head_k_dim))  # features (j, head, dim) -> micro-step t·n_h + j  [B, T·n_h, H, K]
        q, k = (t.repeat_interleave(HV // H, dim=2) for t in (q, k))  # value head j reads j // (HV/H)
        v = v.reshape(B, T * n, HV, self.head_v_dim)  # [B, T·n_h, HV, V]
        beta = self.b_proj(x).sigmoid().view(B, T * n, HV)  # [B, T·n_h, HV]
        beta = beta * 2 if self.allow_neg_eigval else beta  # β ∈ (0, 2): eigenvalues 1 − β ∈ (−1, 1)
        g = None
        if self.use_forget_gate:
            a = self.a_proj(x).to(torch.promote_types(x.dtype, torch.float32))  # the gate in ≥ float32
            g = -self.A_log.to(a.dtype).exp() * F.softplus(a + self.dt_bias.to(a.dtype))  # ≤ 0  [B, T, HV]
        o, new_cache['S'] = op(q, k, v, g, beta, num_householder=n, initial_state=cache.get('S'),
                               output_final_state=output_final_state, check_decay=False)  # g ≤ 0 by construction
        gate = self.g_proj(x).view(B, T, HV, self.head_v_dim) if self.use_output_gate else None
        o = rms_norm(o, self.o_norm.weight, self.o_norm.eps, gate)  # [B, T, HV, V]
        return self.o_proj(o.reshape(B, T, self.value_dim)), new_cache  # [B, T, C]

    def _op(self):
        return {'chunk': self.chunk_op, 'recurrent': self.recurrent_op, 'parallel': self.parallel_op}[self.form]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, self._op(), None, False)[0]

    def prefill(self, x: torch.Tensor):
        """Forward that also returns the decode cache after the last token."""
        return self._mix(x, self._op(), None, True)

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """One token x_t [B, C] -> (y_t [B, C], new cache); cache=None starts from an empty state."""
        y, cache = self._mix(x_t.unsqueeze(1), self.recurrent_op, cache, True)
        return y.squeeze(1), cache

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence in the cache, whatever seq_len: HV·K·V plus the conv tails."""
        n = self.num_householder
        tails = (self.conv_size - 1) * ((1 + n) * self.key_dim + n * self.value_dim) if self.use_short_conv else 0
        return self.num_v_heads * self.head_k_dim * self.head_v_dim + tails


__all__ = ["gated_delta_product_parallel", "gated_delta_product_recurrent", "gated_delta_product_chunk",
           "l2_norm", "short_conv", "rms_norm", "GatedDeltaProduct"]
