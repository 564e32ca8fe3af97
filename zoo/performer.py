"""Performer (FAVOR+) — softmax attention estimated with positive orthogonal random features.

Paper: Rethinking Attention with Performers. Choromanski, Likhosherstov, Dohan, Song, Gane,
  Sarlos, Hawkins, Davis, Mohiuddin, Kaiser, Belanger, Colwell, Weller. ICLR 2021.
  arXiv:2009.14794.
Idea: the softmax kernel is an expectation over ω ~ N(0, I): exp(qᵀk) = E[exp(ωᵀq − ‖q‖²/2) ·
  exp(ωᵀk − ‖k‖²/2)]. Each factor is positive, so with M random ω (orthogonal blocks with chi
  lengths: lower variance, still unbiased) softmax attention becomes linear attention on M
  positive features, whose estimated normaliser can never be negative (compare HRC-LA's
  trigonometric features, zoo/hrc_la.py). The reference point for random-feature attention.

Math (per head; u = √scale·x so that uᵀu' = scale·xᵀx'; ω_r the rows of Ω [M, K]):
  (1) φ(u) = exp(Ωu − ‖u‖²/2)/√M ∈ ℝ^M_{>0},        E_Ω[φ(q)ᵀφ(k)] = exp(scale·qᵀk)
  (2) φ(u) = e^{a(u)} φ̂(u), a = max_r ω_rᵀu − ‖u‖²/2 (per row), φ̂ <= 1/√M. Queries: e^{a(q)}
      multiplies numerator and denominator alike: dropped. Keys: c_t = max_{j≤t} a_j (a prefix
      max: causal-safe; the paper's code takes one max over all keys, which leaks the future
      into a causal model) and w_tj = e^{a_j − c_t} ≤ 1. Both shifts cancel in (3).
  (3) parallel: A_tj = φ̂(q_t)ᵀφ̂(k_j) w_tj [j ≤ t],  o_t = Σ_j A_tj v_j / max(Σ_j A_tj, eps)
  (4) recurrent: c_t = max(c_{t−1}, a_t),  S_t = e^{c_{t−1}−c_t} S_{t−1} + e^{a_t−c_t} φ̂(k_t) v_tᵀ,
      z_t = the same with 1 for v_t,  o_t = φ̂(q_t)ᵀS_t / max(φ̂(q_t)ᵀz_t, eps)
  (5) chunk n (state S⁻, z⁻ at scale c⁻ from the chunks before): o_t = [e^{c⁻−c_t} φ̂_tᵀS⁻
      + Σ_{j in n, j≤t} A_tj v_j] / max(e^{c⁻−c_t} φ̂_tᵀz⁻ + Σ_j A_tj, eps)
  Non-causal: every query reads the state after the last token (c = the maximum over all keys).

Shapes: q, k [B, T, H, K]  v [B, T, H, V]  omega [H, M, K]  o [B, T, H, V]
  state (S [B, H, M, V], z [B, H, M], c [B, H] log-scale of S and z).
Cost: parallel O(T²(M+V)) time, O(T²) memory | recurrent/chunk O(T·M·(K+V)) time (chunk adds
  O(T·L·(M+V)) for the within-chunk matrix) | decode state H·(M·V + M + 1) floats per sequence.
Forms: performer_parallel (definition, oracle) · performer_recurrent (decode) · performer_chunk (training)
Fast: fast/performer.py — chunk fwd+bwd with the feature map fused, recurrent fwd for decoding.
Dtype: compute in the input dtype (float64 stays float64: the forms agree to 1e-10); fp16/bf16
  inputs compute in float32 and return the input dtype.
Pitfalls:
  - exp(ωᵀu − ‖u‖²/2) over- and underflows for large activations: the shifts of (2) keep every
    exponent <= 0; a key far below the running max underflows to weight 0, as in exact softmax.
  - a max over the whole sequence for the keys is not causal: the prefix max c_t is.
  - the estimate's variance grows like exp(‖q‖² + ‖k‖²)-ish: positive features keep the
    normaliser > 0, not the error small; redraw Ω (redraw_features) or raise M.
  - the floor eps only keeps 0/0 out when every weight underflows: o stays a convex combination
    of the v's, |o| <= max|v|.
  - padding the chunk form with zero keys is not exact (φ̂(0) ≠ 0): padded keys get weight 0.
"""

import math

import torch
import torch.nn as nn

