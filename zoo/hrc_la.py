"""HRC-LA — softmax attention estimated with complex (Euler) random features, in linear time.

Paper: Hybrid Real-Complex Linear Attention. Emre Fırıl. Zenodo record 17822274, 2025 (the text
  was not available to us). Code checked: IrohAmca/HRC-LA@ec35e7b (unofficial, non-causal only).
  Background: Random Features for Large-Scale Kernel Machines. Rahimi, Recht. NeurIPS 2007;
  Rethinking Attention with Performers. Choromanski et al. ICLR 2021. arXiv:2009.14794.

Idea: Bochner's theorem writes the Gaussian kernel exp(−‖q−k‖²/2) as the mean of e^{iωᵀ(q−k)}
  over ω ~ N(0, I). Times exp(‖q‖²/2 + ‖k‖²/2) it becomes the softmax kernel exp(qᵀk), and
  Euler's formula splits e^{iωᵀ(q−k)} into a query feature times a conjugated key feature. With M
  random ω (orthogonal blocks, lower variance) softmax attention becomes linear attention on M
  complex features: an M×V complex state replaces the T×T matrix; the real part is taken last.

Math (per head; u = √scale·x so that uᵀu' = scale·xᵀx'; ω_r the rows of Ω [M, K]):
  (1) φ(u) = exp(‖u‖²/2)/√M · exp(iΩu) ∈ ℂ^M,        E_Ω[φ(q)·conj φ(k)] = exp(scale·qᵀk)
  (2) φ(u) = e^{a(u)} φ̂(u), a = ‖u‖²/2, φ̂ = exp(iΩu)/√M.  Queries: e^{a(q)} multiplies numerator
      and denominator alike: dropped. Keys: c_t = max_{j≤t} a_j (a prefix max: causal-safe) and
      the weight w_tj = e^{a_j − c_t} ≤ 1. Both shifts cancel in the ratio (3): the estimator is
      the same function, only no exponent ever exceeds 0.
  (3) parallel: A_tj = Re(φ̂(q_t)·conj φ̂(k_j)) w_tj [j ≤ t],  n_t = Σ_j w_tj (the mass),
      o_t = Σ_j A_tj v_j / max(Σ_j A_tj, eps·n_t)
  (4) recurrent: c_t = max(c_{t−1}, a_t),  S_t = e^{c_{t−1}−c_t} S_{t−1} + e^{a_t−c_t} conj φ̂(k_t) v_tᵀ,
      z_t, n_t = the same with conj φ̂(k_t), 1 for v_t,  o_t = Re(φ̂(q_t)ᵀS_t) / max(Re(φ̂(q_t)ᵀz_t), eps·n_t)
  (5) chunk n (state S⁻, z⁻, n⁻ at scale c⁻ from the chunks before): o_t = [e^{c⁻−c_t} Re(φ̂_tᵀS⁻)
      + Σ_{j in n, j≤t} A_tj v_j] / max(e^{c⁻−c_t} Re(φ̂_tᵀz⁻) + Σ_j A_tj, eps·n_t)
  Non-causal: every query reads the state after the last token (c = the maximum over all keys).

Shapes: q, k [B, T, H, K]  v [B, T, H, V]  omega [H, M, K]  o [B, T, H, V]
  state (S [B, H, M, V] complex, z [B, H, M] complex, n [B, H] mass, c [B, H] log-scale of S, z, n).
Cost: parallel O(T²(M+V)) time, O(T²) memory | recurrent/chunk O(T·M·(K+V)) time (chunk adds
  O(T·L·(M+V)) for the within-chunk matrix) | decode state H·(2M·V + 2M + 2) floats per sequence.
Forms: hrc_la_parallel (definition, oracle) · hrc_la_recurrent (decode) · hrc_la_chunk (training)
Fast: fast/hrc_la.py — chunk fwd+bwd with the feature map fused (real and imaginary parts as
  [cos, sin] features), recurrent fwd for decoding.
Dtype: compute in the input dtype (complex128 for float64: the forms agree to 1e-10); fp16/bf16
  inputs compute in float32/complex64 and return the input dtype. torch.compile(fullgraph=True)
  traces the complex ops, but inductor generates no code for complex tensors (it falls back to
  eager kernels): the compiled speed lives in fast/, which works on the real [cos, sin] pair.
Pitfalls:
  - the normaliser needs the conjugated key features Σ conj φ(k): without the conjugate,
    Re(φ(q)·φ(k)) averages to exp(−qᵀk) (the public code's defect).
  - rows of Ω must have chi(K)-distributed norms; the public code fixes them at √K, which
    estimates a different kernel: its error stops falling as M grows (scaling="fixed" keeps it).
  - trigonometric features are not positive: the denominator can be near 0 or negative (about
    0.1% of rows at M = 128 in the public accuracy test). It is floored at eps times the mass n_t
    (|A_tj| <= w_tj, so the true value is at most n_t), which bounds |o_t| <= max|v|/eps; the
    floor passes no gradient. Without it one bad row dominates the error (MSE ~10² there).
  - padding the chunk form with zero keys is not exact (φ̂(0) = 1/√M ≠ 0): padded keys get weight 0.
"""

