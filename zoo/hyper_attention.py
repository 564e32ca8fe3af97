"""HyperAttention — sort queries and keys by an angular LSH so the heavy scores fall in diagonal
blocks, attend those blocks exactly, estimate the rest from uniformly sampled keys.

Paper: HyperAttention: Long-context Attention in Near-Linear Time. Han, Jayaram, Karbasi,
       Mirrokni, Woodruff, Zandieh. ICLR 2024. arXiv:2310.05869. Official code read:
       insuhan/hyper-attn (PyTorch) and amirzandieh/HyperAttention (Triton); where they differ,
       this file follows the PyTorch one (overlap mask and the N/s weight on the samples).
Idea:  Softmax attention is dominated by the few large scores q·k. An angular LSH (signs of r
       random projections) gives nearby vectors the same bucket; sorting queries and keys by bucket
       (buckets in Gray-code order, so neighbouring buckets differ in one hyperplane) puts most
       large scores inside the diagonal blocks of the sorted score matrix. Those blocks are
       attended exactly; everything off the blocks is estimated by s keys drawn uniformly, each
       weighted N/s. The two partial softmaxes are merged by their log-sum-exp. Causal attention
       splits the sequence in halves: the two diagonal halves recursively, the lower-left block
       (queries of the second half, keys of the first) with the non-causal method.
Math (per head; N tokens, b = block_size, s = sample_size, scale = 1/√d unless given):
       (1) hash:  bucket(x) = Σ_ℓ 2^ℓ [x·p_ℓ > 0],  code(x) = rank of bucket(x) in the reflected
                  Gray sequence g(n) = n ⊕ (n >> 1); π_q, π_k sort queries, keys by code (stable)
       (2) blocks: query i and key j share a block iff ⌊π_q⁻¹(i)/b⌋ = ⌊π_k⁻¹(j)/b⌋  (i ~ j)
       (3) block part:   l¹_i = Σ_{j ~ i} e^{s_ij},             o¹_i = Σ_{j ~ i} e^{s_ij} v_j / l¹_i
       (4) sampled part: J_1..J_s uniform in [0, N) (sorted key positions, with replacement),
                  l²_i = (N/s) Σ_t [J_t ≁ i] e^{s_iJ_t},   o²_i = Σ_t [J_t ≁ i] e^{s_iJ_t} v_{J_t} / (l²_i s/N)
       (5) merge: lse = log(e^{lse¹} + e^{lse²}),  o = e^{lse¹−lse} o¹ + e^{lse²−lse} o²
       Equivalently, one softmax with log-weights w_ij: 0 for j ~ i, log(c_ij N/s) for a key
       sampled c_ij times off the block, −∞ otherwise:  o_i = Σ_j e^{s_ij + w_ij} v_j / Σ_j e^{s_ij + w_ij}.
       (6) N < min_seq_len (non-causal) or N ≤ min_seq_len (causal): exact softmax attention.
       (7) causal, N > min_seq_len: o_top = causal(top half); o_bottom = merge(causal(bottom half),
           non-causal(bottom queries, top keys))  — recursively; an odd N gets one zero token
           appended at the end (exact: every real query is before it, so it is masked away).
Shapes: HyperAttention (the module, as the official code): q, k [B, H, N, d]  v [B, H, N, dv]
        -> o [B, H, N, dv], lse [B, H, N, 1].  The functional ops take the zoo's layout:
        q, k [B, T, H, K]  v [B, T, H, V]  proj [K, r]  -> o [B, T, H, V], lse [B, T, H].
        q, k, v hold the same number of tokens (self-attention; the official code asserts it too).
Cost:  hashing O(N·d·r), sorting O(N log N), attention O(N·(b + s)·(d + dv)) time, O(N·(b + s))
       memory in the chunk form; causal adds a log₂(N/min_seq_len) factor on the sampled part and
       O(N·min_seq_len) exact attention at the leaves. No recurrent form: the method needs all keys
       at once (decoding keeps a full KV cache, as exact attention).
Forms: hyper_attention_parallel (the estimator as one dense [N, N] log-weight matrix w per piece:
       the oracle) · hyper_attention_chunk (sorted blocks + sampled keys + lse merge: the
       algorithm) · HyperAttention (the module, the official API) · HyperAttentionLayer (the zoo's
       layer API, x [B, T, C] -> y, causal: what train/ builds). Steps, each a function: lsh_projections,
       lsh_codes, sort_lsh, draw_samples, attention_with_lse, block_diagonal_attention,
       sampled_residual_attention, merge_partial_attention, causal_recursion.
Fast:  fast/hyper_attention.py — Triton kernels for the hash and for block-diagonal + sampled
       attention with the lse merge fused (online softmax over both key sets), forward and
       backward; the sort and the sample draw stay in torch.
Randomness: the projections are drawn once (the module's `seed`, or `proj` passed to the ops);
       the samples are drawn on every call from `generator` (None: torch's global generator).
       Same proj and same generator state give the same result.
Dtype: compute in the input dtype (float64 exact); fp16/bf16 compute in float32 and return o in
       the input dtype, lse in float32.
Pitfalls: the public codes sort by g(bucket), the Gray code *of* the bucket, not its rank in the
       Gray sequence; neighbours in that order can differ in two bits (2 -> 7 for r = 3). Here the
       sort key is the rank (g⁻¹), so neighbouring buckets always differ in one hyperplane.
       N not a multiple of b: the sorted tokens are padded to a multiple of b and the padding keys
       are masked to −∞, not zero keys (a zero key adds e⁰ to the normaliser: the official code's
       small bias). Samples never land on padding.
       A sampled key inside the query's own block is masked (it is already counted exactly); the
       mask is finfo.min, not −∞, so a row whose samples are all masked gets lse ≈ finfo.min and
       weight 0 in the merge instead of NaN.
       Causality: a query never reads a future key or value. But in the lower-left block the
       queries of the second half are sorted together, so which past keys share a query's block
       depends on the hash codes of the other queries of that half, later ones included (as in the
       paper and both official codes). Perturbing future k, v leaves the past bit-identical;
       perturbing a future q can move a past query to another block.
       smooth_block=True (the Triton repo's cyclic band of keys centred on each query tile, without
       overlap mask or N/s weight) is not implemented: the module raises on it.
"""