# Floor of the denominator (units: the largest visible key weight is 1, the largest query
# feature 1/√M). Positive features need no sign guard; the floor only stops 0/0 when all weights
# underflow. 1e-30 is a normal number in fp32 (min 1.2e-38) and far below any informative value.
EPS_DENOMINATOR = 1e-30
ORF_SCALINGS = ("chi", "fixed")


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------
def _check_real(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")


def _check_inputs(q, k, v, omega, initial_state, chunk_size=None):
    for name, x in (("q", q), ("k", k), ("v", v), ("omega", omega)):
        _check_real(name, x)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must be [B, T, H, K] = {tuple(q.shape)} like q, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    B, T, H, K = q.shape
    if omega.dim() != 3 or omega.shape[0] != H or omega.shape[2] != K or omega.shape[1] < 1:
        raise ValueError(f"omega must be [H, M, K] with H={H}, K={K}, M>=1, got {tuple(omega.shape)}")
    if len({x.device for x in (q, k, v, omega)}) != 1:
        raise ValueError("q, k, v and omega must be on one device")
    if chunk_size is not None and (chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    if initial_state is not None:
        M, V = omega.shape[1], v.shape[-1]
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 3):
            raise TypeError("initial_state must be the tuple (S [B, H, M, V], z [B, H, M], c [B, H])")
        S, z, c = initial_state
        want = ((B, H, M, V), (B, H, M), (B, H))
        for name, x, shape in zip(("S", "z", "c"), (S, z, c), want):
            if tuple(x.shape) != shape:
                raise ValueError(f"initial_state {name} must be {list(shape)} ([B, H, ...]), got {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------------
# Random features
# ------------------------------------------------------------------------------------------------
def orthogonal_random_features(m: int, d: int, *, generator: torch.Generator | None = None,
                               scaling: str = "chi", dtype=torch.float32, device=None) -> torch.Tensor:
    """Ω [m, d]: stacked blocks of d orthonormal rows (QR of a Gaussian matrix), each row then
    given a length. scaling="chi": an independent chi(d) length (the norm of a fresh N(0, I_d)
    draw), so every row is marginally N(0, I_d) and (1) is unbiased. scaling="fixed": length √d
    for every row, as the public HRC-LA code does: a different, biased kernel. Drawn in float64
    on the CPU from `generator`, so a seed fixes Ω on every device and dtype."""
    if m < 1 or d < 1:
        raise ValueError(f"m and d must be >= 1, got m={m}, d={d}")
    if scaling not in ORF_SCALINGS:
        raise ValueError(f"scaling must be one of {ORF_SCALINGS}, got {scaling!r}")
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(g)
        # Sign fix: makes Q Haar-distributed, so each row's direction is uniform on the sphere.
        Q = Q * torch.sign(torch.diagonal(R))[None, :]
        blocks.append(Q.T)  # rows orthonormal
    omega = torch.cat(blocks)[:m]  # [M, K]
    if scaling == "chi":
        lengths = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1)
    else:
        lengths = torch.full((m,), math.sqrt(d), dtype=torch.float64)
    return (omega * lengths[:, None]).to(device=device, dtype=dtype)


def favor_feature_map(x: torch.Tensor, omega: torch.Tensor, *, scale: float | None = None):
    """(1)–(2): the positive feature φ(u) = exp(Ωu − ‖u‖²/2)/√M, u = √scale·x, returned as
    its two factors (phi_hat, a) with φ = e^a · phi_hat: a is the row's largest exponent, so
    phi_hat <= 1/√M and nothing overflows.

    Args:
        x: [B, T, H, K] real;  omega: [H, M, K]
    Returns:
        phi_hat: [B, T, H, M], 0 < phi_hat <= 1/√M;  a: [B, T, H], max_r (ω_rᵀu) − ‖u‖²/2
    """
    M, K = omega.shape[1], x.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    u = x * scale ** 0.5  # split √scale between q and k: uᵀu' = scale·qᵀk
    log_phi = torch.einsum('bthk,hmk->bthm', u, omega.to(u.dtype)) - 0.5 * (u * u).sum(-1, keepdim=True)
    # The per-row stabiliser, a constant to autograd: φ = e^a · e^{log φ − a} is the same function
    # of u for any a, so a carries no gradient and treating it as a constant is exact.
    a = log_phi.amax(-1).detach()  # [B, T, H]
    phi_hat = torch.exp(log_phi - a[..., None]) * M ** -0.5  # [B, T, H, M]
    return phi_hat, a


def _prologue(q, k, v, omega, scale, initial_state, chunk_size=None):
    """Checks, the feature maps and the dtype policy: every form starts here."""
    _check_inputs(q, k, v, omega, initial_state, chunk_size)
    dt = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays
    phi_q, _ = favor_feature_map(q.to(dt), omega.to(dt), scale=scale)  # (2) e^{a(q)} cancels
    phi_k, a_k = favor_feature_map(k.to(dt), omega.to(dt), scale=scale)
    B, T, H, _ = q.shape
    M, V = omega.shape[1], v.shape[-1]
    if initial_state is None:  # an empty state: nothing stored, at the lowest finite scale
        # (finite, not −∞: an empty state followed by padding only would give e^{−∞+∞} = NaN)
        S0 = phi_q.new_zeros(B, H, M, V)
        z0 = phi_q.new_zeros(B, H, M)
        c0 = a_k.new_full((B, H), torch.finfo(dt).min)
    else:
        S0, z0, c0 = (initial_state[0].to(phi_q.dtype), initial_state[1].to(phi_q.dtype),
                      initial_state[2].to(dt))
    return phi_q, phi_k, a_k, v.to(dt), (S0, z0, c0.detach())


def _readout(phi_q, S, z, eps):
    """(3)/(4): o = Re(φ̂ᵀS) / max(Re(φ̂ᵀz), eps); the floor (a clamp) passes no gradient."""
    num = torch.einsum('...m,...mv->...v', phi_q, S)
    den = torch.einsum('...m,...m->...', phi_q, z)
    return num / den.clamp_min(eps)[..., None]


# ------------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------------
def performer_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                    scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                    initial_state=None, output_final_state: bool = False):
    """Equation (3): the [T, T] matrix of estimated kernels, masked, times v. The oracle.

    Args:
        q, k: [B, T, H, K];  v: [B, T, H, V];  omega: [H, M, K] (rows of Ω, see
        orthogonal_random_features);  scale: None means K**-0.5, split as √scale on q and on k;
        eps: floor of the denominator (card, Pitfalls);  initial_state: (S, z, c) or None.
    Returns:
        o: [B, T, H, V] in v's dtype; final_state (S, z, c) or None.
    """
    phi_q, phi_k, a_k, v32, (S0, z0, c0) = _prologue(q, k, v, omega, scale, initial_state)
    T = q.shape[1]
    # (2) the key stabiliser: a prefix max (the global max when every key is visible)
    c = torch.cummax(a_k, dim=1).values if causal else a_k.amax(1, keepdim=True).expand_as(a_k)
    c = torch.maximum(c, c0[:, None]).detach()  # [B, T, H]; o does not depend on it
    kern = torch.einsum('bthm,bjhm->bhtj', phi_q, phi_k)  # [B, H, T, T]
    log_w = a_k.transpose(1, 2)[:, :, None, :] - c.transpose(1, 2)[:, :, :, None]  # [B, H, T, T]
    if causal:  # mask before the exp: a future key may outweigh c_t (e^{+} would overflow)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        log_w = log_w.masked_fill(~mask, float("-inf"))
    A = kern * torch.exp(log_w)  # (3) A_tj
    num = torch.einsum('bhtj,bjhv->bthv', A, v32)  # [B, T, H, V]
    den = A.sum(-1).transpose(1, 2)  # [B, T, H]
    decay0 = torch.exp(c0[:, None] - c)  # [B, T, H]: the initial state's weight at c_t
    num = num + decay0[..., None] * torch.einsum('bthm,bhmv->bthv', phi_q, S0)
    den = den + decay0 * torch.einsum('bthm,bhm->bth', phi_q, z0)
    o = (num / den.clamp_min(eps)[..., None]).to(v.dtype)
    if not output_final_state:
        return o, None
    cT = c[:, -1]  # [B, H]
    wT = torch.exp(a_k - cT[:, None])  # [B, T, H]
    decT = torch.exp(c0 - cT)[..., None]
    S = decT[..., None] * S0 + torch.einsum('bthm,bthv->bhmv', phi_k * wT[..., None], v32)
    z = decT * z0 + torch.einsum('bthm->bhm', phi_k * wT[..., None])
    return o, (S, z, cT)


