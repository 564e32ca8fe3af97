"""Linear attention — softmax's exp(q·k) replaced by a feature-map inner product φ(q)·φ(k).

Paper: Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention.
       Katharopoulos, Vyas, Pappas, Fleuret. ICML 2020. arXiv:2006.16236.
       Code checked: fla-org/flash-linear-attention ops/linear_attn (chunk.py, naive.py, utils.py)
       for the op convention; idiap/fast-transformers (the paper's code) through our reference notes.
Idea:  With a positive feature map φ (here elu(x) + 1), similarity is φ(q)·φ(k), and the
       attention sum reassociates: Σ_s (φ(q_t)·φ(k_s)) v_s = φ(q_t)ᵀ (Σ_s φ(k_s) v_sᵀ). The bracket
       is a K×V state that grows by one outer product per token, so causal attention is an RNN:
       O(T) time, O(1) memory per step. Dividing by φ(q_t)·Σ_s φ(k_s) makes the weights sum to one.
       The ops below take q, k already feature-mapped (as fla's do); the layer applies φ.
Math (per head; q, k already mapped; s = scale, applied to q; ε = 1e-6; S_0, z_0 the initial state or 0):
  (1) S_t = S_{t-1} + k_t v_tᵀ,    z_t = z_{t-1} + k_t                       (recurrent state)
  (2) o_t = s·q_tᵀ S_t                                                          (normalize=False)
      o_t = s·q_tᵀ S_t / (s·q_tᵀ z_t + ε)                                       (normalize=True)
  (3) parallel: A = s·Q Kᵀ ⊙ M,  O = A V + s·Q S_0,  den = A 1 + s·Q z_0 + ε     (M causal mask)
  (4) chunk n (length L): A_n = s·Q_n K_nᵀ ⊙ M_L
      O_n = A_n V_n + s·Q_n S_{n-1},   S_n = S_{n-1} + K_nᵀ V_n   (den likewise with 1 for V, z for S)
  Non-causal: M is all ones; every query reads the state after the whole sequence (plus S_0).
  The scale does not cancel in (2): s·qᵀS / (s·qᵀz + ε) = qᵀS / (qᵀz + ε/s). We keep s on both
  sides in every form (fla's convention: the ops see s·q), so the three forms agree exactly.
Shapes: q, k [B, T, H, K]  v [B, T, H, V]  o [B, T, H, V]
        state: S [B, H, K, V] (normalize=False) or the pair (S [B, H, K, V], z [B, H, K])
        (normalize=True); the same form goes in as initial_state and comes out as final_state.
Cost:  parallel O(T²(K+V)) time, O(T²) memory | recurrent O(T·K·V) time, state K·V (+K) per head |
       chunk O(T·L·(K+V) + T·K·V) time, O(T·L + (T/L)·K·V) memory. Decode: H·K·(V+1) floats.
Forms: linear_attention_parallel (definition, the oracle) · linear_attention_recurrent (token
       loop, decoding) · linear_attention_chunk (chunkwise, training).
Fast:  fast/linear_attention.py — chunk fwd+bwd (causal or not, normalize or not, state in/out),
       recurrent (decode) fwd with the chunk backward.
Pitfalls: normalize=False is fla's chunk_linear_attn(q, k, v, scale, normalize=False), the same
          q, k, v, scale. fla's normalize=True differs: ε = 1e-10, and in the chunk.py read its
          key sum covers only the call's own tokens (no z in the state; newer fla adds one).
          The normaliser needs positive features: elu + 1 > 0; raw q, k can make it cross zero.
          Un-normalised outputs grow like T: accumulate in fp32, and fp16 can overflow.
          NaN/inf inputs give NaN/inf outputs wherever they are read, never finite garbage.
Dtype: computed in the input dtype (float64 tests are exact); fp16/bf16 inputs are computed in
       float32 and the output cast back (the chunk form keeps matmul operands in the input dtype,
       with fp32 sums, as fast/ does); the final state stays float32.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6  # normaliser floor, as Katharopoulos et al.: keeps 1/den finite when φ(q)·z is tiny


# ------------------------------------------------------------------------------------------------
# Input checks and the shared prologue
# ------------------------------------------------------------------------------------------------
def check_inputs(q, k, v, initial_state=None, *, normalize=True, chunk_size=None):
    """Raise a clear TypeError/ValueError for bad inputs; return (B, T, H, K, V). fast/ reuses it."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, T, H, D], got a {x.dim()}-d tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}: pass one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"q must be [B, T, H, K] with T >= 1 tokens, got {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must be [B, T, H, K] = {tuple(q.shape)} like q, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if initial_state is not None:
        if normalize:
            if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
                raise TypeError("with normalize=True, initial_state must be the pair (S [B, H, K, V], "
                                f"z [B, H, K]), got {type(initial_state).__name__}")
            states = (("initial_state[0] (S)", initial_state[0], (B, H, K, V)),
                      ("initial_state[1] (z)", initial_state[1], (B, H, K)))
        else:
            if not isinstance(initial_state, torch.Tensor):
                raise TypeError("with normalize=False, initial_state must be S [B, H, K, V], "
                                f"got {type(initial_state).__name__}")
            states = (("initial_state", initial_state, (B, H, K, V)),)
        for name, x, shape in states:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
            if tuple(x.shape) != shape:
                raise ValueError(f"{name} must be {list(shape)} for q [B, T, H, K] = {list(q.shape)} and "
                                 f"V = {V}, got {list(x.shape)}")
            if x.device != q.device:
                raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1
                                   or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size!r}")
    return B, T, H, K, V


