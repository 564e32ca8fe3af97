"""Based — linear attention whose feature map is the 2nd-order Taylor expansion of exp.

Paper: Simple linear attention language models balance the recall-throughput tradeoff.
       Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra, Ré. ICML 2024. arXiv:2402.18668.
       Code read: HazyResearch/based@32c1bd4 (mixers/linear_attention.py), fla ops/based/naive.py.
Idea:  exp(q·k) is replaced by its Taylor polynomial 1 + s + s²/2, which is exactly an inner
       product of finite features φ(q)·φ(k) (1 + d' + d'² of them for q, k of width d'). Attention
       then becomes linear attention: a running state Σ φ(k) vᵀ, read out by φ(q). The polynomial
       is ≥ 1/2 for every s, so the normaliser never vanishes or changes sign. Based pairs this
       global, blurry memory with a short sliding window for the precise local part
       (zoo/sliding_window_attention.py).
Math (per head; s_ij = c·q_i·k_j, c = scale, default d'^-1/2):
  (1) φ(x) = [1, √c·x, (c/√2)·vec(x xᵀ)]                 so φ(q)·φ(k) = 1 + s + s²/2 = ((s+1)² + 1)/2 ≥ 1/2
      symmetric variant: [1, √c·x, (c/√2)·x_a², c·x_a x_b (a > b)]   same inner product, 1 + d' + d'(d'+1)/2 wide
  (2) S_t = S_{t-1} + φ(k_t) v_tᵀ,   z_t = z_{t-1} + φ(k_t)                        (recurrent state)
  (3) o_t = φ(q_t)ᵀ S_t / (φ(q_t)·z_t + ε)                                          (ε = 1e-6)
  (4) parallel: A = (1 + s + s²/2) ⊙ M,  O = A V / (A 1 + ε)                         (M causal mask)
  (5) chunk n (length L): o = [A_nn V_n + φ(Q_n) S_{n-1}] / [A_nn 1 + φ(Q_n) z_{n-1} + ε]
      where S_{n-1}, z_{n-1} hold every earlier chunk. Split by order (what fast/ computes):
      φ(q)ᵀS = S⁰ + √c·qᵀS¹ + (c/√2)·(q⊗q)ᵀS²  with S⁰ = Σ v, S¹ = Σ k vᵀ, S² = Σ (k⊗k) vᵀ.
Shapes: q, k [B, T, H, K] (K = d' = feature_dim)  v [B, T, H, V]  o [B, T, H, V]
        state (S [B, H, M, V], z [B, H, M]) with M = 1 + K + K² (the full map (1): 273 for K = 16)
Cost:  parallel O(T²(K+V)) time, O(T²) memory | recurrent O(T·M·V), state M·(V+1) per head |
       chunk O(T·L·(K+V) + T·M·V) time, O(T·L + (T/L)·M·V) memory.
Forms: based_parallel (definition, the oracle) · based_recurrent (token loop, decoding) ·
       based_chunk (chunkwise, training).
Fast:  fast/based.py — chunk fwd+bwd without materialising φ (kernel on the fly, state by order),
       recurrent (decode) fwd.
Pitfalls: zero-padded keys are not neutral (φ(0) = [1, 0, 0] adds 1 to z): mask them, don't pad.
          The state is M = 273 rows per head for d' = 16: it grows with d'², the price of recall.
          scale enters φ as √c and c/√2, so changing scale changes the state, not only the readout.
Dtype: computed in the input dtype (float64 tests are exact); fp16/bf16 inputs are computed in
       float32 and the output cast back; the final state stays float32.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6  # normaliser floor (fla's value; the reference's 1e-12 only matters when T = 0)


# ------------------------------------------------------------------------------------------------
# Input checks and the shared prologue
# ------------------------------------------------------------------------------------------------
def feature_count(K: int) -> int:
    """Width M of the full Taylor map (1) for keys of width K: 1 + K + K²."""
    return 1 + K + K * K


def _check(q, k, v, scale, initial_state, chunk_size):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, T, H, D], got a {x.dim()}-d tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k must be [B, T, H, K] = {tuple(q.shape)} like q (feature_dim K must match), "
                         f"got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if initial_state is not None:
        B, _, H, K = q.shape
        M, V = feature_count(K), v.shape[-1]
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            raise TypeError("initial_state must be a pair (S [B, H, M, V], z [B, H, M])")
        S0, z0 = initial_state
        if tuple(S0.shape) != (B, H, M, V) or tuple(z0.shape) != (B, H, M):
            raise ValueError(f"initial_state must be (S [B, H, M, V], z [B, H, M]) = ({(B, H, M, V)}, "
                             f"{(B, H, M)}) with M = 1 + K + K² for feature_dim K = {K}, "
                             f"got ({tuple(S0.shape)}, {tuple(z0.shape)})")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be None or a Python number, got {type(scale).__name__}")
    if chunk_size is not None and (chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")


def _prologue(q, k, v, scale, initial_state, chunk_size=None):
    """Checks, default scale, float32 for half inputs, zero state when none is given."""
    _check(q, k, v, scale, initial_state, chunk_size)
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else float(scale)
    dt = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> float32; float64 stays
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if initial_state is None:
        S0 = q.new_zeros(B, H, feature_count(K), v.shape[-1])
        z0 = q.new_zeros(B, H, feature_count(K))
    else:
        S0, z0 = (x.to(dt) for x in initial_state)
    return q, k, v, scale, S0, z0


# ------------------------------------------------------------------------------------------------
# Helpers: the Taylor kernel and its two feature maps
# ------------------------------------------------------------------------------------------------
def taylor_kernel(s: torch.Tensor) -> torch.Tensor:
    """1 + s + s²/2: exp(s) to second order, = ((s + 1)² + 1)/2 ≥ 1/2."""
    return 1 + s + 0.5 * s * s


def taylor_features(x: torch.Tensor, scale: float) -> torch.Tensor:
    """(1) φ(x) = [1, √c·x, (c/√2)·vec(x xᵀ)], so φ(q)·φ(k) = 1 + c q·k + (c q·k)²/2."""
    ones = x.new_ones(x.shape[:-1] + (1,))  # [..., 1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # [..., K²]
    return torch.cat([ones, math.sqrt(scale) * x, (scale / math.sqrt(2)) * outer], dim=-1)  # [..., M]


def taylor_features_symmetric(x: torch.Tensor, scale: float) -> torch.Tensor:
    """(1) symmetric variant: each product x_a x_b once. The pairs a > b appear twice in vec(x xᵀ),
    so they get c instead of c/√2 (their two copies of (c/√2)² sum to c²)."""
    K = x.shape[-1]
    a, b = torch.tril_indices(K, K, offset=-1, device=x.device)  # [K(K-1)/2] each
    ones = x.new_ones(x.shape[:-1] + (1,))
    diag = (scale / math.sqrt(2)) * x * x  # [..., K]
    off = scale * x[..., a] * x[..., b]  # [..., K(K-1)/2]
    return torch.cat([ones, math.sqrt(scale) * x, diag, off], dim=-1)  # [..., 1 + K + K(K+1)/2]


def _finish(o, z, normalize, out_dtype):
    """(3) divide by the normaliser (or not) and return in the caller's dtype."""
    if normalize:
        o = o / (z.unsqueeze(-1) + EPS)
    return o.to(out_dtype)


