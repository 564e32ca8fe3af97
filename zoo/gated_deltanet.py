"""Gated DeltaNet — the delta rule with a per-token forget gate (Mamba2's decay on DeltaNet).

Paper:  Gated Delta Networks: Improving Mamba2 with Delta Rule. Songlin Yang, Jan Kautz, Ali
        Hatamizadeh. ICLR 2025. arXiv:2412.06464.   Layer written from:
        fla-org/flash-linear-attention fla/layers/gated_deltanet.py (0.6.0): same parameter names
        and shapes (a GPU test compares with fla's layer where fla is installed).
Idea:   DeltaNet overwrites one association per token but never forgets wholesale; Mamba2 forgets
        wholesale but cannot overwrite one key. The gated rule does both: the state first decays
        by α_t = e^{g_t} ∈ (0, 1], then takes the delta-rule step. In the chunk form the decay
        becomes a [L, L] matrix of ratios e^{Γ_i − Γ_j} of cumulative gates.

Math (per head, causal; state S ∈ ℝ^{K×V}, k_t unit-norm, g_t ≤ 0 the log decay, s = scale):
  (1) S̃ = e^{g_t} S_{t−1}    u_t = β_t (v_t − S̃ᵀ k_t)    S_t = S̃ + k_t u_tᵀ
      ⇔ S_t = e^{g_t} (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ
  (2) o_t = S_tᵀ (s q_t)
  (3) parallel, start state S_0, Γ_t = Σ_{j≤t} g_j, D_ij = e^{Γ_i − Γ_j} for j ≤ i else 0:
        (I + A) U = diag(β) (V − diag(e^Γ) K S_0),   A = tril(diag(β) K Kᵀ ⊙ D, −1)        [T, T]
      O = diag(e^Γ) s Q S_0 + (s Q Kᵀ ⊙ D) U,   S_T = e^{Γ_T} S_0 + (diag(e^{Γ_T − Γ}) K)ᵀ U
  (4) chunk n (L rows, Γ restarted at the chunk): (3) with the WY factors
        W = (I + A)⁻¹ diag(β e^Γ) K,  X = (I + A)⁻¹ diag(β) V,   U = X − W S
        o = diag(e^Γ) s Q S + (s Q Kᵀ ⊙ D) U   ·   S ← e^{Γ_L} S + (diag(e^{Γ_L − Γ}) K)ᵀ U
Shapes: q, k [B, T, H, K]   v [B, T, H, V]   g, beta [B, T, H]   o [B, T, H, V]   S [B, H, K, V]
Cost:   parallel O(T²(K+V) + T³) time, O(T²) memory · recurrent O(T·K·V) · chunk O(T·L·(K+V) + T·K·V)
        time, O(T·L) memory · decode state K·V per value head plus the short-conv tails.
Forms:  gated_delta_rule_parallel (definition (3), oracle) · gated_delta_rule_recurrent (decode) ·
        gated_delta_rule_chunk (training, (4))
Fast:   fast/gated_deltanet.py — chunk forward + backward (q, k, v, g, beta, initial state),
        recurrent forward.
Dtype:  computes in the input dtype (float64 is exact); fp16/bf16 inputs compute in float32 and
        return the input dtype; the final state is returned in the compute dtype.
Pitfalls:
  * g is a log decay: g > 0 is growth and raises ValueError (checked in eager mode only: under
    torch.compile the check would need a data-dependent branch, so it is skipped there). The check
    reads g on the host, a sync that stalls a GPU pipeline (0.14-0.6 ms a call on an H100; fast/
    reads its verdict only after queuing its kernels); `check_decay=False` skips it, and the layer
    passes that: its g = −e^{A_log}·softplus(·) is ≤ 0 by construction.
  * D is masked *before* exponentiating: above the diagonal Γ_i − Γ_j > 0 and e^{…} can overflow.
    Every exponent used here is ≤ 0, so nothing overflows; long decays underflow to an exact 0.
  * k must be unit-norm (the layer L2-normalises); the ops do not check it.
  * grouped value heads (num_v_heads > num_heads): the layer repeats q, k per value head
    (value head j reads key head j // (num_v_heads / num_heads), as fla does); the ops see HV heads.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

L2_NORM_EPS = 1e-6  # inside the sqrt, as fla's kernels do: keeps an all-zero q or k finite


# ------------------------------------------------------------------------------------------------
# Input checks and the prologue every form shares
# ------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, g, beta, initial_state, chunk_size=None):
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
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
    if k.shape != q.shape:
        raise ValueError(f"k must be [B, T, H, K] = {tuple(q.shape)} like q, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {(B, T, H)}, got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {tuple(x.shape)}")
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
    """g > 0 would grow the state. A value check needs a host sync and a data-dependent branch,
    so it runs in eager mode only."""
    if not torch.compiler.is_compiling() and bool((g > 0).any()):
        raise ValueError(f"g is a log decay and must be <= 0 (got max {g.max().item():.3g}); "
                         f"pass log(alpha), e.g. -exp(A_log) * softplus(a + dt_bias)")


def _prologue(q, k, v, g, beta, scale, initial_state, check_decay, chunk_size=None):
    """Checks, default scale, compute dtype; returns head-first tensors [B, H, T, ·] and S_0."""
    _check_inputs(q, k, v, g, beta, initial_state, chunk_size)
    if check_decay:
        _check_log_decay(g)
    B, T, H, K = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; f64 stays f64
    scale = K ** -0.5 if scale is None else scale
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))  # [B, H, T, ·]
    g, beta = (x.to(dtype).transpose(1, 2) for x in (g, beta))  # [B, H, T]
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)  # [B, H, K, V]
    return q * scale, k, v, g, beta, S


def _decay_matrix(gamma):
    """D_ij = e^{Γ_i − Γ_j} for j ≤ i, else 0. Masked before exp: above the diagonal the exponent
    is positive and could overflow."""
    L = gamma.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=gamma.device).tril()
    diff = gamma[..., :, None] - gamma[..., None, :]  # Γ_i − Γ_j  [..., L, L]
    return diff.masked_fill(~causal, float('-inf')).exp()  # e^{−∞} = 0 above the diagonal


# ------------------------------------------------------------------------------------------------
# The three forms
# ------------------------------------------------------------------------------------------------
def gated_delta_rule_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                              beta: torch.Tensor, *, scale: float | None = None,
                              initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                              check_decay: bool = True):
    """The definition (3): one unit lower-triangular [T, T] solve for all writes U at once.

    Args: q, k: [B, T, H, K] · v: [B, T, H, V] · g (log decay, ≤ 0), beta: [B, T, H] ·
          initial_state: [B, H, K, V] · check_decay: raise if g > 0 (eager mode; a host sync)
    Returns: o [B, T, H, V] (input dtype), final state [B, H, K, V] or None.
    """
    out_dtype = q.dtype
    q, k, v, g, beta, S0 = _prologue(q, k, v, g, beta, scale, initial_state, check_decay)
    T = q.shape[2]
    gamma = g.cumsum(-1)  # Γ_t  [B, H, T]
    D = _decay_matrix(gamma)  # [B, H, T, T]
    eye = torch.eye(T, dtype=q.dtype, device=q.device)
    A = (beta[..., None] * (k @ k.transpose(-1, -2)) * D).tril(-1)  # (3)  [B, H, T, T]
    rhs = beta[..., None] * (v - gamma.exp()[..., None] * (k @ S0))  # (3) diag(β)(V − diag(e^Γ)KS_0)
    u = torch.linalg.solve_triangular(eye + A, rhs, upper=False)  # (3) the writes U  [B, H, T, V]
    o = gamma.exp()[..., None] * (q @ S0) + ((q @ k.transpose(-1, -2)) * D) @ u  # (3)  [B, H, T, V]
    S = None
    if output_final_state:
        k_end = (gamma[..., -1:] - gamma).exp()[..., None] * k  # diag(e^{Γ_T − Γ}) K  [B, H, T, K]
        S = gamma[..., -1, None, None].exp() * S0 + k_end.transpose(-1, -2) @ u  # (3) S_T  [B, H, K, V]
    return o.transpose(1, 2).to(out_dtype), S


def gated_delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               beta: torch.Tensor, *, scale: float | None = None,
                               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                               check_decay: bool = True):
    """Token by token, (1)–(2): what decoding runs. Under torch.compile the loop is unrolled, so
    compile it only for small T. Args and returns as gated_delta_rule_parallel."""
    out_dtype = q.dtype
    q, k, v, g, beta, S = _prologue(q, k, v, g, beta, scale, initial_state, check_decay)
    o = []
    for t in range(q.shape[2]):
        k_t, v_t, b_t = k[:, :, t], v[:, :, t], beta[:, :, t, None]  # [B, H, K], [B, H, V], [B, H, 1]
        S = g[:, :, t, None, None].exp() * S  # (1) decay first: S̃ = e^{g_t} S_{t−1}
        u_t = b_t * (v_t - torch.einsum('bhk,bhkv->bhv', k_t, S))  # (1) β-weighted error on S̃
        S = S + torch.einsum('bhk,bhv->bhkv', k_t, u_t)  # (1) S_t = S̃ + k_t u_tᵀ
        o.append(torch.einsum('bhk,bhkv->bhv', q[:, :, t], S))  # (2) o_t = S_tᵀ(s q_t)
    o = torch.stack(o, dim=2) if o else v.new_zeros(v.shape)  # [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


def gated_delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, *, scale: float | None = None,
                           initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                           chunk_size: int = 64, check_decay: bool = True):
    """Chunkwise WY/UT form (4): what training runs and fast/ implements. chunk_size is the
    chunk length L (a power of two). Args and returns as gated_delta_rule_parallel."""
    out_dtype = q.dtype
    q, k, v, g, beta, S = _prologue(q, k, v, g, beta, scale, initial_state, check_decay, chunk_size)
    B, H, T, K = q.shape
    L = chunk_size
    N = -(-T // L)
    # Pad T up to N·L with zeros. A padded token has k = 0, β = 0 and g = 0: its transition is the
    # identity (no decay, no write), so the state and the real tokens' outputs are exact.
    pad = N * L - T
    q, k, v = (F.pad(x, (0, 0, 0, pad)).view(B, H, N, L, -1) for x in (q, k, v))  # [B, H, N, L, ·]
    g, beta = (F.pad(x, (0, pad)).view(B, H, N, L) for x in (g, beta))  # [B, H, N, L]
    eye = torch.eye(L, dtype=q.dtype, device=q.device)

    # Stage 1, intra-chunk (4): Γ restarts in every chunk; the WY factors need no state.
    gamma = g.cumsum(-1)  # Γ within the chunk  [B, H, N, L]
    D = _decay_matrix(gamma)  # [B, H, N, L, L]
    A = (beta[..., None] * (k @ k.transpose(-1, -2)) * D).tril(-1)  # (4)  [B, H, N, L, L]
    W = torch.linalg.solve_triangular(eye + A, (beta * gamma.exp())[..., None] * k, upper=False)  # [B, H, N, L, K]
    X = torch.linalg.solve_triangular(eye + A, beta[..., None] * v, upper=False)  # [B, H, N, L, V]
    qk = (q @ k.transpose(-1, -2)) * D  # s Q Kᵀ ⊙ D  [B, H, N, L, L]
    q_in = gamma.exp()[..., None] * q  # diag(e^Γ) sQ: how much of the entering state q sees
    k_out = (gamma[..., -1:] - gamma).exp()[..., None] * k  # diag(e^{Γ_L − Γ}) K  [B, H, N, L, K]
    decay = gamma[..., -1].exp()  # e^{Γ_L}: the whole chunk's decay  [B, H, N]

    # Stage 2, state pass: U = X − W S needs the state entering the chunk, so this loop is sequential.
    o = []
    for n in range(N):
        u = X[:, :, n] - W[:, :, n] @ S  # (4) the writes of chunk n  [B, H, L, V]
        # Stage 3, inter-chunk + intra-chunk outputs: the decayed old state, plus the writes.
        o.append(q_in[:, :, n] @ S + qk[:, :, n] @ u)  # (4)  [B, H, L, V]
        S = decay[:, :, n, None, None] * S + k_out[:, :, n].transpose(-1, -2) @ u  # (4) S ←  [B, H, K, V]
    o = torch.cat(o, dim=2)[:, :, :T]  # [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


# ------------------------------------------------------------------------------------------------
# The layer (fla's GatedDeltaNet: same arguments, defaults, parameter names and shapes)
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


class GatedDeltaNet(nn.Module):
    """fla's GatedDeltaNet layer: q, k, v projections with short causal convolutions (SiLU),
    L2-normalised q and k, β = σ(b_proj x) (×2 with allow_neg_eigval), the Mamba2-style gate
    g = −e^{A_log}·softplus(a_proj x + dt_bias), the gated delta rule, a per-head RMSNorm gated by
    g_proj x (use_gate) and o_proj. num_v_heads > num_heads shares each q/k head among
    num_v_heads / num_heads value heads. State dicts load both ways with fla's layer.
    `form` picks the op forward and prefill use; step always runs the recurrent op.
    Decode cache: {"S": [B, HV, K, V]} plus, with short convs, "conv_q", "conv_k" [B, key_dim, W−1]
    and "conv_v" [B, value_dim, W−1]. (fla's own cache stores S value-first: transpose to swap.)"""

    parallel_op = staticmethod(gated_delta_rule_parallel)
    recurrent_op = staticmethod(gated_delta_rule_recurrent)
    chunk_op = staticmethod(gated_delta_rule_chunk)

    def __init__(self, hidden_size: int = 2048, expand_v: float = 2, head_dim: int = 256,
                 num_heads: int = 6, num_v_heads: int | None = None, use_gate: bool = True,
                 use_short_conv: bool = True, allow_neg_eigval: bool = False, conv_size: int = 4,
                 conv_bias: bool = False, norm_eps: float = 1e-5, form: str = 'chunk'):
        super().__init__()
        HV = num_heads if num_v_heads is None else num_v_heads
        if HV % num_heads:
            raise ValueError(f"num_v_heads={HV} must be a multiple of num_heads={num_heads}")
        if head_dim * expand_v != int(head_dim * expand_v):
            raise ValueError(f"head_dim * expand_v = {head_dim * expand_v} must be an integer")
        if form not in ('chunk', 'recurrent', 'parallel'):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.hidden_size, self.num_heads, self.num_v_heads, self.form = hidden_size, num_heads, HV, form
        self.head_k_dim, self.head_v_dim = head_dim, int(head_dim * expand_v)
        self.key_dim, self.value_dim = num_heads * head_dim, HV * self.head_v_dim
        self.use_gate, self.use_short_conv, self.allow_neg_eigval = use_gate, use_short_conv, allow_neg_eigval
        self.conv_size = conv_size
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden_size, HV, bias=False)
        self.b_proj = nn.Linear(hidden_size, HV, bias=False)
        # fla's (Mamba2's) gate init: decay rates A ~ U(0, 16), step sizes dt log-uniform in
        # [1e-3, 0.1] (floored at 1e-4), stored as softplus⁻¹(dt) so softplus(a + dt_bias) ≈ dt at a = 0.
        self.A_log = nn.Parameter(torch.empty(HV).uniform_(0, 16).log())
        dt = torch.exp(torch.rand(HV) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        if use_short_conv:  # fla's ShortConvolution is an nn.Conv1d: same names and shapes
            for name, dim in (('q_conv1d', self.key_dim), ('k_conv1d', self.key_dim), ('v_conv1d', self.value_dim)):
                setattr(self, name, nn.Conv1d(dim, dim, conv_size, groups=dim, padding=conv_size - 1, bias=conv_bias))
        if use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_norm = nn.RMSNorm(self.head_v_dim, eps=norm_eps)  # holds o_norm.weight; math in rms_norm
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def _mix(self, x, op, cache, output_final_state):
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, C] with C = {self.hidden_size}, got {tuple(x.shape)}")
        B, T, _ = x.shape
        H, HV = self.num_heads, self.num_v_heads
        cache = cache or {}
        new_cache = {}
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, key_dim], ..., [B, T, value_dim]
        if self.use_short_conv:
            q, new_cache['conv_q'] = short_conv(self.q_conv1d, q, cache.get('conv_q'), True)
            k, new_cache['conv_k'] = short_conv(self.k_conv1d, k, cache.get('conv_k'), True)
            v, new_cache['conv_v'] = short_conv(self.v_conv1d, v, cache.get('conv_v'), True)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k = (l2_norm(t.view(B, T, H, self.head_k_dim)) for t in (q, k))  # unit-norm  [B, T, H, K]
        q, k = (t.repeat_interleave(HV // H, dim=2) for t in (q, k))  # value head j reads j // (HV/H)  [B, T, HV, K]
        v = v.view(B, T, HV, self.head_v_dim)  # [B, T, HV, V]
        beta = self.b_proj(x).sigmoid()  # [B, T, HV]
        beta = beta * 2 if self.allow_neg_eigval else beta  # β ∈ (0, 2): eigenvalue 1 − β ∈ (−1, 1)
        a = self.a_proj(x).to(torch.promote_types(x.dtype, torch.float32))  # the gate in ≥ float32
        g = -self.A_log.to(a.dtype).exp() * F.softplus(a + self.dt_bias.to(a.dtype))  # log decay ≤ 0  [B, T, HV]
        o, new_cache['S'] = op(q, k, v, g, beta, initial_state=cache.get('S'), output_final_state=output_final_state,
                               check_decay=False)  # g ≤ 0 by construction: no host sync for the check
        gate = self.g_proj(x).view(B, T, HV, self.head_v_dim) if self.use_gate else None
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
        tails = (self.conv_size - 1) * (2 * self.key_dim + self.value_dim) if self.use_short_conv else 0
        return self.num_v_heads * self.head_k_dim * self.head_v_dim + tails


__all__ = ["gated_delta_rule_parallel", "gated_delta_rule_recurrent", "gated_delta_rule_chunk", "l2_norm",
           "short_conv", "rms_norm", "GatedDeltaNet"]
