"""Sliding-window attention — causal softmax attention over only the last `window` keys.

Paper: Longformer: The Long-Document Transformer. Beltagy, Peters, Cohan. 2020. arXiv:2004.05150
       (the sliding window); used as the precise local mixer of Based: Simple linear attention
       language models balance the recall-throughput tradeoff. Arora et al. ICML 2024.
       arXiv:2402.18668. Code read: HazyResearch/based@32c1bd4 (mixers/slide_attention.py).
Idea:  Each query attends, with an exact softmax, to itself and the window − 1 keys before it.
       Cost per token is constant, so training is linear in T and decoding needs only a rolling
       cache of the last `window` keys and values: a finite recurrent state, unlike full softmax.
       What falls out of the window is forgotten exactly; a global mixer (Based's linear
       attention) has to carry it.
Math (per head; W = window; scale = 1/√K unless given):
  (1) s_ij = scale · q_i·k_j  for i − W < j ≤ i,  else −∞       query i sees W keys, itself included
  (2) P_ij = exp(s_ij − m_i) / Σⱼ exp(s_ij − m_i),  m_i = maxⱼ s_ij,   o_i = Σⱼ P_ij v_j
  (3) chunk n (queries nL … nL+L−1): only keys nL−W+1 … nL+L−1 can score, a band of L+W−1 keys
  (4) decode: cache_t = the last W (k, v) pairs; o_t = softmax over cache_t (empty slots −∞)
  Conventions elsewhere: flash-attn's window_size=(W−1, 0) is this W (it counts keys left of i).
  Based's SlidingAttention(window_size=w) passes (w//2, 0) to flash-attn, so it equals
  W = w//2 + 1 here (its released configs: w = 256, so W = 129).
Shapes: q, k [B, T, H, K]  v [B, T, H, V]  o [B, T, H, V]  lse [B, T, H]
        decode state (k_cache [B, W, H, K], v_cache [B, W, H, V], n [] int64 = tokens seen)
Cost:  parallel O(T²(K+V)) time, O(T²) memory | chunk O(T·(L+W)·(K+V)) time, O(T·(L+W))
       memory (constant per token) | recurrent O(T·W·(K+V)), state W·(K+V) floats per head.
Forms: sliding_window_attention_parallel (definition, the band-masked [T, T] matrix, oracle) ·
       sliding_window_attention_recurrent (rolling cache, decoding) ·
       sliding_window_attention_chunk (query blocks against their key band, training).
Fast:  fast/sliding_window_attention.py — Triton windowed flash attention (chunk form): key
       blocks outside the band are never visited; forward and backward.
Dtype: compute in the input dtype (float64 exact); fp16/bf16 compute in float32, o returned in
       the input dtype, lse in float32.
Pitfalls: off-by-one in the window: W keys including the query itself, not W keys before it.
          Every row sees at least its own key, so no row is all −∞ (no NaN from 0/0).
          Rotary must be applied before keys enter the cache (each at its own position).
"""

import torch
import torch.nn as nn

NEG_INF = float("-inf")  # a masked score: exp(-inf) = 0 exactly