import math

import torch
import torch.nn as nn

# Floor of the denominator as a fraction of the mass n_t = Σ_j w_tj. The exact softmax value,
# in these units, is a weighted mean of exp(−‖u_q − u_k‖²/2), ~0.1 for unit-variance
# activations; 1% catches estimates that lost their sign and caps |o| at 100·max|v|. Measured
# on the public accuracy test (M = 128): 1e-3 gives 2x the MSE of 1e-2, 1e-6 a few 10^7.
EPS_DENOMINATOR = 1e-2
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
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 4):
            raise TypeError("initial_state must be the tuple (S [B, H, M, V], z [B, H, M], n [B, H], c [B, H])")
        want = ((B, H, M, V), (B, H, M), (B, H), (B, H))
        for name, x, shape in zip(("S", "z", "n", "c"), initial_state, want):
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


def hrc_feature_map(x: torch.Tensor, omega: torch.Tensor, *, scale: float | None = None):
    """(1)–(2): the complex feature φ(u) = exp(‖u‖²/2)/√M · exp(iΩu), u = √scale·x, returned
    as its two factors (phi_hat, a) with φ = e^a · phi_hat, so that nothing overflows.

    Args:
        x: [B, T, H, K] real;  omega: [H, M, K]
    Returns:
        phi_hat: [B, T, H, M] complex, |phi_hat| = 1/√M;  a: [B, T, H] real, ‖u‖²/2
    """
    M, K = omega.shape[1], x.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    u = x * scale ** 0.5  # split √scale between q and k: uᵀu' = scale·qᵀk
    with torch.autocast(x.device.type, enabled=False):  # phases in full precision, also under autocast
        theta = torch.einsum('bthk,hmk->bthm', u, omega.to(u.dtype))  # [B, T, H, M]
    phi_hat = torch.polar(torch.full_like(theta, M ** -0.5), theta)  # Euler: (cos θ + i sin θ)/√M
    a = 0.5 * (u * u).sum(-1)  # [B, T, H]
    return phi_hat, a


def _prologue(q, k, v, omega, scale, initial_state, chunk_size=None):
    """Checks, the feature maps and the dtype policy: every form starts here."""
    _check_inputs(q, k, v, omega, initial_state, chunk_size)
    dt = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays
    phi_q, _ = hrc_feature_map(q.to(dt), omega.to(dt), scale=scale)  # (2) e^{a(q)} cancels
    phi_k, a_k = hrc_feature_map(k.to(dt), omega.to(dt), scale=scale)
    B, T, H, _ = q.shape
    M, V = omega.shape[1], v.shape[-1]
    if initial_state is None:  # an empty state: nothing stored, at the lowest finite scale
        # (finite, not −∞: an empty state followed by padding only would give e^{−∞+∞} = NaN)
        S0 = phi_q.new_zeros(B, H, M, V)
        z0 = phi_q.new_zeros(B, H, M)
        n0 = a_k.new_zeros(B, H)
        c0 = a_k.new_full((B, H), torch.finfo(dt).min)
    else:
        S0, z0 = initial_state[0].to(phi_q.dtype), initial_state[1].to(phi_q.dtype)
        n0, c0 = initial_state[2].to(dt), initial_state[3].to(dt)
    return phi_q, phi_k, a_k, v.to(dt), (S0, z0, n0, c0.detach())