import math

import torch
import torch.nn as nn

NEG_INF = float("-inf")  # a key outside the attended set: weight e^-inf = 0 exactly
MAX_LSH_PROJS = 16  # codes must fit the 16-bit Gray rank below (2^16 buckets is already far more than N/b)


# ------------------------------------------------------------------------------------------------
# Input checks and the prologue every form shares
# ------------------------------------------------------------------------------------------------
def _check_tensor(name: str, x, dims: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape {dims} (4 dims), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating tensor, got dtype {x.dtype}")


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if bad or (high is not None and value > high):
        want = f"an int in {low}..{high}" if high is not None else f"an int >= {low}"
        raise ValueError(f"{name} must be {want}, got {value!r}")


def _check_inputs(q, k, v, proj, scale, block_size, sample_size, min_seq_len) -> None:
    """Checks on [B, T, H, K] inputs. Python ints only: free under torch.compile."""
    _check_tensor("q", q, "[B, T, H, K]")
    _check_tensor("k", k, "[B, T, H, K]")
    _check_tensor("v", v, "[B, T, H, V]")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, T, H, K = q.shape
    if k.shape[:3] != (B, T, H) or v.shape[:3] != (B, T, H):
        raise ValueError(f"q, k, v must hold the same B, T, H (self-attention; unequal lengths are "
                         f"not supported): q is [B, T, H, K] = {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[3] != K:
        raise ValueError(f"q and k must share the head dim K: q is [B, T, H, K] = {tuple(q.shape)}, "
                         f"k is {tuple(k.shape)}")
    if T < 1 or K < 1 or v.shape[3] < 1:
        raise ValueError(f"q, k, v need at least one token and one channel, got q {tuple(q.shape)}, "
                         f"v {tuple(v.shape)}")
    if not isinstance(proj, torch.Tensor) or proj.dim() != 2 or proj.shape[0] != K:
        got = tuple(proj.shape) if isinstance(proj, torch.Tensor) else type(proj).__name__
        raise ValueError(f"proj must be the LSH directions [K, r] with K = {K}, got {got}")
    if not 1 <= proj.shape[1] <= MAX_LSH_PROJS:
        raise ValueError(f"proj must hold 1..{MAX_LSH_PROJS} directions (lsh_num_projs), got {proj.shape[1]}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be None or a Python number, got {type(scale).__name__}")
    _check_int("block_size", block_size, 1)
    _check_int("sample_size", sample_size, 0)  # 0 turns the sampled part off
    _check_int("min_seq_len", min_seq_len, 1)  # the causal recursion stops at it


def _prologue(q, k, v, proj, scale, block_size, sample_size, min_seq_len):
    """Checks, the default scale, the compute dtype, and the heads-first views [B, H, T, *]."""
    _check_inputs(q, k, v, proj, scale, block_size, sample_size, min_seq_len)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    dt = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; f64 stays
    q_, k_, v_ = (x.to(dt).transpose(1, 2) for x in (q, k, v))  # [B, H, T, K], [B, H, T, V]
    return q_, k_, v_, proj.to(device=q.device, dtype=dt), scale


# ------------------------------------------------------------------------------------------------
# Step 1: sortLSH — angular hash, Gray-code rank, sort (equation (1))
# ------------------------------------------------------------------------------------------------
def lsh_projections(head_dim: int, num_projs: int, *, seed: int | None = None,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """r Gaussian directions [head_dim, r]; a sign pattern against them is a bucket."""
    _check_int("lsh_num_projs", num_projs, 1, MAX_LSH_PROJS)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(head_dim, num_projs, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def gray_code_rank(bucket: torch.Tensor) -> torch.Tensor:
    """The position of `bucket` in the reflected Gray sequence g(n) = n ⊕ (n >> 1): g⁻¹(bucket),
    a prefix XOR of the bits from the top. Consecutive ranks are buckets one bit apart."""
    rank = bucket
    for shift in (1, 2, 4, 8):  # covers 16 bits = MAX_LSH_PROJS
        rank = rank ^ (rank >> shift)
    return rank


def lsh_codes(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """(1): x [B, H, T, d], proj [d, r] -> the sort key of every row, int64 [B, H, T]."""
    bits = (x @ proj > 0).long()  # sign of each projection; scale-free, so no normalising  [B, H, T, r]
    weights = 2 ** torch.arange(proj.shape[1], device=x.device)  # bit ℓ is worth 2^ℓ  [r]
    bucket = (bits * weights).sum(-1)  # [B, H, T]
    return gray_code_rank(bucket)


def sort_lsh(q: torch.Tensor, k: torch.Tensor, proj: torch.Tensor):
    """(1): the permutations that sort queries and keys by code, each on its own. Stable, so
    equal codes keep token order. q, k [B, H, T, d] -> perm_q, perm_k int64 [B, H, T]
    (perm[p] = the token at sorted position p)."""
    perm_q = torch.sort(lsh_codes(q, proj), dim=-1, stable=True).indices
    perm_k = torch.sort(lsh_codes(k, proj), dim=-1, stable=True).indices
    return perm_q, perm_k


def draw_samples(B: int, H: int, T: int, sample_size: int, generator=None, device=None) -> torch.Tensor:
    """(4): s sorted key positions per (batch, head), uniform over [0, T), with replacement
    [B, H, s]. Drawn where the generator lives, then moved, so a CPU generator reproduces the
    same samples for a GPU run."""
    where = generator.device if generator is not None else device
    return torch.randint(0, T, (B, H, sample_size), generator=generator, device=where).to(device)


def _gather_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x[b, h, perm[b, h, p]] for every p: rows of [B, H, T, d] in the order perm [B, H, P]."""
    return x.gather(2, perm[..., None].expand(*perm.shape, x.shape[-1]))


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    """The inverse permutation along the last dim: rank[perm[p]] = p."""
    positions = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter(-1, perm, positions)


# ------------------------------------------------------------------------------------------------
# Step 2: exact attention that also returns lse (the building block of every part)
# ------------------------------------------------------------------------------------------------
def attention_with_lse(q, k, v, scale: float, *, causal: bool = False, log_weight=None):
    """Exact softmax attention on heads-first tensors, o and lse = log Σⱼ e^{s_ij + w_ij}.
    q [..., T, d], k [..., Tk, d], v [..., Tk, dv], log_weight w broadcast to [..., T, Tk]
    (−∞ drops a key, log c weights it c times) -> o [..., T, dv], lse [..., T]."""
    s = scale * (q @ k.transpose(-1, -2))  # [..., T, Tk]
    if log_weight is not None:
        s = s + log_weight
    if causal:
        T, Tk = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril().logical_not(), NEG_INF)
    lse = torch.logsumexp(s, dim=-1)  # [..., T]
    return torch.exp(s - lse[..., None]) @ v, lse  # [..., T, dv], [..., T]


# ------------------------------------------------------------------------------------------------
# Step 3: the block-diagonal part, on sorted tokens (equation (3))
# ------------------------------------------------------------------------------------------------
def block_diagonal_attention(q_s, k_s, v_s, block_size: int, scale: float):
    """(3): sorted query block n attends sorted key block n exactly. q_s, k_s [B, H, T, d],
    v_s [B, H, T, dv] in sorted order -> o¹ [B, H, T, dv], lse¹ [B, H, T] (sorted order).
    T is padded to a multiple of b; the padding keys get −∞ (not a zero key, which would add e⁰
    to the normaliser), and the padding queries are dropped. The last block always holds at
    least one real key, so every row is finite."""
    B, H, T, d = q_s.shape
    nb = -(-T // block_size)  # number of blocks
    pad = nb * block_size - T
    q_b, k_b, v_b = (torch.nn.functional.pad(x, (0, 0, 0, pad)).view(B, H, nb, block_size, x.shape[-1])
                     for x in (q_s, k_s, v_s))  # [B, H, nb, b, *]
    real_key = torch.arange(nb * block_size, device=q_s.device) < T  # [nb·b]
    key_bias = torch.zeros(nb * block_size, dtype=q_s.dtype, device=q_s.device).masked_fill(~real_key, NEG_INF)
    o, lse = attention_with_lse(q_b, k_b, v_b, scale, log_weight=key_bias.view(nb, 1, block_size))
    return o.reshape(B, H, nb * block_size, -1)[:, :, :T], lse.reshape(B, H, nb * block_size)[:, :, :T]


# ------------------------------------------------------------------------------------------------
# Step 4: the residual, estimated from uniformly sampled keys (equation (4))
# ------------------------------------------------------------------------------------------------
def sampled_residual_attention(q_s, k_s, v_s, samples, block_size: int, scale: float):
    """(4): every sorted query attends the s sampled keys, except those inside its own block
    (already counted in (3)); the normaliser is scaled by N/s, i.e. log(N/s) added to lse.
    q_s, k_s, v_s sorted [B, H, T, *]; samples [B, H, s] sorted key positions
    -> o² [B, H, T, dv], lse² [B, H, T]."""
    T, s = q_s.shape[2], samples.shape[-1]
    k_smp, v_smp = _gather_rows(k_s, samples), _gather_rows(v_s, samples)  # [B, H, s, *]
    q_block = torch.arange(T, device=q_s.device) // block_size  # [T]
    overlap = q_block[:, None] == (samples // block_size)[..., None, :]  # [B, H, T, s]
    # finfo.min, not −∞: a row whose samples are all masked stays finite and gets weight 0 in (5)
    bias = torch.zeros(overlap.shape, dtype=q_s.dtype, device=q_s.device)
    bias = bias.masked_fill(overlap, torch.finfo(q_s.dtype).min)
    o, lse = attention_with_lse(q_s, k_smp, v_smp, scale, log_weight=bias)
    return o, lse + math.log(T / s)  # each sample stands for N/s keys


# ------------------------------------------------------------------------------------------------
# Step 5: merging two partial softmaxes by their lse (equation (5))
# ------------------------------------------------------------------------------------------------
def merge_partial_attention(o1, lse1, o2, lse2):
    """(5): attention over two disjoint key sets -> attention over their union. o [..., T, dv],
    lse [..., T]. Written with logaddexp so no exp overflows; an lse of finfo.min gets weight 0."""
    lse = torch.logaddexp(lse1, lse2)  # [..., T]
    return torch.exp(lse1 - lse)[..., None] * o1 + torch.exp(lse2 - lse)[..., None] * o2, lse


# ------------------------------------------------------------------------------------------------
# Non-causal HyperAttention, two ways: the chunk algorithm and the dense log-weight oracle
# ------------------------------------------------------------------------------------------------
def _noncausal_chunk(q, k, v, proj, scale, block_size, sample_size, min_seq_len, generator):
    """(1)–(6) on heads-first [B, H, T, *] -> o [B, H, T, dv], lse [B, H, T]."""
    B, H, T, _ = q.shape
    if T < min_seq_len:  # (6)
        return attention_with_lse(q, k, v, scale)
    perm_q, perm_k = sort_lsh(q, k, proj)  # (1) [B, H, T]
    q_s, k_s, v_s = _gather_rows(q, perm_q), _gather_rows(k, perm_k), _gather_rows(v, perm_k)
    o, lse = block_diagonal_attention(q_s, k_s, v_s, block_size, scale)  # (3) sorted order
    if sample_size > 0 and T > block_size:  # one block covering T leaves no residual
        samples = draw_samples(B, H, T, sample_size, generator, q.device)  # (4)
        o_res, lse_res = sampled_residual_attention(q_s, k_s, v_s, samples, block_size, scale)
        o, lse = merge_partial_attention(o, lse, o_res, lse_res)  # (5)
    rank_q = _inverse(perm_q)  # un-sort the rows  [B, H, T]
    return _gather_rows(o, rank_q), lse.gather(-1, rank_q)


def _noncausal_parallel(q, k, v, proj, scale, block_size, sample_size, min_seq_len, generator):
    """The same estimator as one softmax with the dense log-weights w of (5) [B, H, T, T]."""
    B, H, T, _ = q.shape
    if T < min_seq_len:  # (6)
        return attention_with_lse(q, k, v, scale)
    perm_q, perm_k = sort_lsh(q, k, proj)  # (1)
    block_q, block_k = _inverse(perm_q) // block_size, _inverse(perm_k) // block_size  # (2) [B, H, T]
    same_block = block_q[..., :, None] == block_k[..., None, :]  # i ~ j  [B, H, T, T]
    count = torch.zeros(B, H, T, dtype=q.dtype, device=q.device)  # c_j: times key j was sampled
    if sample_size > 0 and T > block_size:
        samples = draw_samples(B, H, T, sample_size, generator, q.device)  # (4) sorted positions
        count = count.scatter_add(-1, perm_k.gather(-1, samples), torch.ones_like(samples, dtype=q.dtype))
    # w_ij = 0 on the block, log(c_j N/s) off it; log 0 = −∞ drops keys never drawn
    log_weight = torch.where(same_block, 0.0, torch.log(count * (T / max(sample_size, 1)))[..., None, :])
    return attention_with_lse(q, k, v, scale, log_weight=log_weight)  # [B, H, T, dv], [B, H, T]


# ------------------------------------------------------------------------------------------------
# Causal HyperAttention: the recursion over halves (equation (7))
# ------------------------------------------------------------------------------------------------
def causal_recursion(q, k, v, *, noncausal, exact_causal, min_seq_len: int):
    """(7) on heads-first [B, H, T, *]: the two diagonal halves are causal again and go down one
    call as 2H heads of T/2 tokens; the lower-left block (second-half queries, first-half keys)
    is wholly in the past: `noncausal(q, k, v)`. Leaves of ≤ min_seq_len tokens: `exact_causal`.
    Both callables return (o, lse); the fast mirror passes its kernels here.
    -> o [B, H, T, dv], lse [B, H, T]."""
    B, H, T, _ = q.shape
    if T <= min_seq_len:  # (6)
        return exact_causal(q, k, v)
    pad = T % 2  # one zero token at the end: after every real query, so causally masked away
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 1)) for x in (q, k, v))
    half = (T + pad) // 2
    # the two diagonal halves of every head as 2H heads: head h -> 2h (top), 2h + 1 (bottom)
    o_d, lse_d = causal_recursion(*(x.reshape(B, 2 * H, half, x.shape[-1]) for x in (q, k, v)),
                                  noncausal=noncausal, exact_causal=exact_causal, min_seq_len=min_seq_len)
    o_d, lse_d = o_d.reshape(B, H, 2 * half, -1), lse_d.reshape(B, H, 2 * half)  # [B, H, T', dv]
    o_ll, lse_ll = noncausal(q[:, :, half:], k[:, :, :half], v[:, :, :half])  # lower-left  [B, H, T'/2, dv]
    o_bot, lse_bot = merge_partial_attention(o_d[:, :, half:], lse_d[:, :, half:], o_ll, lse_ll)  # (5)
    o = torch.cat([o_d[:, :, :half], o_bot], dim=2)[:, :, :T]  # [B, H, T, dv]
    lse = torch.cat([lse_d[:, :, :half], lse_bot], dim=2)[:, :, :T]  # [B, H, T]
    return o, lse


def _hyper(noncausal_core, q, k, v, proj, causal, scale, return_lse, block_size, sample_size,
           min_seq_len, generator):
    """Shared driver of both forms: prologue, causal or not, back to [B, T, H, *]."""
    dtype = q.dtype
    q_, k_, v_, proj_, scale = _prologue(q, k, v, proj, scale, block_size, sample_size, min_seq_len)

    def noncausal(q, k, v):
        return noncausal_core(q, k, v, proj_, scale, block_size, sample_size, min_seq_len, generator)

    if causal:
        o, lse = causal_recursion(q_, k_, v_, noncausal=noncausal, min_seq_len=min_seq_len,
                                  exact_causal=lambda q, k, v: attention_with_lse(q, k, v, scale, causal=True))
    else:
        o, lse = noncausal(q_, k_, v_)
    o = o.transpose(1, 2).to(dtype)  # [B, T, H, V]
    return (o, lse.transpose(1, 2)) if return_lse else o  # lse [B, T, H]


def hyper_attention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                             proj: torch.Tensor, causal: bool = False, scale: float | None = None,
                             return_lse: bool = False, block_size: int = 256, sample_size: int = 256,
                             min_seq_len: int = 2048, generator: torch.Generator | None = None):
    """The estimator as dense [T, T] log-weights per piece (the oracle; equations (2), (5), (7)).
    Same arguments and results as hyper_attention_chunk; the same proj and generator state give
    the same samples, so the two agree to rounding."""
    return _hyper(_noncausal_parallel, q, k, v, proj, causal, scale, return_lse, block_size,
                  sample_size, min_seq_len, generator)


def hyper_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                          proj: torch.Tensor, causal: bool = False, scale: float | None = None,
                          return_lse: bool = False, block_size: int = 256, sample_size: int = 256,
                          min_seq_len: int = 2048, generator: torch.Generator | None = None):
    """HyperAttention (equations (1)–(7)): sorted blocks + sampled keys, merged by lse.

    Args:
        q, k: [B, T, H, K];  v: [B, T, H, V]  (the same T: self-attention)
        proj: [K, r] LSH directions, 1 ≤ r ≤ 16 (lsh_projections)
        causal: the recursion (7) instead of (1)–(5)
        block_size: b, sorted tokens per diagonal block (T need not be a multiple of it)
        sample_size: s, sampled keys per (batch, head) for the residual; 0 turns it off
        min_seq_len: below it (at or below it when causal) exact attention (6)
        generator: the sample draw's generator (None: torch's global one)
    Returns:
        o [B, T, H, V] in q's dtype; with return_lse=True also lse [B, T, H] (natural log).
    """
    return _hyper(_noncausal_chunk, q, k, v, proj, causal, scale, return_lse, block_size,
                  sample_size, min_seq_len, generator)


# ------------------------------------------------------------------------------------------------
# The module (the official code's API: heads-first tensors, no learnable parameters)
# ------------------------------------------------------------------------------------------------
class HyperAttention(nn.Module):
    """Drop-in replacement of an attention kernel: attn(q, k, v, causal=..., scale=None,
    return_lse=False) on q, k [B, H, N, d], v [B, H, N, dv] -> o [B, H, N, dv] (and lse
    [B, H, N, 1]). It holds no weights, only the LSH directions, a non-persistent buffer drawn
    from `seed` (None: torch's global generator), so state dicts are empty as in the official code.
    """

    chunk_op = staticmethod(hyper_attention_chunk)  # fast/hyper_attention.py swaps only this

    def __init__(self, input_dim: int = 64, lsh_num_projs: int = 8, block_size: int = 256,
                 sample_size: int = 256, min_seq_len: int = 2048, smooth_block: bool = False,
                 seed: int | None = None):
        super().__init__()
        _check_int("input_dim", input_dim, 1)
        _check_int("block_size", block_size, 1)
        _check_int("sample_size", sample_size, 0)
        _check_int("min_seq_len", min_seq_len, 1)  # the causal recursion stops at it
        if smooth_block:
            raise ValueError("smooth_block=True (the Triton repo's cyclic key band, without the overlap "
                             "mask and N/s weight) is not implemented; use smooth_block=False")
        self.input_dim, self.lsh_num_projs = input_dim, lsh_num_projs
        self.block_size, self.sample_size, self.min_seq_len = block_size, sample_size, min_seq_len
        self.smooth_block = smooth_block
        self.register_buffer("proj", lsh_projections(input_dim, lsh_num_projs, seed=seed), persistent=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                causal: bool = False, scale: float | None = None, return_lse: bool = False,
                generator: torch.Generator | None = None):
        """query, key [B, H, N, d], value [B, H, N, dv] -> o [B, H, N, dv] (, lse [B, H, N, 1])."""
        for name, x in (("query", query), ("key", key), ("value", value)):
            _check_tensor(name, x, "[B, H, N, d] (this module is heads-first, as the official code)")
        if query.shape[-1] != self.input_dim or key.shape[-1] != self.input_dim:
            raise ValueError(f"query and key must have head dim d = input_dim = {self.input_dim} (the LSH "
                             f"projections' width); got query {list(query.shape)}, key {list(key.shape)} "
                             f"as [B, H, N, d]")
        if not (query.shape[:3] == key.shape[:3] and key.shape[:3] == value.shape[:3]):
            raise ValueError(f"query, key and value must share [B, H, N] (unequal lengths are not supported); "
                             f"got {list(query.shape)}, {list(key.shape)}, {list(value.shape)} as [B, H, N, d]")
        out = self.chunk_op(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                            proj=self.proj, causal=causal, scale=scale, return_lse=return_lse,
                            block_size=self.block_size, sample_size=self.sample_size,
                            min_seq_len=self.min_seq_len, generator=generator)
        if not return_lse:
            return out.transpose(1, 2)
        o, lse = out
        return o.transpose(1, 2), lse.transpose(1, 2)[..., None]

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, lsh_num_projs={self.lsh_num_projs}, block_size="
                f"{self.block_size}, sample_size={self.sample_size}, min_seq_len={self.min_seq_len}")


class HyperAttentionLayer(nn.Module):
    """Causal multi-head self-attention with HyperAttention as its kernel, the zoo's layer API
    (what train/ and the registry build): x [B, T, C] -> q, k, v [B, T, H, D] (D = C / H)
    -> hyper_attention_chunk(causal=True) -> o_proj -> y [B, T, C]. At T ≤ min_seq_len it is
    exact causal attention. No recurrent form: decoding would keep a full KV cache, 2·T·C floats.
    The LSH directions are a non-persistent buffer drawn from `seed`, shared by all heads.
    Trained as a language model at T > min_seq_len, it is causal in what it reads (past keys and
    values only) but not in how it picks them: a past token's block depends on later queries'
    hash codes (card, "Causality"), a leak of future information through that choice."""

    chunk_op = staticmethod(hyper_attention_chunk)  # fast/hyper_attention.py swaps only this

    def __init__(self, hidden_size: int, num_heads: int, lsh_num_projs: int = 8, block_size: int = 256,
                 sample_size: int = 256, min_seq_len: int = 2048, seed: int | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
        _check_int("block_size", block_size, 1)
        _check_int("sample_size", sample_size, 0)
        _check_int("min_seq_len", min_seq_len, 1)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.head_dim = hidden_size // num_heads
        self.block_size, self.sample_size, self.min_seq_len = block_size, sample_size, min_seq_len
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.register_buffer("proj", lsh_projections(self.head_dim, lsh_num_projs, seed=seed), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C] -> y: [B, T, C], causal."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [B, T, C] with C = {self.hidden_size}, got {got}")
        B, T, _ = x.shape
        shape = (B, T, self.num_heads, self.head_dim)
        q, k, v = (p(x).view(shape) for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, T, H, D]
        o = self.chunk_op(q, k, v, proj=self.proj, causal=True, block_size=self.block_size,
                          sample_size=self.sample_size, min_seq_len=self.min_seq_len)  # [B, T, H, D]
        return self.o_proj(o.reshape(B, T, self.hidden_size))

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence a decoder would cache: keys and values, 2·T·C (no recurrent form)."""
        return 2 * seq_len * self.hidden_size


__all__ = ["lsh_projections", "gray_code_rank", "lsh_codes", "sort_lsh", "draw_samples",
           "attention_with_lse", "block_diagonal_attention", "sampled_residual_attention",
           "merge_partial_attention", "causal_recursion", "hyper_attention_parallel",
           "hyper_attention_chunk", "HyperAttention", "HyperAttentionLayer"]