def performer_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                     scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                     initial_state=None, output_final_state: bool = False):
    """Equation (4): one token at a time with the state (S, z) at log-scale c. Non-causal:
    the same loop builds the state, then every query reads the final one. The loop unrolls under
    torch.compile: compile it only for small T (decoding uses T = 1). Args as performer_parallel."""
    phi_q, phi_k, a_k, v32, (S, z, c) = _prologue(q, k, v, omega, scale, initial_state)
    vc = v32
    outs = []
    for t in range(q.shape[1]):
        c_new = torch.maximum(c, a_k[:, t].detach())  # [B, H]
        decay = torch.exp(c - c_new)  # rescales the old state to the new scale
        w = torch.exp(a_k[:, t] - c_new)  # the new key's weight, <= 1
        kc = phi_k[:, t] * w[..., None]  # [B, H, M]
        S = decay[..., None, None] * S + kc[..., None] * vc[:, t, :, None, :]  # (4) [B, H, M, V]
        z = decay[..., None] * z + kc  # [B, H, M]
        c = c_new
        if causal:
            outs.append(_readout(phi_q[:, t], S, z, eps))  # [B, H, V]
    if causal:
        o = torch.stack(outs, dim=1) if outs else v32.new_zeros(v.shape)
    else:
        o = _readout(phi_q, S[:, None], z[:, None], eps)  # every query reads the final state
    return o.to(v.dtype), ((S, z, c) if output_final_state else None)