def _prologue(q, k, v, scale, initial_state, normalize, chunk_size=None, upcast=True):
    """Checks; s·q; float32 for half inputs (unless `upcast=False`: then q, k, v keep their dtype
    and only the state is float32); the state (S_0, z_0), zero when none is given."""
    B, T, H, K, V = check_inputs(q, k, v, initial_state, normalize=normalize, chunk_size=chunk_size)
    scale = K ** -0.5 if scale is None else scale
    dt = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> float32; float64 stays
    if upcast:
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    q = scale * q  # the scale lives on q from here on
    S0, z0 = q.new_zeros(B, H, K, V, dtype=dt), q.new_zeros(B, H, K, dtype=dt)
    if initial_state is not None:
        S0, z0 = (initial_state[0].to(dt), initial_state[1].to(dt)) if normalize else (initial_state.to(dt), z0)
    return q, k, v, S0, z0


def _epilogue(o, den, S, z, normalize, output_final_state, dtype):
    """(2) divide by the normaliser when asked; output in the caller's dtype; pack the state."""
    if normalize:
        o = o / (den + EPS).unsqueeze(-1)  # [B, T, H, V]
    final = None
    if output_final_state:
        final = (S, z) if normalize else S
    return o.to(dtype), final


# ------------------------------------------------------------------------------------------------
# Helpers: the feature map and the mask
# ------------------------------------------------------------------------------------------------
def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1: positive everywhere (so the normaliser is > 0), and ≈ x + 1 for x > 0."""
    return F.elu(x) + 1


def causal_mask(T: int, device) -> torch.Tensor:
    """M[t, s] = (s <= t): query t sees keys up to and including itself. [T, T] bool."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


# ------------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------------
def linear_attention_parallel(q, k, v, *, scale=None, causal=True, normalize=True, initial_state=None,
                              output_final_state=False):
    """(3) The definition: the [T, T] mixing matrix, masked, times V. The oracle of the tests.
    Returns (o [B, T, H, V], final_state or None)."""
    dtype = q.dtype
    q, k, v, S0, z0 = _prologue(q, k, v, scale, initial_state, normalize)
    A = torch.einsum("bthk,bshk->bhts", q, k)  # (3) s·Q Kᵀ [B, H, T, T]
    if causal:
        A = A.masked_fill(~causal_mask(q.shape[1], q.device), 0)  # fill, not multiply: inf·0 = NaN
    o = torch.einsum("bhts,bshv->bthv", A, v) + torch.einsum("bthk,bhkv->bthv", q, S0)  # (3) [B, T, H, V]
    den = A.sum(-1).transpose(1, 2) + torch.einsum("bthk,bhk->bth", q, z0)  # (3) A 1 + s·Q z_0 [B, T, H]
    S = S0 + torch.einsum("bthk,bthv->bhkv", k, v)  # (1) summed over all tokens [B, H, K, V]
    z = z0 + k.sum(1)  # [B, H, K]
    return _epilogue(o, den, S, z, normalize, output_final_state, dtype)


def linear_attention_recurrent(q, k, v, *, scale=None, causal=True, normalize=True, initial_state=None,
                               output_final_state=False):
    """(1)-(2) Token by token with the state (S, z): how decoding runs. Non-causal: every query
    reads the state after the whole sequence. torch.compile unrolls the loop: compile it only at
    small T. Returns (o [B, T, H, V], final_state or None)."""
    dtype = q.dtype
    q, k, v, S, z = _prologue(q, k, v, scale, initial_state, normalize)
    if not causal:
        S = S + torch.einsum("bthk,bthv->bhkv", k, v)  # (1) after all T tokens [B, H, K, V]
        z = z + k.sum(1)  # [B, H, K]
        o = torch.einsum("bthk,bhkv->bthv", q, S)  # (2) numerator, every t reads S_T [B, T, H, V]
        den = torch.einsum("bthk,bhk->bth", q, z)  # (2) normaliser [B, T, H]
        return _epilogue(o, den, S, z, normalize, output_final_state, dtype)
    outs, dens = [], []
    for t in range(q.shape[1]):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (1) S_t = S_{t-1} + k_t v_tᵀ [B, H, K, V]
        z = z + k[:, t]  # (1) z_t = z_{t-1} + k_t [B, H, K]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))  # (2) s·q_tᵀ S_t [B, H, V]
        dens.append((q[:, t] * z).sum(-1))  # (2) s·q_tᵀ z_t [B, H]
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    den = torch.stack(dens, dim=1)  # [B, T, H]
    return _epilogue(o, den, S, z, normalize, output_final_state, dtype)