def _divide(num, den, n, eps):
    """(3): num / max(den, eps·n), the floor as a constant (no gradient flows through it)."""
    return num / torch.maximum(den, eps * n.detach())[..., None]


def _readout(phi_q, S, z, n, eps):
    """(4): o = Re(φ̂ᵀS) / max(Re(φ̂ᵀz), eps·n)."""
    num = torch.einsum('...m,...mv->...v', phi_q, S).real
    den = torch.einsum('...m,...m->...', phi_q, z).real
    return _divide(num, den, n, eps)


# ------------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------------
def hrc_la_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
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
    phi_q, phi_k, a_k, v32, (S0, z0, n0, c0) = _prologue(q, k, v, omega, scale, initial_state)
    T = q.shape[1]
    # (2) the key stabiliser: a prefix max (the global max when every key is visible)
    c = torch.cummax(a_k, dim=1).values if causal else a_k.amax(1, keepdim=True).expand_as(a_k)
    c = torch.maximum(c, c0[:, None]).detach()  # [B, T, H]; o does not depend on it
    kern = torch.einsum('bthm,bjhm->bhtj', phi_q, phi_k.conj()).real  # [B, H, T, T]
    log_w = a_k.transpose(1, 2)[:, :, None, :] - c.transpose(1, 2)[:, :, :, None]  # [B, H, T, T]
    if causal:  # mask before the exp: a future key may outweigh c_t (e^{+} would overflow)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        log_w = log_w.masked_fill(~mask, float("-inf"))
    w = torch.exp(log_w)  # [B, H, T, T]: w_tj
    A = kern * w  # (3) A_tj
    num = torch.einsum('bhtj,bjhv->bthv', A, v32)  # [B, T, H, V]
    den = A.sum(-1).transpose(1, 2)  # [B, T, H]
    decay0 = torch.exp(c0[:, None] - c)  # [B, T, H]: the initial state's weight at c_t
    num = num + decay0[..., None] * torch.einsum('bthm,bhmv->bthv', phi_q, S0).real
    den = den + decay0 * torch.einsum('bthm,bhm->bth', phi_q, z0).real
    n = w.sum(-1).transpose(1, 2) + decay0 * n0[:, None]  # [B, T, H]
    o = _divide(num, den, n, eps).to(v.dtype)
    if not output_final_state:
        return o, None
    cT = c[:, -1]  # [B, H]
    wT = torch.exp(a_k - cT[:, None])  # [B, T, H]
    decT = torch.exp(c0 - cT)[..., None]
    S = decT[..., None] * S0 + torch.einsum('bthm,bthv->bhmv', phi_k.conj() * wT[..., None], v32.to(phi_k.dtype))
    z = decT * z0 + torch.einsum('bthm->bhm', phi_k.conj() * wT[..., None])
    nT = decT[..., 0] * n0 + wT.sum(1)
    return o, (S, z, nT, cT)


def hrc_la_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                     scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                     initial_state=None, output_final_state: bool = False):
    """Equation (4): one token at a time with the complex state (S, z) at log-scale c. Non-causal:
    the same loop builds the state, then every query reads the final one. The loop unrolls under
    torch.compile: compile it only for small T (decoding uses T = 1). Args as hrc_la_parallel."""
    phi_q, phi_k, a_k, v32, (S, z, n, c) = _prologue(q, k, v, omega, scale, initial_state)
    vc = v32.to(phi_k.dtype)
    outs = []
    for t in range(q.shape[1]):
        c_new = torch.maximum(c, a_k[:, t].detach())  # [B, H]
        decay = torch.exp(c - c_new)  # rescales the old state to the new scale
        w = torch.exp(a_k[:, t] - c_new)  # the new key's weight, <= 1
        kc = phi_k[:, t].conj() * w[..., None]  # [B, H, M]
        S = decay[..., None, None] * S + kc[..., None] * vc[:, t, :, None, :]  # (4) [B, H, M, V]
        z = decay[..., None] * z + kc  # [B, H, M]
        n = decay * n + w  # [B, H]
        c = c_new
        if causal:
            outs.append(_readout(phi_q[:, t], S, z, n, eps))  # [B, H, V]
    if causal:
        o = torch.stack(outs, dim=1) if outs else v32.new_zeros(v.shape)
    else:
        o = _readout(phi_q, S[:, None], z[:, None], n[:, None], eps)  # every query reads the final state
    return o.to(v.dtype), ((S, z, n, c) if output_final_state else None)


