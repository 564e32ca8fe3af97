"""DeltaNet — linear attention whose state is trained online by the delta rule.

Paper:  Parallelizing Linear Transformers with the Delta Rule over Sequence Length. Songlin Yang,
        Bailin Wang, Yu Zhang, Yikang Shen, Yoon Kim. NeurIPS 2024. arXiv:2406.06484.
        (The rule itself: Schlag, Irie, Schmidhuber, Linear Transformers Are Secretly Fast Weight
        Programmers, ICML 2021, arXiv:2102.11174.)   Layer written from: fla-org/flash-linear-attention
        fla/layers/delta_net.py (0.6.0): same parameter names and shapes (a GPU test loads fla's
        weights both ways and compares outputs where fla is installed).
Idea:   The state S maps keys to values. Each token takes one gradient step on the regression
        loss ½‖Sᵀk_t − v_t‖² with step size β_t: it first reads what S predicts for k_t, then writes
        only the error. Old associations are overwritten instead of piling up as in linear
        attention. The recurrence is sequential, but within a chunk the writes solve a unit
        lower-triangular system (the WY/UT form), so training runs as matmuls.

Math (per head, causal; state S ∈ ℝ^{K×V}, k_t unit-norm, s = scale):
  (1) u_t = β_t (v_t − S_{t−1}ᵀ k_t)          S_t = S_{t−1} + k_t u_tᵀ = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ
  (2) o_t = S_tᵀ (s q_t)                        (the output reads the *updated* state)
  (3) parallel, start state S_0: (1) unrolled is the unit lower-triangular system
        (I + A) U = diag(β) (V − K S_0),   A = tril(diag(β) K Kᵀ, −1)                    [T, T]
      O = s Q S_0 + tril(s Q Kᵀ) U,   S_T = S_0 + Kᵀ U     (tril includes the diagonal)
  (4) chunk n (L rows, start state S): (3) on the chunk, split into the WY factors
        W = (I + A)⁻¹ diag(β) K,  X = (I + A)⁻¹ diag(β) V   (state-free, all chunks at once)
        U = X − W S   ·   o = s Q S + tril(s Q Kᵀ) U   ·   S ← S + Kᵀ U
Shapes: q, k [B, T, H, K]   v [B, T, H, V]   beta [B, T, H]   o [B, T, H, V]   S [B, H, K, V]
Cost:   parallel O(T²(K+V) + T³) time, O(T²) memory (the triangular solve) · recurrent O(T·K·V)
        time · chunk O(T·L·(K+V) + T·K·V) time, O(T·L) memory · decode state K·V per head, plus
        the short-conv tails (conv_size − 1)·(2·key_dim + value_dim) floats per sequence.
Forms:  delta_rule_parallel (definition (3), oracle) · delta_rule_recurrent (decode, (1)–(2)) ·
        delta_rule_chunk (training, (4))
Fast:   fast/deltanet.py — chunk forward + backward (q, k, v, beta, initial state), recurrent forward.
Dtype:  computes in the input dtype (float64 is exact); fp16/bf16 inputs compute in float32 and
        return the input dtype; the final state is returned in the compute dtype.
Pitfalls:
  * k must be unit-norm (the layer L2-normalises): I − βkkᵀ has eigenvalue 1 − β‖k‖², so an
    unnormalised k with β‖k‖² > 2 makes the state grow without bound. The ops do not check it.
  * β ∈ (0, 1]; with allow_neg_eigval the layer uses β ∈ (0, 2) so 1 − β can be negative.
  * a half-precision initial state is refused: the state accumulates over the whole sequence.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

L2_NORM_EPS = 1e-6  # inside the sqrt, as fla's kernels do: keeps an all-zero q or k finite
SUM_NORM_EPS = 1e-6  # fla 0.6.0's qk_norm='sum' is an L1 normalisation with this floor


# ------------------------------------------------------------------------------------------------
# Input checks and the prologue every form shares
# ------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, beta, initial_state, chunk_size=None):
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta)):
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
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
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


def _prologue(q, k, v, beta, scale, initial_state, chunk_size=None):
    """Checks, default scale, compute dtype; returns head-first tensors [B, H, T, ·] and S_0."""
    _check_inputs(q, k, v, beta, initial_state, chunk_size)
    B, T, H, K = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; f64 stays f64
    scale = K ** -0.5 if scale is None else scale
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))  # [B, H, T, ·]
    beta = beta.to(dtype).transpose(1, 2)  # [B, H, T]
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)  # [B, H, K, V]
    return q * scale, k, v, beta, S


# ------------------------------------------------------------------------------------------------
# The three forms
# ------------------------------------------------------------------------------------------------
def delta_rule_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
                        scale: float | None = None, initial_state: torch.Tensor | None = None,
                        output_final_state: bool = False):
    """The definition (3): one unit lower-triangular [T, T] solve for all writes U at once.

    Args: q, k: [B, T, H, K] · v: [B, T, H, V] · beta: [B, T, H] · initial_state: [B, H, K, V]
    Returns: o [B, T, H, V] (input dtype), final state [B, H, K, V] or None.
    """
    out_dtype = q.dtype
    q, k, v, beta, S0 = _prologue(q, k, v, beta, scale, initial_state)
    T = q.shape[2]
    eye = torch.eye(T, dtype=q.dtype, device=q.device)
    A = (beta[..., None] * (k @ k.transpose(-1, -2))).tril(-1)  # (3) A = tril(diag(β) K Kᵀ, −1)  [B, H, T, T]
    rhs = beta[..., None] * (v - k @ S0)  # (3) diag(β)(V − K S_0)  [B, H, T, V]
    u = torch.linalg.solve_triangular(eye + A, rhs, upper=False)  # (3) the writes U  [B, H, T, V]
    o = q @ S0 + (q @ k.transpose(-1, -2)).tril() @ u  # (3) O = sQS_0 + tril(sQKᵀ)U  [B, H, T, V]
    S = S0 + k.transpose(-1, -2) @ u if output_final_state else None  # (3) S_T  [B, H, K, V]
    return o.transpose(1, 2).to(out_dtype), S


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
                         scale: float | None = None, initial_state: torch.Tensor | None = None,
                         output_final_state: bool = False):
    """Token by token, (1)–(2): what decoding runs. Under torch.compile the loop is unrolled, so
    compile it only for small T. Args and returns as delta_rule_parallel."""
    out_dtype = q.dtype
    q, k, v, beta, S = _prologue(q, k, v, beta, scale, initial_state)
    o = []
    for t in range(q.shape[2]):
        k_t, v_t, b_t = k[:, :, t], v[:, :, t], beta[:, :, t, None]  # [B, H, K], [B, H, V], [B, H, 1]
        v_hat = torch.einsum('bhk,bhkv->bhv', k_t, S)  # (1) what S predicts for k_t
        u_t = b_t * (v_t - v_hat)  # (1) the β-weighted error
        S = S + torch.einsum('bhk,bhv->bhkv', k_t, u_t)  # (1) S_t = S_{t−1} + k_t u_tᵀ
        o.append(torch.einsum('bhk,bhkv->bhv', q[:, :, t], S))  # (2) o_t = S_tᵀ(s q_t)
    o = torch.stack(o, dim=2) if o else v.new_zeros(v.shape)  # [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


def delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
                     scale: float | None = None, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, chunk_size: int = 64):
    """Chunkwise WY/UT form (4): what training runs and fast/ implements. chunk_size is the
    chunk length L (a power of two). Args and returns as delta_rule_parallel."""
    out_dtype = q.dtype
    q, k, v, beta, S = _prologue(q, k, v, beta, scale, initial_state, chunk_size)
    B, H, T, K = q.shape
    L = chunk_size
    N = -(-T // L)
    # Pad T up to N·L with zeros. A padded token has k = 0 and β = 0: its transition I − βkkᵀ is
    # the identity and it writes nothing, so the state and the real tokens' outputs are exact.
    pad = N * L - T
    q, k, v = (F.pad(x, (0, 0, 0, pad)).view(B, H, N, L, -1) for x in (q, k, v))  # [B, H, N, L, ·]
    beta = F.pad(beta, (0, pad)).view(B, H, N, L)  # [B, H, N, L]
    eye = torch.eye(L, dtype=q.dtype, device=q.device)

    # Stage 1, intra-chunk (4): the WY factors W, X depend on no state, so every chunk at once.
    A = (beta[..., None] * (k @ k.transpose(-1, -2))).tril(-1)  # (3) on each chunk  [B, H, N, L, L]
    W = torch.linalg.solve_triangular(eye + A, beta[..., None] * k, upper=False)  # [B, H, N, L, K]
    X = torch.linalg.solve_triangular(eye + A, beta[..., None] * v, upper=False)  # [B, H, N, L, V]
    qk = (q @ k.transpose(-1, -2)).tril()  # tril(sQKᵀ), diagonal included  [B, H, N, L, L]

    # Stage 2, state pass: U = X − W S needs the state entering the chunk, so this loop is sequential.
    o = []
    for n in range(N):
        u = X[:, :, n] - W[:, :, n] @ S  # (4) the writes of chunk n  [B, H, L, V]
        # Stage 3, inter-chunk + intra-chunk outputs: the old state seen through q, plus the writes.
        o.append(q[:, :, n] @ S + qk[:, :, n] @ u)  # (4) o = sQS + tril(sQKᵀ)U  [B, H, L, V]
        S = S + k[:, :, n].transpose(-1, -2) @ u  # (4) S ← S + KᵀU  [B, H, K, V]
    o = torch.cat(o, dim=2)[:, :, :T]  # [B, H, T, V]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


# ------------------------------------------------------------------------------------------------
# The layer (fla's DeltaNet: same arguments, defaults, parameter names and shapes)
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


class DeltaNet(nn.Module):
    """fla's DeltaNet layer: q, k, v projections, short causal convolutions (SiLU), L2-normalised
    q and k, β = σ(b_proj x) (×2 with allow_neg_eigval), the delta rule, a per-head RMSNorm
    (gated by g_proj x when use_gate) and o_proj. State dicts load both ways with fla's layer.
    `form` picks the op forward and prefill use; step always runs the recurrent op.
    Decode cache: {"S": [B, H, K, V]} plus, with short convs, "conv_q", "conv_k" [B, key_dim, W−1]
    and "conv_v" [B, value_dim, W−1] (the last W − 1 projected inputs)."""

    parallel_op = staticmethod(delta_rule_parallel)
    recurrent_op = staticmethod(delta_rule_recurrent)
    chunk_op = staticmethod(delta_rule_chunk)

    def __init__(self, hidden_size: int = 1024, num_heads: int = 4, expand_k: float = 1.0,
                 expand_v: float = 1.0, use_beta: bool = True, use_gate: bool = False,
                 use_short_conv: bool = True, conv_size: int = 4, conv_bias: bool = False,
                 allow_neg_eigval: bool = False, qk_activation: str = 'silu', qk_norm: str = 'l2',
                 norm_eps: float = 1e-5, form: str = 'chunk'):
        super().__init__()
        if qk_activation not in ('silu', 'relu', 'elu', 'identity'):
            raise ValueError(f"qk_activation must be 'silu', 'relu', 'elu' or 'identity', got {qk_activation!r}")
        if qk_norm not in ('l2', 'sum'):
            raise ValueError(f"qk_norm must be 'l2' or 'sum', got {qk_norm!r}")
        if form not in ('chunk', 'recurrent', 'parallel'):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(f"key_dim {self.key_dim} and value_dim {self.value_dim} must be "
                             f"divisible by num_heads {num_heads}")
        self.hidden_size, self.num_heads, self.form = hidden_size, num_heads, form
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.use_beta, self.use_gate, self.use_short_conv = use_beta, use_gate, use_short_conv
        self.conv_size, self.allow_neg_eigval = conv_size, allow_neg_eigval
        self.qk_activation, self.qk_norm = qk_activation, qk_norm
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        if use_beta:
            self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
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
        cache = cache or {}
        new_cache = {}
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, key_dim], ..., [B, T, value_dim]
        silu_qk = self.qk_activation == 'silu'
        if self.use_short_conv:  # SiLU inside the conv for q, k only when qk_activation is silu
            q, new_cache['conv_q'] = short_conv(self.q_conv1d, q, cache.get('conv_q'), silu_qk)
            k, new_cache['conv_k'] = short_conv(self.k_conv1d, k, cache.get('conv_k'), silu_qk)
            v, new_cache['conv_v'] = short_conv(self.v_conv1d, v, cache.get('conv_v'), True)
        else:
            q, k, v = (F.silu(q) if silu_qk else q), (F.silu(k) if silu_qk else k), F.silu(v)
        q, k = (t.view(B, T, self.num_heads, self.head_k_dim) for t in (q, k))  # [B, T, H, K]
        v = v.view(B, T, self.num_heads, self.head_v_dim)  # [B, T, H, V]
        if self.qk_activation == 'relu':
            q, k = q.relu(), k.relu()
        elif self.qk_activation == 'elu':
            q, k = F.elu(q) + 1, F.elu(k) + 1
        if self.qk_norm == 'l2':  # unit-norm keys: the delta rule's transition is a contraction
            q, k = l2_norm(q), l2_norm(k)
        else:
            q, k = F.normalize(q, p=1, dim=-1, eps=SUM_NORM_EPS), F.normalize(k, p=1, dim=-1, eps=SUM_NORM_EPS)
        beta = self.b_proj(x).sigmoid() if self.use_beta else x.new_ones(B, T, self.num_heads)  # [B, T, H]
        beta = beta * 2 if self.allow_neg_eigval else beta  # β ∈ (0, 2): eigenvalue 1 − β ∈ (−1, 1)
        o, new_cache['S'] = op(q, k, v, beta, initial_state=cache.get('S'), output_final_state=output_final_state)
        gate = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim) if self.use_gate else None
        o = rms_norm(o, self.o_norm.weight, self.o_norm.eps, gate)  # [B, T, H, V]
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
        """Floats per sequence in the cache, whatever seq_len: H·K·V plus the conv tails."""
        tails = (self.conv_size - 1) * (2 * self.key_dim + self.value_dim) if self.use_short_conv else 0
        return self.num_heads * self.head_k_dim * self.head_v_dim + tails


__all__ = ["delta_rule_parallel", "delta_rule_recurrent", "delta_rule_chunk", "l2_norm", "short_conv",
           "rms_norm", "DeltaNet"]
