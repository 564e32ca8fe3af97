"""Softmax attention — exact scaled dot-product attention, the reference every approximation meets.

Paper: Attention Is All You Need. Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser,
       Polosukhin. NeurIPS 2017. arXiv:1706.03762.
       The blockwise form: Online normalizer calculation for softmax. Milakov, Gimelshein. 2018.
       arXiv:1805.02867. FlashAttention. Dao, Fu, Ermon, Rudra, Ré. NeurIPS 2022. arXiv:2205.14135.
       FlashAttention-2. Dao. ICLR 2024. arXiv:2307.08691.
Idea:  Every query scores every key, the scores become a probability distribution over keys, and
       the output is the probability-weighted sum of the values. The [T, T] matrix of scores is
       the cost. The online softmax removes it: a softmax can be built one block of keys at a
       time, keeping per query only the running maximum m, the running normaliser l and an
       un-normalised output acc, and rescaling the old ones whenever the maximum grows.
Math (per head; i a query, j a key; lse is a natural log):
       (1) s_ij = scale · q_i·k_j                       scale = 1/√K unless given
       (2) causal: s_ij = -∞ for j > i                  (query i sees keys 0..i; top-left aligned)
       (3) m_i = maxⱼ s_ij,  l_i = Σⱼ exp(s_ij − m_i),  P_ij = exp(s_ij − m_i) / l_i
       (4) o_i = Σⱼ P_ij v_j,  lse_i = m_i + log l_i = log Σⱼ exp(s_ij)
       Online form, key block n (keys j ∈ n), starting from m = −∞, l = 0, acc = 0:
       (5) m' = max(m, maxⱼ∈ₙ s_ij)
       (6) l' = exp(m − m')·l + Σⱼ∈ₙ exp(s_ij − m')
       (7) acc' = exp(m − m')·acc + Σⱼ∈ₙ exp(s_ij − m')·v_j
       (8) after the last block: o_i = acc_i / l_i,  lse_i = m_i + log l_i
       Two key sets merge by their lse: lse = log(e^lse₁ + e^lse₂), o = e^(lse₁−lse)·o₁ + e^(lse₂−lse)·o₂.
Shapes: q, k [B, T, H, K]  v [B, T, H, V]  o [B, T, H, V]  lse [B, T, H]
        (without causal, k and v may hold a different number of keys Tk than q holds queries)
Cost:  parallel O(T²(K+V)) time, O(T²) memory | chunk O(T²(K+V)) time, O(T·L) memory
       (L = chunk_size) | decode: a KV cache of 2·T·C floats per sequence that grows with T;
       softmax has no finite recurrent state, so there is no _recurrent form.
Forms: softmax_attention_parallel (definition, oracle) · softmax_attention_chunk (online softmax
       over key blocks: the flash form) · SoftmaxAttention (layer with a KV cache)
Fast:  fast/softmax_attention.py — Triton FlashAttention-2 chunk form, forward and backward
       (gradients of o and of lse), causal or not, any K, V ≤ 256.
Dtype: compute in the input dtype (float64 is exact); fp16/bf16 inputs compute in float32 and
       return o in the input dtype, lse in float32.
Pitfalls: exp of raw scores overflows: always subtract the running max first (3), (5).
       Padding keys with zeros is not exact for softmax (a zero key still gets weight e⁰): the
       last, shorter key block is sliced here and masked to −∞ in the kernel.
       NaN in q, k or v comes out as NaN in every output that sees it, and so does an infinite
       query, an infinite score (∞ − ∞) and an infinite value (as ±inf or NaN). The one finite
       case is a score of −∞ from an infinite key: that key gets weight 0, the exact limit.
       An infinite value at a future position reaches earlier rows as NaN (weight 0 · ∞), here,
       in the kernel and in SDPA alike: causality holds for finite inputs.
"""

import torch
import torch.nn as nn

NEG_INF = float("-inf")  # a masked score: exp(-inf) = 0 exactly, so a masked key gets no weight


# ------------------------------------------------------------------------------------------------
# Input checks and the prologue every form shares
# ------------------------------------------------------------------------------------------------
def _check_tensor(name: str, x, dims: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape {dims} (4 dims), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating tensor (float16/bfloat16/float32/float64), "
                        f"got dtype {x.dtype}")