# ------------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------------
def based_parallel(q, k, v, *, causal=True, normalize=True, scale=None, initial_state=None,
                   output_final_state=False):
    """(4) The definition: the [T, T] kernel matrix, masked, times V. The oracle of the tests.
    An initial state adds its readout φ(q)ᵀS₀ to every row. Returns (o [B, T, H, V], (S, z) or None)."""
    dtype = q.dtype
    q, k, v, scale, S0, z0 = _prologue(q, k, v, scale, initial_state)
    T = q.shape[1]
    s = scale * torch.einsum("bihk,bjhk->bhij", q, k)  # [B, H, T, T]
    A = taylor_kernel(s)  # (4) [B, H, T, T]
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        A = A.masked_fill(~mask, 0)
    phi_q = taylor_features(q, scale)  # [B, T, H, M] (only for the initial state's readout)
    o = torch.einsum("bhij,bjhv->bihv", A, v) + torch.einsum("bthm,bhmv->bthv", phi_q, S0)  # [B, T, H, V]
    z = A.sum(-1).transpose(1, 2) + torch.einsum("bthm,bhm->bth", phi_q, z0)  # [B, T, H]
    final = None
    if output_final_state:
        phi_k = taylor_features(k, scale)  # [B, T, H, M]
        final = (S0 + torch.einsum("bthm,bthv->bhmv", phi_k, v), z0 + phi_k.sum(1))
    return _finish(o, z, normalize, dtype), final