def hrc_la_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *,
                 scale: float | None = None, causal: bool = True, eps: float = EPS_DENOMINATOR,
                 initial_state=None, output_final_state: bool = False, chunk_size: int = 64):
    """Equation (5): exact [L, L] blocks inside a chunk, the state (S, z) between chunks; what
    training and fast/ use. Args as hrc_la_parallel, plus chunk_size L (a power of two)."""
    phi_q, phi_k, a_k, v32, (S, z, n, c) = _prologue(q, k, v, omega, scale, initial_state, chunk_size)
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
    w_last = torch.exp(a_c - c_c[:, :, -1:])  # [B, N, L, H]: key weights at each chunk's end
    vc = v_c.to(k_c.dtype)

    # state pass: S⁻ before each chunk (scale c⁻), carried as in (4) one chunk at a time
    states = []
    for i in range(N):
        states.append((S, z, n, c))
        c_new = c_c[:, i, -1]  # [B, H]
        decay = torch.exp(c - c_new)
        kc = k_c[:, i].conj() * w_last[:, i, ..., None]  # [B, L, H, M]
        S = decay[..., None, None] * S + torch.einsum('blhm,blhv->bhmv', kc, vc[:, i])
        z = decay[..., None] * z + kc.sum(1)
        n = decay * n + w_last[:, i].sum(1)  # [B, H]
        c = c_new
    final = (S, z, n, c) if output_final_state else None
    if not causal:  # every query reads the state after the last key, as in the parallel form
        return _readout(phi_q[:, :T], S[:, None], z[:, None], n[:, None], eps).to(v.dtype), final
    S_prev = torch.stack([s[0] for s in states], 1)  # [B, N, H, M, V]
    z_prev = torch.stack([s[1] for s in states], 1)  # [B, N, H, M]
    n_prev = torch.stack([s[2] for s in states], 1)  # [B, N, H]
    c_prev = torch.stack([s[3] for s in states], 1)  # [B, N, H]

    # intra-chunk: (3) inside each chunk, with weights e^{a_j − c_t} masked to j <= t
    kern = torch.einsum('bnthm,bnjhm->bnhtj', q_c, k_c.conj()).real  # [B, N, H, L, L]
    log_w = a_c.transpose(2, 3)[:, :, :, None, :] - c_c.transpose(2, 3)[..., None]  # [B, N, H, L, L]
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    w = torch.exp(log_w.masked_fill(~mask, float("-inf")))  # [B, N, H, L, L]
    A = kern * w
    o_intra = torch.einsum('bnhtj,bnjhv->bnthv', A, v_c)  # [B, N, L, H, V]
    den_intra = A.sum(-1).transpose(2, 3)  # [B, N, L, H]
    n_intra = w.sum(-1).transpose(2, 3)

    # inter-chunk: (5) the state before the chunk, brought from scale c⁻ to c_t
    decay = torch.exp(c_prev[:, :, None] - c_c)  # [B, N, L, H]
    o_inter = torch.einsum('bnthm,bnhmv->bnthv', q_c, S_prev).real * decay[..., None]
    den_inter = torch.einsum('bnthm,bnhm->bnth', q_c, z_prev).real * decay
    o = _divide(o_intra + o_inter, den_intra + den_inter, n_intra + n_prev[:, :, None] * decay, eps)
    return o.flatten(1, 2)[:, :T].to(v.dtype), final