def _check_inputs(q, k, v, causal: bool, scale, chunk_size: int | None = None) -> None:
    """Raise a clear ValueError/TypeError for anything the forms cannot take. Python ints only:
    nothing here reads tensor values, so it costs nothing under torch.compile."""
    _check_tensor("q", q, "[B, T, H, K]")
    _check_tensor("k", k, "[B, Tk, H, K]")
    _check_tensor("v", v, "[B, Tk, H, V]")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    (B, T, H, K), (Bk, Tk, Hk, Kk), (Bv, Tv, Hv, _) = q.shape, k.shape, v.shape
    if (Bk, Hk) != (B, H) or (Bv, Hv) != (B, H):
        raise ValueError(f"q, k, v must agree on B and H: q is [B, T, H, K] = {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Tv != Tk:
        raise ValueError(f"k and v must hold the same number of keys Tk: k is [B, Tk, H, K] = "
                         f"{tuple(k.shape)}, v is [B, Tk, H, V] = {tuple(v.shape)}")
    if Kk != K:
        raise ValueError(f"q and k must share the head dim K: q is [B, T, H, K] = {tuple(q.shape)}, "
                         f"k is {tuple(k.shape)}")
    if T < 1 or Tk < 1 or K < 1 or v.shape[-1] < 1:
        raise ValueError(f"q, k, v need at least one token and one channel, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if causal and Tk != T:
        raise ValueError(f"causal attention needs as many keys as queries (T = Tk): q is "
                         f"{tuple(q.shape)}, k is {tuple(k.shape)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be None or a Python number, got {type(scale).__name__}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")


def _prologue(q, k, v, causal, scale, chunk_size=None):
    """Checks, the default scale 1/√K, and the dtype policy: the dtype the math runs in."""
    _check_inputs(q, k, v, causal, scale, chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    compute_dtype = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; f64 stays
    return scale, compute_dtype


# ------------------------------------------------------------------------------------------------
# Parallel form: the definition
# ------------------------------------------------------------------------------------------------
def softmax_attention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               causal: bool = True, scale: float | None = None,
                               return_lse: bool = False):
    """Exact attention, materialising the [T, Tk] matrix P (equations (1)–(4)).

    Args:
        q: [B, T, H, K]
        k: [B, Tk, H, K]   (Tk = T when causal)
        v: [B, Tk, H, V]
    Returns:
        o: [B, T, H, V] in q's dtype, and with return_lse=True also
        lse: [B, T, H], log Σⱼ exp(s_ij) in natural log (float32 for half inputs).
    """
    scale, dt = _prologue(q, k, v, causal, scale)
    T, Tk = q.shape[1], k.shape[1]
    q_, k_, v_ = (x.to(dt).transpose(1, 2) for x in (q, k, v))  # [B, H, T, K], [B, H, Tk, *]
    s = scale * (q_ @ k_.transpose(-1, -2))  # (1) [B, H, T, Tk]
    if causal:
        mask = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril()  # (2) j <= i
        s = s.masked_fill(~mask, NEG_INF)
    m = s.amax(dim=-1, keepdim=True)  # (3) row max: exp(s - m) <= 1 never overflows  [B, H, T, 1]
    e = torch.exp(s - m)  # [B, H, T, Tk]
    l = e.sum(dim=-1, keepdim=True)  # (3) [B, H, T, 1]
    P = e / l  # (3) the mixing matrix, rows sum to 1  [B, H, T, Tk]
    o = (P @ v_).transpose(1, 2).to(q.dtype)  # (4) [B, T, H, V]
    if not return_lse:
        return o
    lse = (m + torch.log(l)).squeeze(-1).transpose(1, 2)  # (4) [B, T, H]
    return o, lse


# ------------------------------------------------------------------------------------------------
# Chunk form: online softmax over key blocks (the flash form)
# ------------------------------------------------------------------------------------------------
def softmax_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            causal: bool = True, scale: float | None = None,
                            return_lse: bool = False, chunk_size: int = 64):
    """The same attention, one block of `chunk_size` keys at a time (equations (5)–(8)). It
    holds scores for all queries against one key block, [T, L], never the [T, Tk] matrix.
    The kernel in fast/ also splits the queries into blocks (rows are independent, so that is
    pure parallelism) and, when causal, skips key blocks that lie wholly in a query's future.

    Args:
        q: [B, T, H, K]
        k: [B, Tk, H, K]   (Tk = T when causal)
        v: [B, Tk, H, V]
        chunk_size: keys per block L, a power of two; Tk need not be a multiple of it.
    Returns:
        o: [B, T, H, V], and with return_lse=True also lse: [B, T, H] (as the parallel form).
    """
    scale, dt = _prologue(q, k, v, causal, scale, chunk_size)
    B, T, H, _ = q.shape
    Tk, L = k.shape[1], chunk_size
    q_, k_, v_ = (x.to(dt).transpose(1, 2) for x in (q, k, v))  # [B, H, T, K], [B, H, Tk, *]
    i = torch.arange(T, device=q.device)  # query positions
    m = torch.full((B, H, T), NEG_INF, dtype=dt, device=q.device)  # running max of s_ij
    l = torch.zeros(B, H, T, dtype=dt, device=q.device)  # running Σ exp(s_ij - m)
    acc = torch.zeros(B, H, T, v.shape[-1], dtype=dt, device=q.device)  # Σ exp(s_ij - m) v_j
    # Key blocks in order. Block 0 holds key 0, which every query sees, so after it m is finite
    # for every row; a later block whose keys a query cannot see gives a row max of -inf, which
    # leaves m unchanged and adds exp(-inf) = 0. So no row ever computes exp(-inf - (-inf)).
    # The last block is shorter when L does not divide Tk: slicing handles it exactly.
    for start in range(0, Tk, L):
        k_n, v_n = k_[:, :, start:start + L], v_[:, :, start:start + L]  # [B, H, L, K], [B, H, L, V]
        s = scale * (q_ @ k_n.transpose(-1, -2))  # (1) [B, H, T, L]
        if causal:
            j = torch.arange(start, start + k_n.shape[2], device=q.device)
            s = s.masked_fill(j[None, :] > i[:, None], NEG_INF)  # (2)
        m_new = torch.maximum(m, s.amax(dim=-1))  # (5) [B, H, T]
        alpha = torch.exp(m - m_new)  # how much the old sums shrink under the new max  [B, H, T]
        e = torch.exp(s - m_new[..., None])  # <= 1: exp never overflows  [B, H, T, L]
        l = alpha * l + e.sum(dim=-1)  # (6)
        acc = alpha[..., None] * acc + e @ v_n  # (7) [B, H, T, V]
        m = m_new
    o = (acc / l[..., None]).transpose(1, 2).to(q.dtype)  # (8) [B, T, H, V]
    if not return_lse:
        return o
    lse = (m + torch.log(l)).transpose(1, 2)  # (8) [B, T, H]
    return o, lse


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with a KV cache for decoding.

    x [B, T, C] -> q, k, v [B, T, H, D] (D = C / H) -> attention -> o_proj -> y [B, T, C].
    The cache is a dict {"k": [B, t, H, D], "v": [B, t, H, D]} of the keys and values of the t
    tokens seen so far; it grows by one token per step (2·t·C floats: see state_size).
    """

    # The ops go through class attributes so fast/softmax_attention.py swaps only the op.
    parallel_op = staticmethod(softmax_attention_parallel)
    chunk_op = staticmethod(softmax_attention_chunk)

    def __init__(self, hidden_size: int, num_heads: int, form: str = "chunk"):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
        if form not in ("chunk", "parallel"):
            raise ValueError(f"form must be 'chunk' or 'parallel', got {form!r}")
        self.hidden_size, self.num_heads, self.form = hidden_size, num_heads, form
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def _attend(self, q, k, v, causal: bool):
        op = self.chunk_op if self.form == "chunk" else self.parallel_op
        return op(q, k, v, causal=causal)

    def _qkv(self, x):
        B, T, _ = x.shape
        shape = (B, T, self.num_heads, self.head_dim)
        return (self.q_proj(x).view(shape), self.k_proj(x).view(shape),  # [B, T, H, D]
                self.v_proj(x).view(shape))

    def _check_x(self, x, dims: str, rank: int):
        if not isinstance(x, torch.Tensor) or x.dim() != rank or x.shape[-1] != self.hidden_size:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape {dims} with C = {self.hidden_size}, got {got}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C] -> y: [B, T, C], causal."""
        return self.prefill(x)[0]

    def prefill(self, x: torch.Tensor):
        """x: [B, T, C] -> (y [B, T, C], cache {"k", "v": [B, T, H, D]})."""
        self._check_x(x, "[B, T, C]", 3)
        q, k, v = self._qkv(x)
        o = self._attend(q, k, v, causal=True)  # [B, T, H, D]
        return self.o_proj(o.reshape(x.shape)), {"k": k, "v": v}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """x_t: [B, C], one token -> (y_t [B, C], the cache grown by that token). cache=None
        starts empty. The new query sees every cached key and itself, so no mask is needed."""
        self._check_x(x_t, "[B, C]", 2)
        q, k, v = self._qkv(x_t[:, None])  # [B, 1, H, D]
        if cache is not None:
            k = torch.cat([cache["k"], k], dim=1)  # [B, t+1, H, D]
            v = torch.cat([cache["v"], v], dim=1)  # [B, t+1, H, D]
        o = self._attend(q, k, v, causal=False)  # one query over t+1 keys  [B, 1, H, D]
        return self.o_proj(o.reshape(x_t.shape)), {"k": k, "v": v}

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence the cache holds after seq_len tokens: keys and values, 2·T·C.
        Unlike a recurrent method's state this grows linearly with T."""
        return 2 * seq_len * self.hidden_size


__all__ = ["softmax_attention_parallel", "softmax_attention_chunk", "SoftmaxAttention"]