def based_recurrent(q, k, v, *, causal=True, normalize=True, scale=None, initial_state=None,
                    output_final_state=False):
    """(2)-(3) Token by token with the state (S, z) in feature space: how decoding runs.
    Non-causal: every query reads the state after the whole sequence. The loop is unrolled by
    torch.compile: compile it only at small T. Returns (o [B, T, H, V], (S, z) or None)."""
    dtype = q.dtype
    q, k, v, scale, S, z = _prologue(q, k, v, scale, initial_state)
    phi_q, phi_k = taylor_features(q, scale), taylor_features(k, scale)  # [B, T, H, M]
    if not causal:
        S = S + torch.einsum("bthm,bthv->bhmv", phi_k, v)  # (2) summed over all t
        z = z + phi_k.sum(1)
        o = torch.einsum("bthm,bhmv->bthv", phi_q, S)  # (3) numerator for every t
        den = torch.einsum("bthm,bhm->bth", phi_q, z)
        return _finish(o, den, normalize, dtype), ((S, z) if output_final_state else None)
    outs, dens = [], []
    for t in range(q.shape[1]):
        S = S + phi_k[:, t, :, :, None] * v[:, t, :, None, :]  # (2) [B, H, M, V]
        z = z + phi_k[:, t]  # (2) [B, H, M]
        outs.append(torch.einsum("bhm,bhmv->bhv", phi_q[:, t], S))  # (3) numerator [B, H, V]
        dens.append((phi_q[:, t] * z).sum(-1))  # (3) normaliser [B, H]
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    den = torch.stack(dens, dim=1)  # [B, T, H]
    return _finish(o, den, normalize, dtype), ((S, z) if output_final_state else None)