def linear_attention_chunk(q, k, v, *, scale=None, causal=True, normalize=True, initial_state=None,
                           output_final_state=False, chunk_size=64):
    """(4) Chunkwise: the masked matrix inside a chunk of L tokens, the state across chunks. What
    training uses and fast/ implements. Returns (o [B, T, H, V], final_state or None).
    Half-precision inputs: the matmuls take q, k, v as they are (tensor cores; each product sums in
    fp32 inside the matmul) and everything summed across chunks, the state, is fp32: the same
    rounding points as fast/, and what makes this form fast under torch.compile.
    Memory traffic, not arithmetic, bounds this form on a GPU: the comments count the bytes each
    step reads and writes under torch.compile at B = 4, T = 8192, H = 16, K = V = 128, L = 64, bf16,
    causal (q is 134 MB). Forward total ≈ 4.7 GB; fast/ keeps S in registers and moves 0.54 GB."""
    dtype = q.dtype
    q, k, v, S0, z0 = _prologue(q, k, v, scale, initial_state, normalize, chunk_size, upcast=False)
    acc = S0.dtype  # float32 for half inputs, else the input dtype: where sums accumulate
    B, T, H, K = q.shape
    L = chunk_size
    N = -(-T // L)
    # Pad T to N·L with zeros: a zero key adds nothing to S or z, a zero value nothing to o, and
    # the padded queries' outputs are sliced off at the end. So padding is exact.
    pad = N * L - T
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    # Heads first, [B, H, N, L, *]: every product below is a batched matmul over the (b, h, n)
    # blocks, and a matmul takes its batch at one stride. In [B, T, H, *] the heads interleave
    # inside a chunk, so each einsum would copy its operands itself, and q, k, v are each used
    # twice. One copy here instead: read 3 × 134 MB, write 3 × 134 MB (805 MB; 1.2 GB the other way).
    q_c, k_c, v_c = (x.view(B, N, L, H, x.shape[-1]).permute(0, 3, 1, 2, 4).contiguous() for x in (q, k, v))

    # state pass, (4) S_n = S_{n-1} + K_nᵀ V_n: one outer-product sum per chunk, then a prefix sum.
    # dS is this form's big tensor: a K×V matrix per chunk, (T/L)·K·V per head, twice the size of q
    # at L = 64, K = V = 128. Written in the operand dtype: read 268 MB, write 268 MB.
    dS = torch.einsum("bhnlk,bhnlv->bhnkv", k_c, v_c)  # K_nᵀ V_n [B, H, N, K, V]
    dz = k_c.sum(3, dtype=acc)  # K_nᵀ 1 [B, H, N, K]
    S, z = S0 + dS.sum(2, dtype=acc), z0 + dz.sum(2)  # the final state [B, H, K, V], [B, H, K]
    den = None
    if not causal:  # no mask: every chunk reads the state after the whole sequence
        o = torch.einsum("bhnlk,bhkv->bhnlv", q_c, S.to(q.dtype)).to(acc)  # [B, H, N, L, V]
        if normalize:
            den = torch.einsum("bhnlk,bhk->bhnl", q_c.to(acc), z)  # [B, H, N, L]
    else:
        # S_{n-1}: the exclusive prefix sum (chunk n sees every earlier chunk, not itself). Shift
        # the inclusive sum by one chunk; cumsum − dS would be the same in exact arithmetic, but its
        # rounding depends on chunk n's later tokens, and causality must hold to the last bit.
        # Compiled, the cumsum is one scan kernel (read dS 268 MB, sum in fp32, write 537 MB), and
        # the shift, + S_0 and the rounding to the operand dtype are one pass (read 537 MB, write
        # 268 MB). The fp32 prefix is written only to be read again, and costs a third of the
        # total: Inductor (torch 2.13) fuses no cast into a scan over a dimension other than the
        # last, and a cumsum of bf16 dS would sum in bf16 in eager CUDA.
        S_c = S0.unsqueeze(2) + F.pad(torch.cumsum(dS.to(acc), 2)[:, :, :-1], (0, 0, 0, 0, 1, 0))  # [B, H, N, K, V]
        # intra-chunk, (4) A_n = s·Q_n K_nᵀ ⊙ M_L: the parallel form (3) on the diagonal block.
        # Q Kᵀ, the mask, A V: 336 + 134 + 336 MB (A is 67 MB).
        A = torch.einsum("bhnlk,bhnmk->bhnlm", q_c, k_c).masked_fill(~causal_mask(L, q.device), 0)  # [B, H, N, L, L]
        o_intra = torch.einsum("bhnlm,bhnmv->bhnlv", A, v_c)  # A_n V_n [B, H, N, L, V]
        # inter-chunk, (4) s·Q_n S_{n-1}: what all earlier chunks left in the state (rounded to the
        # operand dtype for the matmul, as fast/ does). Read 134 + 268 MB, write 134 MB.
        o_inter = torch.einsum("bhnlk,bhnkv->bhnlv", q_c, S_c.to(q.dtype))  # [B, H, N, L, V]
        # The sum in fp32, the layout back to [B, T, H, V] below and the cast to the output dtype
        # are one pass under torch.compile (read 2 × 134 MB, write 134 MB); eager makes a tensor
        # per step.
        o = o_intra.to(acc) + o_inter.to(acc)
        if normalize:  # (4) the same two pieces with a column of ones for V and z for S
            z_c = z0.unsqueeze(2) + F.pad(torch.cumsum(dz, 2)[:, :, :-1], (0, 0, 1, 0))  # z_{n-1} [B, H, N, K]
            den = A.sum(-1, dtype=acc) + torch.einsum("bhnlk,bhnk->bhnl", q_c.to(acc), z_c)  # [B, H, N, L]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * L, H, -1)[:, :T]  # [B, T, H, V]
    if normalize:
        den = den.permute(0, 2, 3, 1).reshape(B, N * L, H)[:, :T]  # [B, T, H]
    return _epilogue(o, den, S, z, normalize, output_final_state, dtype)


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
FEATURE_MAPS = {"elu": elu_feature_map}


class LinearAttention(nn.Module):
    """Katharopoulos et al.'s causal linear attention layer: q, k, v projections (no biases, fla's
    names q_proj/k_proj/v_proj/o_proj), φ on q and k, normalised (2), output projection. As in the
    paper there is no 1/√d: the ops get scale=1.0. The decode cache is {"S": [B, H, D, D],
    "z": [B, H, D]} (float32 for half inputs)."""

    parallel_op = staticmethod(linear_attention_parallel)
    recurrent_op = staticmethod(linear_attention_recurrent)
    chunk_op = staticmethod(linear_attention_chunk)

    def __init__(self, hidden_size: int, num_heads: int, feature_map: str = "elu", form: str = "chunk"):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        if form not in ("chunk", "recurrent", "parallel"):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, hidden_size // num_heads
        self.feature_map, self.form = feature_map, form
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def _mix(self, x, op, initial_state, output_final_state):
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, C] with C = {self.hidden_size}, got {tuple(x.shape)}")
        B, T, _ = x.shape
        phi = FEATURE_MAPS[self.feature_map]
        q = phi(self.q_proj(x).view(B, T, self.num_heads, self.head_dim))  # φ(q) [B, T, H, D]
        k = phi(self.k_proj(x).view(B, T, self.num_heads, self.head_dim))  # φ(k) [B, T, H, D]
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim)  # [B, T, H, D]
        o, state = op(q, k, v, scale=1.0, causal=True, normalize=True, initial_state=initial_state,
                      output_final_state=output_final_state)
        return self.o_proj(o.reshape(B, T, self.hidden_size)), state  # [B, T, C]

    def _op(self):
        return {"chunk": self.chunk_op, "recurrent": self.recurrent_op, "parallel": self.parallel_op}[self.form]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, self._op(), None, False)[0]

    def prefill(self, x: torch.Tensor):
        """Forward that also returns the decode cache {"S", "z"} after the last token."""
        y, (S, z) = self._mix(x, self._op(), None, True)
        return y, {"S": S, "z": z}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """One token x_t [B, C] -> (y_t [B, C], new cache), with (1)-(2) on the cached state."""
        state = None if cache is None else (cache["S"], cache["z"])
        y, (S, z) = self._mix(x_t.unsqueeze(1), self.recurrent_op, state, True)
        return y.squeeze(1), {"S": S, "z": z}

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence in the cache: H·D·(D + 1), whatever seq_len."""
        return self.num_heads * self.head_dim * (self.head_dim + 1)


__all__ = ["elu_feature_map", "causal_mask", "linear_attention_parallel", "linear_attention_recurrent",
           "linear_attention_chunk", "LinearAttention"]