# ------------------------------------------------------------------------------------------------
# Input checks and the shared prologue
# ------------------------------------------------------------------------------------------------
def _check(q, k, v, window, scale, chunk_size=None):
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
        raise ValueError(f"k must be [B, T, H, K] = {tuple(q.shape)} like q, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (keys a query sees, itself included), got {window!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be None or a Python number, got {type(scale).__name__}")
    if chunk_size is not None and (chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")


def _prologue(q, k, v, window, scale, chunk_size=None):
    """Checks, default scale, and the compute dtype (float32 for half inputs)."""
    _check(q, k, v, window, scale, chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    dt = torch.promote_types(q.dtype, torch.float32)
    return q.to(dt), k.to(dt), v.to(dt), scale


def band_mask(n_q: int, n_k: int, offset: int, window: int, device=None) -> torch.Tensor:
    """(1) True where query i (0..n_q-1) may see key j (position offset + 0..n_k-1):
    i − window < j ≤ i. [n_q, n_k]"""
    i = torch.arange(n_q, device=device)[:, None]
    j = offset + torch.arange(n_k, device=device)[None, :]
    return (j <= i) & (j > i - window)


def _softmax_rows(s, v):
    """(2) softmax over the last axis of s, times v; also the row's lse. s [..., n_k], v [..., n_k, V]."""
    m = s.amax(-1, keepdim=True)  # finite: every row holds its own key
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    return (e / l) @ v, (m + torch.log(l)).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------------
def sliding_window_attention_parallel(q, k, v, *, window=64, scale=None, return_lse=False):
    """(1)-(2) The definition: the [T, T] scores, masked to the band, softmaxed. The oracle.
    Returns o [B, T, H, V] (and lse [B, T, H] with return_lse=True)."""
    dtype = q.dtype
    q, k, v, scale = _prologue(q, k, v, window, scale)
    T = q.shape[1]
    s = scale * torch.einsum("bihk,bjhk->bhij", q, k)  # (1) [B, H, T, T]
    s = s.masked_fill(~band_mask(T, T, 0, window, q.device), NEG_INF)
    o, lse = _softmax_rows(s, v.transpose(1, 2))  # (2) [B, H, T, V], [B, H, T]
    o = o.transpose(1, 2).to(dtype)  # [B, T, H, V]
    return (o, lse.transpose(1, 2)) if return_lse else o


def sliding_window_attention_recurrent(q, k, v, *, window=64, scale=None, initial_state=None,
                                       output_final_state=False):
    """(4) Token by token with a rolling cache of the last `window` keys and values: decoding.
    The cache has a fixed size W (static shapes: one compiled graph per step); slots not yet
    filled are masked. initial_state = (k_cache [B, W, H, K], v_cache [B, W, H, V], n) with n a
    0-d int64 tensor counting the tokens seen; a cache of another size than W raises.
    Returns (o [B, T, H, V], the state after the last token or None)."""
    dtype = q.dtype
    q, k, v, scale = _prologue(q, k, v, window, scale)
    B, T, H, K = q.shape
    W = window
    if initial_state is None:
        k_cache, v_cache = q.new_zeros(B, W, H, K), q.new_zeros(B, W, H, v.shape[-1])
        n = torch.zeros((), dtype=torch.long, device=q.device)
    else:
        k_cache, v_cache, n = initial_state
        if k_cache.shape[1] != W or v_cache.shape[1] != W:
            raise ValueError(f"the cache holds {k_cache.shape[1]} slots but window = {W}: a window larger "
                             f"(or smaller) than the cache cannot be decoded; the cache must be "
                             f"(k [B, W, H, K], v [B, W, H, V]) with W = window")
        if k_cache.shape != (B, W, H, K) or v_cache.shape != (B, W, H, v.shape[-1]):
            raise ValueError(f"cache must be (k [B, W, H, K] = {(B, W, H, K)}, v [B, W, H, V] = "
                             f"{(B, W, H, v.shape[-1])}), got ({tuple(k_cache.shape)}, {tuple(v_cache.shape)})")
        k_cache, v_cache = k_cache.to(q.dtype), v_cache.to(q.dtype)
    slot = torch.arange(W, device=q.device)  # slot W-1 holds the newest token
    outs = []
    for t in range(T):
        k_cache = torch.cat([k_cache[:, 1:], k[:, t:t + 1]], dim=1)  # (4) roll in k_t  [B, W, H, K]
        v_cache = torch.cat([v_cache[:, 1:], v[:, t:t + 1]], dim=1)  # [B, W, H, V]
        n = n + 1
        s = scale * torch.einsum("bhk,bwhk->bhw", q[:, t], k_cache)  # (1) [B, H, W]
        s = s.masked_fill(slot < W - n, NEG_INF)  # slots older than the first token are empty
        o_t, _ = _softmax_rows(s.unsqueeze(-2), v_cache.transpose(1, 2))  # (2) [B, H, 1, V]
        outs.append(o_t.squeeze(-2))
    o = torch.stack(outs, dim=1).to(dtype)  # [B, T, H, V]
    return o, ((k_cache, v_cache, n) if output_final_state else None)


def sliding_window_attention_chunk(q, k, v, *, window=64, scale=None, return_lse=False, chunk_size=64):
    """(3) Query blocks of L tokens, each against its band of L + W − 1 keys: the [T, T] matrix
    never exists, and memory per token is constant. Keys are padded in front by W − 1 (masked, so
    the padding value does not matter) and behind to a multiple of L; unfold then gives every
    block its band as a strided view. Returns o [B, T, H, V] (and lse with return_lse=True)."""
    dtype = q.dtype
    q, k, v, scale = _prologue(q, k, v, window, scale, chunk_size)
    B, T, H, K = q.shape
    L, W = chunk_size, window
    N = -(-T // L)
    pad_q = N * L - T
    q = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, pad_q))  # [B, N·L, H, K]
    k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, W - 1, pad_q)) for x in (k, v))  # [B, W−1+N·L, H, *]
    q_c = q.view(B, N, L, H, K)  # [B, N, L, H, K]
    k_c = k.unfold(1, L + W - 1, L)  # block n: padded keys nL … nL+L+W−2  [B, N, H, K, L+W−1]
    v_c = v.unfold(1, L + W - 1, L)  # [B, N, H, V, L+W−1]
    s = scale * torch.einsum("bnihk,bnhkj->bnhij", q_c, k_c)  # (1) [B, N, H, L, L+W−1]
    # Query a of block n is position nL + a; band key b is position nL − (W−1) + b. The band (1)
    # is then the same for every block; keys at negative positions (the front pad) are masked too.
    mask = band_mask(L, L + W - 1, -(W - 1), W, q.device)  # [L, L+W−1]
    pos_k = torch.arange(N, device=q.device)[:, None] * L - (W - 1) + torch.arange(L + W - 1, device=q.device)
    mask = mask & (pos_k >= 0)[:, None, None, :]  # [N, 1, L, L+W−1]
    s = s.masked_fill(~mask, NEG_INF)
    o, lse = _softmax_rows(s, v_c.transpose(-1, -2))  # (2) [B, N, H, L, V], [B, N, H, L]
    o = o.permute(0, 1, 3, 2, 4).reshape(B, N * L, H, -1)[:, :T].to(dtype)  # [B, T, H, V]
    lse = lse.permute(0, 1, 3, 2).reshape(B, N * L, H)[:, :T]  # [B, T, H]
    return (o, lse) if return_lse else o


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
def rotary(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding on the whole head dim, non-interleaved (rotate-half, GPT-NeoX and
    flash-attn's default): pairs (x_a, x_{a+D/2}) turn by pos·base^(−2a/D). x [B, T, H, D], pos [T]."""
    D = x.shape[-1]
    dt = torch.promote_types(x.dtype, torch.float32)  # angles in fp32 at least: bf16 rounds pos > 256
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=dt) / D)  # [D/2]
    angle = pos.to(dt)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]  # [1, T, 1, D/2]
    x1, x2 = x[..., : D // 2].to(dt), x[..., D // 2:].to(dt)
    # Back to x's dtype: q, k and v must share one dtype (also under autocast, where cos is fp32).
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)  # [B, T, H, D]