def based_chunk(q, k, v, *, causal=True, normalize=True, scale=None, initial_state=None,
                output_final_state=False, chunk_size=64):
    """(5) Chunkwise: quadratic inside a chunk of L tokens, the state across chunks. What training
    uses and fast/ implements. Returns (o [B, T, H, V], (S, z) or None)."""
    dtype = q.dtype
    q, k, v, scale, S0, z0 = _prologue(q, k, v, scale, initial_state, chunk_size)
    B, T, H, K = q.shape
    L = chunk_size
    N = -(-T // L)
    # Pad T to N·L. Zero keys are not neutral here (φ(0) = [1, 0, 0] adds 1 to z), so padded keys
    # are masked out of A and the state by `valid`; padded queries are sliced off at the end.
    pad = N * L - T
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    valid = (torch.arange(N * L, device=q.device) < T).view(1, N, L, 1, 1)  # [1, N, L, 1, 1]
    q_c, k_c, v_c = (x.view(B, N, L, H, x.shape[-1]) for x in (q, k, v))  # [B, N, L, H, *]
    phi_q_c = taylor_features(q_c, scale)  # [B, N, L, H, M]
    phi_k_c = taylor_features(k_c, scale) * valid  # [B, N, L, H, M], padded keys zeroed

    # state pass, (2) summed per chunk: dS_n = Σ_{j in n} φ(k_j) v_jᵀ, then S before each chunk.
    dS = torch.einsum("bnjhm,bnjhv->bnhmv", phi_k_c, v_c)  # [B, N, H, M, V]
    dz = phi_k_c.sum(2)  # [B, N, H, M]
    S_final, z_final = S0 + dS.sum(1), z0 + dz.sum(1)
    if not causal:  # every query reads the state after the whole sequence
        o = torch.einsum("bnihm,bhmv->bnihv", phi_q_c, S_final)  # [B, N, L, H, V]
        den = torch.einsum("bnihm,bhm->bnih", phi_q_c, z_final)  # [B, N, L, H]
    else:
        # S_{n-1}: the exclusive prefix sum, shifted by one chunk. (cumsum − dS would round
        # differently when later chunks change: the future would leak through rounding.)
        S_c = torch.cat([S0.unsqueeze(1), S0.unsqueeze(1) + torch.cumsum(dS, 1)[:, :-1]], 1)  # [B, N, H, M, V]
        z_c = torch.cat([z0.unsqueeze(1), z0.unsqueeze(1) + torch.cumsum(dz, 1)[:, :-1]], 1)  # [B, N, H, M]
        # intra-chunk, (4) on the diagonal block: the kernel computed directly, no features.
        s = scale * torch.einsum("bnihk,bnjhk->bnhij", q_c, k_c)  # [B, N, H, L, L]
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril() & valid.view(1, N, 1, 1, L)
        A = taylor_kernel(s).masked_fill(~mask, 0)  # [B, N, H, L, L]
        o_intra = torch.einsum("bnhij,bnjhv->bnihv", A, v_c)  # [B, N, L, H, V]
        z_intra = A.sum(-1).transpose(2, 3)  # [B, N, L, H]
        # inter-chunk, (5): read the state of all earlier chunks with φ(q).
        o_inter = torch.einsum("bnihm,bnhmv->bnihv", phi_q_c, S_c)  # [B, N, L, H, V]
        z_inter = torch.einsum("bnihm,bnhm->bnih", phi_q_c, z_c)  # [B, N, L, H]
        o, den = o_intra + o_inter, z_intra + z_inter
    o = o.reshape(B, N * L, H, -1)[:, :T]  # [B, T, H, V]
    den = den.reshape(B, N * L, H)[:, :T]  # [B, T, H]
    return _finish(o, den, normalize, dtype), ((S_final, z_final) if output_final_state else None)


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
class BasedLinearAttention(nn.Module):
    """Based's linear-attention mixer. Parameter names as the reference's LinearAttention
    (proj_q, proj_k, proj_v, out_proj, no biases), so its checkpoints load unchanged.
    q, k are projected to feature_dim per head (small: the state grows with its square);
    v to head_dim (default hidden_size / num_heads). The decode cache is {"kv": S [B, H, M, V],
    "k_state": z [B, H, M]}, named as the reference's recurrent state (which stores kv transposed)."""

    parallel_op = staticmethod(based_parallel)
    recurrent_op = staticmethod(based_recurrent)
    chunk_op = staticmethod(based_chunk)

    def __init__(self, hidden_size: int, num_heads: int, feature_dim: int = 16, head_dim: int | None = None,
                 form: str = "chunk"):
        super().__init__()
        if form not in ("chunk", "recurrent", "parallel"):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
            head_dim = hidden_size // num_heads
        self.hidden_size, self.num_heads, self.form = hidden_size, num_heads, form
        self.feature_dim, self.head_dim = feature_dim, head_dim
        self.proj_q = nn.Linear(hidden_size, num_heads * feature_dim, bias=False)
        self.proj_k = nn.Linear(hidden_size, num_heads * feature_dim, bias=False)
        self.proj_v = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.out_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def _qkv(self, x):
        B, T, _ = x.shape
        q = self.proj_q(x).view(B, T, self.num_heads, self.feature_dim)  # [B, T, H, K]
        k = self.proj_k(x).view(B, T, self.num_heads, self.feature_dim)  # [B, T, H, K]
        v = self.proj_v(x).view(B, T, self.num_heads, self.head_dim)  # [B, T, H, V]
        return q, k, v

    def _mix(self, x, initial_state, output_final_state):
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, C] with C = {self.hidden_size}, got {tuple(x.shape)}")
        q, k, v = self._qkv(x)
        op = {"chunk": self.chunk_op, "recurrent": self.recurrent_op, "parallel": self.parallel_op}[self.form]
        o, state = op(q, k, v, initial_state=initial_state, output_final_state=output_final_state)
        return self.out_proj(o.reshape(x.shape[0], x.shape[1], -1)), state  # [B, T, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None, False)[0]

    def prefill(self, x: torch.Tensor):
        """Forward that also returns the decode cache {"kv", "k_state"} after the last token."""
        y, (S, z) = self._mix(x, None, True)
        return y, {"kv": S, "k_state": z}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """One token x_t [B, C] -> (y_t [B, C], new cache), with (2)-(3) on the cached state."""
        state = None if cache is None else (cache["kv"], cache["k_state"])
        q, k, v = self._qkv(x_t.unsqueeze(1))  # [B, 1, H, *]
        o, (S, z) = self.recurrent_op(q, k, v, initial_state=state, output_final_state=True)
        return self.out_proj(o.reshape(x_t.shape[0], -1)), {"kv": S, "k_state": z}

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence in the cache: H·M·(V + 1), whatever seq_len."""
        return self.num_heads * feature_count(self.feature_dim) * (self.head_dim + 1)


__all__ = ["feature_count", "taylor_kernel", "taylor_features", "taylor_features_symmetric",
           "based_parallel", "based_recurrent", "based_chunk", "BasedLinearAttention"]