# ------------------------------------------------------------------------------------------------
# Layer
# ------------------------------------------------------------------------------------------------
class HRCMultiheadAttention(nn.Module):
    """Multi-head self-attention with HRC-LA in place of softmax, named as the HRC-LA README
    names it. Projections q_proj, k_proj, v_proj, out_proj (nn.Linear with bias) so weights copy
    from nn.MultiheadAttention (`copy_weights_from`). Ω [H, M, D] is a buffer drawn with
    orthogonal_random_features, or, with learnable_omega, a Parameter initialised the same way;
    `ortho_loss()` is an optional penalty the user adds to the task loss.

    Decoding: prefill(x) -> (y, cache), step(x_t, cache) -> (y_t, cache), with
    cache = {"S": [B, H, M, D] complex, "z": [B, H, M] complex, "n": [B, H], "c": [B, H]};
    needs causal=True.
    """

    parallel_op = staticmethod(hrc_la_parallel)
    recurrent_op = staticmethod(hrc_la_recurrent)
    chunk_op = staticmethod(hrc_la_chunk)

    def __init__(self, d_model: int, num_heads: int, m_features: int = 256, learnable_omega: bool = False,
                 batch_first: bool = True, causal: bool = False, *, form: str = "chunk",
                 omega_scaling: str = "chi", eps: float = EPS_DENOMINATOR, chunk_size: int = 64):
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if m_features < 1:
            raise ValueError(f"m_features must be >= 1, got {m_features}")
        if form not in ("chunk", "recurrent", "parallel"):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.m_features, self.learnable_omega = m_features, learnable_omega
        self.batch_first, self.causal, self.form = batch_first, causal, form
        self.eps, self.chunk_size = eps, chunk_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))
        for lin in (self.q_proj, self.k_proj, self.v_proj):  # as nn.MultiheadAttention initialises
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)
        omega = torch.stack([orthogonal_random_features(m_features, self.head_dim, scaling=omega_scaling)
                             for _ in range(num_heads)])  # [H, M, D]
        if learnable_omega:
            self.omega = nn.Parameter(omega)
        else:
            self.register_buffer("omega", omega)

    @torch.no_grad()
    def copy_weights_from(self, mha: nn.MultiheadAttention) -> None:
        """Copy q/k/v/out weights and biases from an nn.MultiheadAttention of the same size."""
        for lin, w, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_weight.chunk(3),
                             mha.in_proj_bias.chunk(3)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        self.out_proj.bias.copy_(mha.out_proj.bias)

    def ortho_loss(self) -> torch.Tensor:
        """mean over heads of mean((ΩᵀΩ/M − I)²): zero for an orthogonal stack with fixed √D rows
        when D divides M, small for chi rows. Computed from Ω on demand (never a stale value
        from the last forward); multiply by your weight λ and add it to the loss."""
        if not self.learnable_omega:
            raise RuntimeError("ortho_loss() penalises a learnable Ω; this layer was built with "
                               "learnable_omega=False, so Ω is a fixed buffer")
        gram = torch.einsum('hmk,hml->hkl', self.omega, self.omega) / self.m_features  # [H, D, D]
        eye = torch.eye(self.head_dim, dtype=gram.dtype, device=gram.device)
        return ((gram - eye) ** 2).mean()

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
        y, (S, z, n, c) = self._run(x, None, True, self.chunk_op)
        return y, {"S": S, "z": z, "n": n, "c": c}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """x_t [B, C] -> (y_t [B, C], new cache); cache=None starts from an empty state."""
        self._need_causal()
        state = None if cache is None else (cache["S"], cache["z"], cache["n"], cache["c"])
        y, (S, z, n, c) = self._run(x_t[:, None], state, True, self.recurrent_op)
        return y[:, 0], {"S": S, "z": z, "n": n, "c": c}

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence in the cache: complex S and z count two each; constant in seq_len."""
        M, D = self.m_features, self.head_dim
        return self.num_heads * (2 * M * D + 2 * M + 2)


__all__ = ["orthogonal_random_features", "hrc_feature_map", "hrc_la_parallel", "hrc_la_recurrent",
           "hrc_la_chunk", "HRCMultiheadAttention", "EPS_DENOMINATOR"]