def performer_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                 scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                 initial_state=None, output_final_state: bool = False, chunk_size: int = 64):
    """Equation (5): exact [L, L] blocks inside a chunk, the state (S, z) between chunks; what
    training and fast/ use. Args as performer_parallel, plus chunk_size L (a power of two)."""
    phi_q, phi_k, a_k, v32, (S, z, c) = _prologue(q, k, v, omega, scale, initial_state, chunk_size)
    B, T, H, M = phi_q.shape
    L = chunk_size
    N = max(1, math.ceil(T / L))
    pad = N * L - T
    # Zero padding: v = 0 adds nothing to S, but φ̂(0) = 1/√M would add to z, so padded keys get
    # log-weight −∞ (weight 0, and they never raise the prefix max). Padded queries are dropped.
    pad4 = (0, 0, 0, 0, 0, pad)
    phi_q, phi_k, v32 = (nn.functional.pad(x, pad4) for x in (phi_q, phi_k, v32))
    a_k = nn.functional.pad(a_k, (0, 0, 0, pad), value=float("-inf"))
    # (2) prefix max over all keys so far, the initial state's included
    c_t = torch.maximum(torch.cummax(a_k, dim=1).values, c[:, None]).detach()  # [B, N·L, H]
    q_c, k_c, a_c, c_c, v_c = (x.unflatten(1, (N, L)) for x in (phi_q, phi_k, a_k, c_t, v32))
    w_last = torch.exp(a_c - c_c[:, :, -1:])  # [B, N, L, H]: key weights at chunk end
    vc = v_c

    # state pass: S⁻ before each chunk (scale c⁻), carried as in (4) one chunk at a time
    states = []
    for n in range(N):
        states.append((S, z, c))
        c_new = c_c[:, n, -1]  # [B, H]
        decay = torch.exp(c - c_new)
        kc = k_c[:, n] * w_last[:, n, ..., None]  # [B, L, H, M]
        S = decay[..., None, None] * S + torch.einsum('blhm,blhv->bhmv', kc, vc[:, n])
        z = decay[..., None] * z + kc.sum(1)
        c = c_new
    final = (S, z, c) if output_final_state else None
    if not causal:  # every query reads the state after the last key, as in the parallel form
        return _readout(phi_q[:, :T], S[:, None], z[:, None], eps).to(v.dtype), final
    S_prev = torch.stack([s[0] for s in states], 1)  # [B, N, H, M, V]
    z_prev = torch.stack([s[1] for s in states], 1)  # [B, N, H, M]
    c_prev = torch.stack([s[2] for s in states], 1)  # [B, N, H]

    # intra-chunk: (3) inside each chunk, with weights e^{a_j − c_t} masked to j <= t
    kern = torch.einsum('bnthm,bnjhm->bnhtj', q_c, k_c)  # [B, N, H, L, L]
    log_w = a_c.transpose(2, 3)[:, :, :, None, :] - c_c.transpose(2, 3)[..., None]  # [B, N, H, L, L]
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    A = kern * torch.exp(log_w.masked_fill(~mask, float("-inf")))
    o_intra = torch.einsum('bnhtj,bnjhv->bnthv', A, v_c)  # [B, N, L, H, V]
    den_intra = A.sum(-1).transpose(2, 3)  # [B, N, L, H]

    # inter-chunk: (5) the state before the chunk, brought from scale c⁻ to c_t
    decay = torch.exp(c_prev[:, :, None] - c_c)  # [B, N, L, H]
    o_inter = torch.einsum('bnthm,bnhmv->bnthv', q_c, S_prev) * decay[..., None]
    den_inter = torch.einsum('bnthm,bnhm->bnth', q_c, z_prev) * decay
    o = (o_intra + o_inter) / (den_intra + den_inter).clamp_min(eps)[..., None]
    return o.flatten(1, 2)[:, :T].to(v.dtype), final