class SlidingWindowAttention(nn.Module):
    """Based's SlidingAttention: causal softmax over the last `window` tokens, rotary on the whole
    head dim (base 10000), fused Wqkv and out_proj without biases (the reference's names).
    The decode cache is {"k": [B, W, H, D] (rotated keys), "v": [B, W, H, D], "pos": [] int64},
    of constant size: state_size does not grow with T."""

    parallel_op = staticmethod(sliding_window_attention_parallel)
    recurrent_op = staticmethod(sliding_window_attention_recurrent)
    chunk_op = staticmethod(sliding_window_attention_chunk)

    def __init__(self, hidden_size: int, num_heads: int, window: int = 64, form: str = "chunk",
                 rotary_base: float = 10000.0):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} must be an even head dim")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if form not in ("chunk", "recurrent", "parallel"):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.hidden_size, self.num_heads, self.window, self.form = hidden_size, num_heads, window, form
        self.head_dim, self.rotary_base = hidden_size // num_heads, rotary_base
        self.Wqkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def _qkv(self, x, pos):
        B, T, _ = x.shape
        q, k, v = self.Wqkv(x).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)  # [B, T, H, D] each
        return rotary(q, pos, self.rotary_base), rotary(k, pos, self.rotary_base), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefill(x)[0]

    def prefill(self, x: torch.Tensor):
        """x [B, T, C] -> (y [B, T, C], cache of the last `window` rotated keys and values)."""
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, C] with C = {self.hidden_size}, got {tuple(x.shape)}")
        B, T, _ = x.shape
        q, k, v = self._qkv(x, torch.arange(T, device=x.device))
        if self.form == "recurrent":
            o, _ = self.recurrent_op(q, k, v, window=self.window)
        else:
            o = (self.chunk_op if self.form == "chunk" else self.parallel_op)(q, k, v, window=self.window)
        W = self.window  # the cache: the last W keys/values, zero slots in front when T < W
        k_cache = torch.nn.functional.pad(k, (0, 0, 0, 0, max(W - T, 0), 0))[:, -W:]  # [B, W, H, D]
        v_cache = torch.nn.functional.pad(v, (0, 0, 0, 0, max(W - T, 0), 0))[:, -W:]  # [B, W, H, D]
        pos = torch.full((), T, dtype=torch.long, device=x.device)
        return self.out_proj(o.reshape(B, T, -1)), {"k": k_cache, "v": v_cache, "pos": pos}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """One token x_t [B, C] -> (y_t [B, C], the cache rolled by one). A cache made for a
        smaller window than this layer's raises."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.hidden_size:
            raise ValueError(f"x_t must be [B, C] with C = {self.hidden_size}, got {tuple(x_t.shape)}")
        pos = torch.zeros((), dtype=torch.long, device=x_t.device) if cache is None else cache["pos"]
        q, k, v = self._qkv(x_t.unsqueeze(1), pos.reshape(1))  # [B, 1, H, D]
        state = None if cache is None else (cache["k"], cache["v"], cache["pos"])
        o, (k_cache, v_cache, n) = self.recurrent_op(q, k, v, window=self.window, initial_state=state,
                                                     output_final_state=True)
        return self.out_proj(o.reshape(x_t.shape[0], -1)), {"k": k_cache, "v": v_cache, "pos": n}

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence in the cache: 2·W·C keys and values, whatever seq_len (+1 counter)."""
        return 2 * self.window * self.hidden_size + 1


__all__ = ["band_mask", "rotary", "sliding_window_attention_parallel", "sliding_window_attention_recurrent",
           "sliding_window_attention_chunk", "SlidingWindowAttention"]