# ------------------------------------------------------------------------------------------------
# Layer
# ------------------------------------------------------------------------------------------------
class PerformerAttention(nn.Module):
    """Multi-head self-attention with FAVOR+ in place of softmax. Projections q_proj, k_proj,
    v_proj, out_proj (nn.Linear with bias) so weights copy from nn.MultiheadAttention
    (`copy_weights_from`). Ω [H, M, D] is a buffer drawn with orthogonal_random_features;
    `redraw_features()` draws a fresh one (the paper redraws during training to de-correlate the
    estimator's error across steps).

    Decoding: prefill(x) -> (y, cache), step(x_t, cache) -> (y_t, cache), with
    cache = {"S": [B, H, M, D], "z": [B, H, M], "c": [B, H]}; needs causal=True.
    """

    parallel_op = staticmethod(performer_parallel)
    recurrent_op = staticmethod(performer_recurrent)
    chunk_op = staticmethod(performer_chunk)

    def __init__(self, hidden_size: int, num_heads: int, m_features: int = 256, causal: bool = True, *,
                 form: str = "chunk", eps: float = EPS_DENOMINATOR, chunk_size: int = 64,
                 batch_first: bool = True):
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if m_features < 1:
            raise ValueError(f"m_features must be >= 1, got {m_features}")
        if form not in ("chunk", "recurrent", "parallel"):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.d_model, self.num_heads, self.head_dim = hidden_size, num_heads, hidden_size // num_heads
        self.m_features, self.batch_first, self.causal, self.form = m_features, batch_first, causal, form
        self.eps, self.chunk_size = eps, chunk_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(hidden_size, hidden_size) for _ in range(4))
        for lin in (self.q_proj, self.k_proj, self.v_proj):  # as nn.MultiheadAttention initialises
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)
        self.register_buffer("omega", self._draw(None))

    def _draw(self, generator):
        return torch.stack([orthogonal_random_features(self.m_features, self.head_dim, generator=generator)
                            for _ in range(self.num_heads)])  # [H, M, D]

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Replace Ω by a fresh orthogonal draw (in place, same device and dtype)."""
        self.omega.copy_(self._draw(generator))

    @torch.no_grad()
    def copy_weights_from(self, mha: nn.MultiheadAttention) -> None:
        """Copy q/k/v/out weights and biases from an nn.MultiheadAttention of the same size."""
        for lin, w, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_weight.chunk(3),
                             mha.in_proj_bias.chunk(3)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        self.out_proj.bias.copy_(mha.out_proj.bias)

    def _qkv(self, x):
        _check_real("x", x)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, T, C] with C={self.d_model}, got {tuple(x.shape)}")
        split = lambda y: y.unflatten(-1, (self.num_heads, self.head_dim))  # [B, T, H, D]
        return split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

    def _run(self, x, state, output_final_state, op):
        q, k, v = self._qkv(x)
        kwargs = dict(causal=self.causal, eps=self.eps, initial_state=state, output_final_state=output_final_state)
        if op is self.chunk_op:
            kwargs["chunk_size"] = self.chunk_size
        o, final = op(q, k, v, self.omega, **kwargs)
        return self.out_proj(o.flatten(-2)), final  # [B, T, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)  # [T, B, C] -> [B, T, C]
        op = {"chunk": self.chunk_op, "recurrent": self.recurrent_op, "parallel": self.parallel_op}[self.form]
        y, _ = self._run(x, None, False, op)
        return y if self.batch_first else y.transpose(0, 1)

    def _need_causal(self):
        if not self.causal:
            raise RuntimeError("decoding (prefill/step) needs a causal layer: build it with causal=True")

    def prefill(self, x: torch.Tensor):
        """x [B, T, C] (batch first) -> (y [B, T, C], cache)."""
        self._need_causal()
        y, (S, z, c) = self._run(x, None, True, self.chunk_op)
        return y, {"S": S, "z": z, "c": c}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """x_t [B, C] -> (y_t [B, C], new cache); cache=None starts from an empty state."""
        self._need_causal()
        state = None if cache is None else (cache["S"], cache["z"], cache["c"])
        y, (S, z, c) = self._run(x_t[:, None], state, True, self.recurrent_op)
        return y[:, 0], {"S": S, "z": z, "c": c}

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence in the cache (S, z, c per head); constant in seq_len."""
        M, D = self.m_features, self.head_dim
        return self.num_heads * (M * D + M + 1)


__all__ = ["orthogonal_random_features", "favor_feature_map", "performer_parallel", "performer_recurrent",
           "performer_chunk", "PerformerAttention", "EPS_DENOMINATOR"]
