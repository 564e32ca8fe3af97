"""HyperAttention: the spec, in DESIGN.md's law order.

1. forms agree: the chunk algorithm (sorted blocks + sampled keys + lse merge) equals the dense
   log-weight oracle in float64 (o, lse and gradients), causal and not, any T (padding included);
2. fast equals zoo: the Triton kernels in fp32 under the interpreter (same proj, same samples),
   bf16/fp16 on a GPU;
3. gradients agree: q, k, v through random cotangents on o and lse;
4. causality: perturbing keys and values after t leaves outputs up to t bit-identical (the card
   says why future *queries* may still move a past query to another block);
5. state carry: none (no recurrent form: the method needs all keys at once);
6. own laws: one block covering T with no samples is exact attention; T < min_seq_len is exact
   attention (T ≤ min_seq_len causal); the lse merge of two disjoint key sets is attention over
   their union; the Gray rank orders buckets one bit apart; error against exact attention falls
   as block_size and sample_size grow on clustered keys; the same seed reproduces;
7. bad inputs raise clear errors;
8. torch.compile(fullgraph=True): both forms and the module with aot_eager, the chunk form with
   inductor, the fast op under the interpreter.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from strategies import (run_aot_script, TOL, Shape, assert_close, device, edge_examples, grad_tol, grads, has_cuda,
                        interpreting, randn, rel_rms, seeds, shapes, tol_for)
import layer_cases as cases
import zoo.hyper_attention as zh
import fast.hyper_attention as fh

F64 = torch.float64
block_sizes = st.sampled_from([1, 3, 4, 8, 16])
sample_sizes = st.sampled_from([0, 1, 5, 16])
min_seq_lens = st.sampled_from([1, 4, 9, 1000])
projs = st.integers(1, 5)


def qkv(seed, s: Shape, dtype=F64, device="cpu"):
    return (randn(seed, s.B, s.T, s.H, s.K, dtype=dtype, device=device),
            randn(seed + 1, s.B, s.T, s.H, s.K, dtype=dtype, device=device),
            randn(seed + 2, s.B, s.T, s.H, s.V, dtype=dtype, device=device))


def proj_for(K, r, seed=0, dtype=F64):
    return zh.lsh_projections(K, r, seed=seed, dtype=dtype)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def exact(q, k, v, causal=False, scale=None):
    """SDPA in float64 on [B, T, H, *]: an oracle that shares no code with the zoo file."""
    return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=causal,
                                          scale=scale).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# 1. Forms agree
# ------------------------------------------------------------------------------------------------
@settings(max_examples=10)
@given(shape=shapes(max_T=40), causal=st.booleans(), b=block_sizes, s=sample_sizes,
       min_len=min_seq_lens, r=projs, seed=seeds)
@edge_examples(chunk_size=8, causal=True, b=4, s=5, min_len=1, r=3)
@edge_examples(chunk_size=8, causal=False, b=4, s=5, min_len=1, r=3)
def test_chunk_equals_the_dense_log_weight_oracle_in_float64(shape, causal, b, s, min_len, r, seed):
    q, k, v = qkv(seed, shape)
    kw = dict(proj=proj_for(shape.K, r, seed), causal=causal, block_size=b, sample_size=s,
              min_seq_len=min_len, return_lse=True)
    o_ref, lse_ref = zh.hyper_attention_parallel(q, k, v, generator=gen(seed), **kw)
    o, lse = zh.hyper_attention_chunk(q, k, v, generator=gen(seed), **kw)
    assert_close(o, o_ref, TOL["f64"], "o")
    assert_close(lse, lse_ref, TOL["f64"], "lse")


@settings(max_examples=4)
@given(shape=shapes(max_T=24, max_B=1, max_H=2, max_K=6, max_V=6), causal=st.booleans(), seed=seeds)
def test_chunk_gradients_equal_the_oracle_in_float64(shape, causal, seed):
    q, k, v = qkv(seed, shape)
    kw = dict(proj=proj_for(shape.K, 3, seed), causal=causal, block_size=4, sample_size=6,
              min_seq_len=2, return_lse=True)
    cot = [randn(seed + 5, *q.shape[:3], v.shape[-1]), randn(seed + 6, *q.shape[:3])]
    inputs = {"q": q.requires_grad_(), "k": k.requires_grad_(), "v": v.requires_grad_()}
    g_ref = grads(lambda **x: zh.hyper_attention_parallel(**x, generator=gen(seed), **kw), inputs, cot)
    g = grads(lambda **x: zh.hyper_attention_chunk(**x, generator=gen(seed), **kw), inputs, cot)
    for name in ("q", "k", "v"):
        assert_close(g[name], g_ref[name], TOL["f64"], f"d{name}")


def test_module_is_the_chunk_op_on_heads_first_tensors():
    B, H, T, D = 1, 2, 50, 8
    q, k, v = (randn(i, B, H, T, D) for i in range(3))
    attn = zh.HyperAttention(input_dim=D, lsh_num_projs=4, block_size=8, sample_size=8, min_seq_len=16, seed=3)
    o, lse = attn(q, k, v, causal=True, return_lse=True, generator=gen(1))
    o_ref, lse_ref = zh.hyper_attention_chunk(*(x.transpose(1, 2) for x in (q, k, v)), proj=attn.proj.double(),
                                              causal=True, block_size=8, sample_size=8, min_seq_len=16,
                                              return_lse=True, generator=gen(1))
    assert o.shape == (B, H, T, D) and lse.shape == (B, H, T, 1)
    assert_close(o, o_ref.transpose(1, 2), TOL["f64"], "o")
    assert_close(lse[..., 0], lse_ref.transpose(1, 2), TOL["f64"], "lse")
    assert attn.state_dict() == {} or all(not t.numel() for t in attn.state_dict().values())


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo (same proj, same generator state: the same samples)
# ------------------------------------------------------------------------------------------------
# The hash is a sign: a product x·p within rounding of 0 may get another bit from the kernel's
# summation order than from torch's, which moves a token to another block (a different, equally
# valid estimate). So fast-vs-zoo tests hash exactly: q, k on a grid of 1/16 in [-4, 4] (exact in
# fp16 and bf16) and ±1 directions, whose products are exact in fp32 in any order.
def hash_exact(x):
    return (x * 16).round().clamp(-64, 64) / 16


def _fast_vs_zoo(shape, causal, b, s, min_len, r, seed, dtype=torch.float32, dev=None, with_grads=False):
    dev = dev or device()
    q, k, v = qkv(seed, shape, dtype=dtype, device=dev)
    q, k = hash_exact(q), hash_exact(k)
    kw = dict(proj=proj_for(shape.K, r, seed, dtype=torch.float32).sign(), causal=causal, block_size=b,
              sample_size=s, min_seq_len=min_len, return_lse=True)
    if not with_grads:
        o, lse = fh.hyper_attention_chunk(q, k, v, generator=gen(seed), **kw)
        o_ref, lse_ref = zh.hyper_attention_chunk(q.float(), k.float(), v.float(), generator=gen(seed), **kw)
        return (o, o_ref), (lse, lse_ref)
    inputs = {"q": q.requires_grad_(), "k": k.requires_grad_(), "v": v.requires_grad_()}
    cot = [randn(seed + 5, *q.shape[:3], shape.V, dtype=dtype, device=dev),
           randn(seed + 6, *q.shape[:3], dtype=torch.float32, device=dev)]
    g = grads(lambda **x: fh.hyper_attention_chunk(**x, generator=gen(seed), **kw), inputs, cot)
    ref_inputs = {n: x.detach().float().requires_grad_() for n, x in inputs.items()}
    g_ref = grads(lambda **x: zh.hyper_attention_chunk(**x, generator=gen(seed), **kw), ref_inputs, cot)
    return g, g_ref


fast_blocks = st.sampled_from([5, 16, 32, 48])  # multiples of the interpreter's 16-row tile and not


@settings(max_examples=5)
@given(shape=shapes(max_T=60, max_H=2), causal=st.booleans(), b=fast_blocks, s=sample_sizes,
       min_len=st.sampled_from([1, 20, 1000]), seed=seeds)
@edge_examples(chunk_size=16, causal=False, b=16, s=16, min_len=1)
@edge_examples(chunk_size=16, causal=True, b=5, s=5, min_len=4)
def test_fast_equals_zoo_in_float32(shape, causal, b, s, min_len, seed):
    (o, o_ref), (lse, lse_ref) = _fast_vs_zoo(shape, causal, b, s, min_len, 3, seed)
    assert o.dtype == torch.float32 and lse.dtype == torch.float32
    assert_close(o, o_ref, tol_for(torch.float32, o.device.type), "o")
    assert_close(lse, lse_ref, tol_for(torch.float32, o.device.type), "lse")


@settings(max_examples=4)
@given(shape=shapes(max_T=60, max_H=2, max_K=12, max_V=12), causal=st.booleans(), b=fast_blocks,
       seed=seeds)
@edge_examples(chunk_size=16, causal=True, b=16)
@edge_examples(chunk_size=16, causal=False, b=5)
def test_fast_gradients_equal_zoo_in_float32(shape, causal, b, seed):
    g, g_ref = _fast_vs_zoo(shape, causal, b, 7, 4, 3, seed, with_grads=True)
    tol = grad_tol(tol_for(torch.float32, device()))
    for name in ("q", "k", "v"):
        assert_close(g[name], g_ref[name], tol, f"d{name}")


GPU_CASES = [(dt, D, T, causal) for dt in (torch.bfloat16, torch.float16) for D in (64, 128)
             for T, causal in ((1, False), (1000, False), (4096, False), (4099, True), (4096, True))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T,causal", GPU_CASES)
def test_fast_equals_zoo_in_half_precision_on_gpu(dtype, D, T, causal):
    shape = Shape(1, T, 3, D, D)
    (o, o_ref), (lse, lse_ref) = _fast_vs_zoo(shape, causal, 256, 256, 512, 8, 11, dtype=dtype, dev="cuda")
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert_close(o, o_ref, tol_for(dtype, "cuda"), "o")
    assert_close(lse, lse_ref, tol_for(torch.float32, "cuda"), "lse")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,causal", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, True)])
def test_fast_gradients_equal_zoo_in_half_precision_on_gpu(dtype, causal):
    g, g_ref = _fast_vs_zoo(Shape(1, 3000, 2, 64, 64), causal, 256, 256, 512, 8, 3, dtype=dtype,
                            dev="cuda", with_grads=True)
    for name in ("q", "k", "v"):
        assert_close(g[name], g_ref[name], grad_tol(tol_for(dtype, "cuda")), f"d{name}")


def test_fast_module_equals_zoo_module():
    attn, fast_attn = (m.HyperAttention(input_dim=8, lsh_num_projs=4, block_size=16, sample_size=16,
                                        min_seq_len=8, seed=1) for m in (zh, fh))
    assert torch.equal(attn.proj, fast_attn.proj)
    attn.proj, fast_attn.proj = attn.proj.sign(), fast_attn.proj.sign()  # exact hashing (see above)
    q, k, v = (randn(i, 1, 2, 45, 8, dtype=torch.float32, device=device()) for i in range(3))
    q, k = hash_exact(q), hash_exact(k)
    attn, fast_attn = attn.to(device()), fast_attn.to(device())
    o, lse = fast_attn(q, k, v, causal=True, return_lse=True, generator=gen(4))
    o_ref, lse_ref = attn(q, k, v, causal=True, return_lse=True, generator=gen(4))
    assert_close(o, o_ref, tol_for(torch.float32, q.device.type), "o")
    assert_close(lse, lse_ref, tol_for(torch.float32, q.device.type), "lse")


def test_layer_is_the_causal_op_around_projections_and_fast_layer_matches():
    torch.manual_seed(0)
    # block_size 16 > every lower-left piece (≤ 15 tokens): the result does not hang on a hash sign
    layer = zh.HyperAttentionLayer(16, 2, lsh_num_projs=3, block_size=16, sample_size=0, min_seq_len=4, seed=0)
    fast_layer = fh.HyperAttentionLayer(16, 2, lsh_num_projs=3, block_size=16, sample_size=0, min_seq_len=4, seed=0)
    fast_layer.load_state_dict(layer.state_dict())
    assert set(layer.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
    x = torch.randn(2, 30, 16)
    y = layer(x)
    q, k, v = (p(x).view(2, 30, 2, 8) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    o = zh.hyper_attention_chunk(q, k, v, proj=layer.proj, causal=True, block_size=16, sample_size=0, min_seq_len=4)
    assert_close(y, layer.o_proj(o.reshape(2, 30, 16)), TOL["f32-interpret"], "layer")
    layer, fast_layer = layer.to(device()), fast_layer.to(device())
    x = x.to(device())
    assert_close(fast_layer(x), layer(x), tol_for(torch.float32, x.device.type), "fast layer")
    assert layer.state_size(10) == 2 * 10 * 16
    with pytest.raises(ValueError, match=r"\[B, T, C\] with C = 16"):
        layer(torch.randn(2, 5, 15, device=device()))


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@settings(max_examples=8)
@given(shape=shapes(max_T=48, min_K=2), t=st.integers(0, 47), b=block_sizes, seed=seeds)
@edge_examples(chunk_size=8, t=0, b=4)
def test_future_keys_and_values_do_not_change_the_past(shape, t, b, seed):
    t = min(t, shape.T - 1)
    q, k, v = qkv(seed, shape)
    k2, v2 = k.clone(), v.clone()
    k2[:, t + 1:] = randn(seed + 7, *k2[:, t + 1:].shape)
    v2[:, t + 1:] = randn(seed + 8, *v2[:, t + 1:].shape)
    kw = dict(proj=proj_for(shape.K, 3, seed), causal=True, block_size=b, sample_size=5, min_seq_len=4,
              return_lse=True)
    o, lse = zh.hyper_attention_chunk(q, k, v, generator=gen(seed), **kw)
    o2, lse2 = zh.hyper_attention_chunk(q, k2, v2, generator=gen(seed), **kw)
    assert torch.equal(o[:, :t + 1], o2[:, :t + 1]), "a future key or value reached the past"
    assert torch.equal(lse[:, :t + 1], lse2[:, :t + 1])


def test_gradients_never_flow_to_future_keys_and_values():
    B, T, H, D = 1, 40, 2, 6
    q, k, v = (randn(i, B, T, H, D).requires_grad_() for i in range(3))
    o = zh.hyper_attention_chunk(q, k, v, proj=proj_for(D, 3), causal=True, block_size=4, sample_size=6,
                                 min_seq_len=4, generator=gen())
    t = 17
    o[:, t].sum().backward()
    assert k.grad[:, t + 1:].abs().max() == 0 and v.grad[:, t + 1:].abs().max() == 0
    assert q.grad[:, t + 1:].abs().max() == 0


def test_fast_future_keys_and_values_do_not_change_the_past():
    dev, t = device(), 23
    q, k, v = qkv(5, Shape(1, 50, 2, 8, 8), dtype=torch.float32, device=dev)
    k2, v2 = k.clone(), v.clone()
    k2[:, t + 1:] += 1.0
    v2[:, t + 1:] -= 2.0
    kw = dict(proj=proj_for(8, 3, dtype=torch.float32), causal=True, block_size=16, sample_size=16, min_seq_len=8)
    o = fh.hyper_attention_chunk(q, k, v, generator=gen(), **kw)
    o2 = fh.hyper_attention_chunk(q, k2, v2, generator=gen(), **kw)
    assert torch.equal(o[:, :t + 1], o2[:, :t + 1])


# ------------------------------------------------------------------------------------------------
# 6. The method's own laws
# ------------------------------------------------------------------------------------------------
@settings(max_examples=8)
@given(shape=shapes(max_T=40), causal=st.booleans(), extra=st.integers(0, 5), r=projs, seed=seeds)
@edge_examples(chunk_size=8, causal=True, extra=0, r=2)
def test_one_block_covering_T_without_samples_is_exact_attention(shape, causal, extra, r, seed):
    q, k, v = qkv(seed, shape)
    o = zh.hyper_attention_chunk(q, k, v, proj=proj_for(shape.K, r, seed), causal=causal,
                                 block_size=shape.T + extra, sample_size=0, min_seq_len=1)
    assert_close(o, exact(q, k, v, causal), TOL["f64"], "o")


@settings(max_examples=8)
@given(shape=shapes(max_T=40), causal=st.booleans(), seed=seeds)
@edge_examples(chunk_size=8, causal=False)
def test_shorter_than_min_seq_len_is_exact_attention(shape, causal, seed):
    q, k, v = qkv(seed, shape)
    min_len = shape.T if causal else shape.T + 1  # causal: T ≤ min_seq_len; else T < min_seq_len
    o, lse = zh.hyper_attention_chunk(q, k, v, proj=proj_for(shape.K, 3), causal=causal, block_size=2,
                                      sample_size=3, min_seq_len=min_len, return_lse=True)
    assert_close(o, exact(q, k, v, causal), TOL["f64"], "o")
    s = torch.einsum("bihd,bjhd->bhij", q, k) * shape.K ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(shape.T, shape.T, dtype=torch.bool).triu(1), float("-inf"))
    assert_close(lse, torch.logsumexp(s, -1).transpose(1, 2), TOL["f64"], "lse")


@settings(max_examples=8)
@given(shape=shapes(max_T=30), seed=seeds)
@edge_examples(chunk_size=8)
def test_lse_merge_of_two_disjoint_key_sets_is_attention_over_their_union(shape, seed):
    q, k, v = (x.transpose(1, 2) for x in qkv(seed, shape))  # [B, H, T, *]
    first = torch.rand(shape.T, generator=gen(seed)) < 0.5
    first[0], scale = True, 0.7  # key 0 in the first set, the last key (if another) in the second
    first[-1] = shape.T == 1
    second = ~first
    o1, lse1 = zh.attention_with_lse(q, k[:, :, first], v[:, :, first], scale)
    if second.any():
        o2, lse2 = zh.attention_with_lse(q, k[:, :, second], v[:, :, second], scale)
        o1, lse1 = zh.merge_partial_attention(o1, lse1, o2, lse2)
    o, lse = zh.attention_with_lse(q, k, v, scale)
    assert_close(o1, o, TOL["f64"], "merged o")
    assert_close(lse1, lse, TOL["f64"], "merged lse")


def test_a_partial_softmax_with_finfo_min_lse_gets_zero_weight():
    o1, lse1 = torch.randn(2, 5, 3, dtype=F64), torch.randn(2, 5, dtype=F64)
    o2, lse2 = torch.randn(2, 5, 3, dtype=F64), torch.full((2, 5), torch.finfo(F64).min, dtype=F64)
    o, lse = zh.merge_partial_attention(o1, lse1, o2, lse2)
    assert torch.equal(o, o1) and torch.equal(lse, lse1)


def test_gray_rank_orders_buckets_one_bit_apart():
    for r in (1, 3, 8, 16):
        buckets = torch.arange(2 ** r)
        rank = zh.gray_code_rank(buckets)
        assert torch.equal(rank.sort().values, buckets), "the rank is a permutation of the buckets"
        order = torch.empty_like(rank).scatter(0, rank, buckets)  # bucket at each rank
        flips = order[1:] ^ order[:-1]
        assert torch.all((flips & (flips - 1)) == 0) and torch.all(flips > 0), f"r={r}: not one bit apart"


def test_sorting_puts_equal_codes_together_stably():
    x = randn(0, 1, 1, 200, 6)
    proj = proj_for(6, 3)
    perm, _ = zh.sort_lsh(x, x, proj)
    codes = zh.lsh_codes(x, proj).gather(-1, perm)
    assert torch.all(codes[..., 1:] >= codes[..., :-1])
    for c in codes.unique():  # stable: equal codes keep token order
        assert torch.all(perm[codes == c].diff() > 0)


def clustered(seed, B, T, H, D, clusters=16, spread=0.15, norm=4.0):
    """Queries and keys near a few shared directions: the heavy scores HyperAttention is for."""
    centres = F.normalize(randn(seed, clusters, H, D), dim=-1) * norm
    g = gen(seed)
    cq, ck = (torch.randint(0, clusters, (B, T), generator=g) for _ in range(2))
    h = torch.arange(H)
    q = centres[cq[..., None], h] + spread * randn(seed + 1, B, T, H, D) * norm
    k = centres[ck[..., None], h] + spread * randn(seed + 2, B, T, H, D) * norm
    return q, k, randn(seed + 3, B, T, H, D)


def test_error_falls_as_block_size_and_sample_size_grow_on_clustered_keys():
    B, T, H, D = 1, 512, 2, 16

    def err(b, s):
        errs = []
        for seed in range(4):
            q, k, v = clustered(10 * seed, B, T, H, D)
            o = zh.hyper_attention_chunk(q, k, v, proj=proj_for(D, 6, seed), block_size=b, sample_size=s,
                                         min_seq_len=1, generator=gen(seed))
            errs.append(rel_rms(o, exact(q, k, v)))
        return sum(errs) / len(errs)

    by_block = [err(b, 32) for b in (16, 64, 256)]
    by_samples = [err(32, s) for s in (8, 64, 256)]
    assert by_block[0] > by_block[1] > by_block[2], f"error vs block_size 16/64/256: {by_block}"
    assert by_samples[0] > by_samples[1] > by_samples[2], f"error vs sample_size 8/64/256: {by_samples}"
    assert err(T, 0) < 1e-12  # one block: exact


def test_the_same_seed_and_generator_reproduce_the_result():
    q, k, v = qkv(0, Shape(1, 64, 2, 8, 8))
    a = zh.HyperAttention(input_dim=8, block_size=8, sample_size=8, min_seq_len=16, seed=5)
    b = zh.HyperAttention(input_dim=8, block_size=8, sample_size=8, min_seq_len=16, seed=5)
    assert torch.equal(a.proj, b.proj)
    args = [x.transpose(1, 2) for x in (q, k, v)]
    assert torch.equal(a(*args, generator=gen(2)), b(*args, generator=gen(2)))
    assert not torch.equal(a(*args, generator=gen(2)), a(*args, generator=gen(3)))


@pytest.mark.parametrize("mod", [zh, fh], ids=["zoo", "fast"])
def test_no_nan_for_any_length_in_half_and_single_precision(mod):
    # T = 1 up to past a few blocks, odd lengths included: padding, the recursion's uneven halves
    for T in (1, 2, 3, 17, 64, 65):
        for dtype in (torch.float32, torch.bfloat16):
            dev = "cpu" if mod is zh else device()
            q, k, v = qkv(T, Shape(1, T, 2, 8, 8), dtype=dtype, device=dev)
            for causal in (False, True):
                o = mod.hyper_attention_chunk(q, k, v, proj=proj_for(8, 4, dtype=torch.float32).to(dev),
                                              causal=causal, block_size=4, sample_size=4, min_seq_len=2,
                                              generator=gen(T))
                assert o.dtype == dtype and torch.isfinite(o).all(), (T, dtype, causal)


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def _call(**over):
    q, k, v = qkv(0, Shape(1, 8, 2, 4, 4))
    kw = dict(q=q, k=k, v=v, proj=proj_for(4, 3), block_size=4, sample_size=4, min_seq_len=2)
    kw.update(over)
    return zh.hyper_attention_chunk(kw.pop("q"), kw.pop("k"), kw.pop("v"), **kw)


@pytest.mark.parametrize("over, match", [
    (dict(block_size=0), "block_size"),
    (dict(block_size=-3), "block_size"),
    (dict(block_size=2.0), "block_size"),
    (dict(sample_size=-1), "sample_size"),
    (dict(min_seq_len=0), "min_seq_len"),
    (dict(proj=torch.randn(4, 17, dtype=F64)), "1..16"),
    (dict(proj=torch.randn(4, 0, dtype=F64)), "1..16"),
    (dict(proj=torch.randn(5, 3, dtype=F64)), r"proj .*K = 4"),
    (dict(k=randn(1, 1, 9, 2, 4)), "same B, T, H"),
    (dict(v=randn(1, 1, 7, 2, 4)), "same B, T, H"),
    (dict(k=randn(1, 1, 8, 2, 5)), "head dim K"),
    (dict(q=randn(1, 8, 2, 4)), "4 dims"),
])
def test_bad_inputs_raise_clear_errors(over, match):
    with pytest.raises(ValueError, match=match):
        _call(**over)


def test_bad_dtypes_and_module_options_raise_clear_errors():
    with pytest.raises(TypeError, match="floating"):
        _call(q=torch.ones(1, 8, 2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="one dtype"):
        _call(v=randn(1, 1, 8, 2, 4, dtype=torch.float32))
    for bad in (dict(lsh_num_projs=0), dict(lsh_num_projs=17)):
        with pytest.raises(ValueError, match="lsh_num_projs"):
            zh.HyperAttention(**bad)
    for bad in (dict(block_size=0), dict(sample_size=-1), dict(min_seq_len=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            zh.HyperAttention(**bad)
    with pytest.raises(ValueError, match="smooth_block"):
        zh.HyperAttention(smooth_block=True)
    with pytest.raises(ValueError, match="heads-first"):
        zh.HyperAttention()(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    x = torch.randn(1, 2, 8, 4)  # [B, H, N, d] with d = 4
    with pytest.raises(ValueError, match="input_dim = 8"):
        zh.HyperAttention(input_dim=8)(x, x, x)
    with pytest.raises(ValueError, match=r"unequal lengths.*\[1, 2, 8, 4\], \[1, 2, 6, 4\]"):
        zh.HyperAttention(input_dim=4)(x, x[:, :, :6], x[:, :, :6])


@pytest.mark.skipif(has_cuda() or interpreting(), reason="only without a GPU and without the interpreter")
def test_fast_op_on_cpu_without_the_interpreter_says_so():
    q, k, v = qkv(0, Shape(1, 4, 1, 4, 4), dtype=torch.float32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fh.hyper_attention_chunk(q, k, v, proj=proj_for(4, 2))


def test_fast_op_rejects_float64_and_head_dims_above_256_and_checks_like_the_zoo():
    q, k, v = qkv(0, Shape(1, 2, 1, 300, 4), dtype=torch.float32, device=device())
    with pytest.raises(ValueError, match="256"):
        fh.hyper_attention_chunk(q, k, v, proj=proj_for(300, 2))
    with pytest.raises(TypeError, match="float64"):
        fh.hyper_attention_chunk(*(x[..., :4].double() for x in (q, k, v)), proj=proj_for(4, 2))
    with pytest.raises(ValueError, match="block_size"):
        fh.hyper_attention_chunk(*(x[..., :4] for x in (q, k, v)), proj=proj_for(4, 2), block_size=0)


# ------------------------------------------------------------------------------------------------
# 8. torch.compile
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hyper_attention_chunk", "hyper_attention_parallel"])
@pytest.mark.parametrize("causal", [False, True])
def test_forms_compile_fullgraph_with_aot_eager(name, causal):
    # No generator argument: dynamo traces torch.randint on the global generator, and sort,
    # gather and scatter are ordinary ops, so the whole method is one graph.
    torch._dynamo.reset()
    q, k, v = qkv(1, Shape(1, 21, 2, 5, 3))
    op = getattr(zh, name)
    kw = dict(proj=proj_for(5, 3), causal=causal, block_size=4, sample_size=5, min_seq_len=4, return_lse=True)
    torch.manual_seed(0)
    ref = op(q, k, v, **kw)
    torch.manual_seed(0)
    got = torch.compile(op, fullgraph=True, backend="aot_eager")(q, k, v, **kw)
    for a, b in zip(got, ref):
        assert_close(a, b, TOL["f64"], name)


def test_module_compiles_fullgraph_with_aot_eager():
    torch._dynamo.reset()
    attn = zh.HyperAttention(input_dim=5, lsh_num_projs=3, block_size=4, sample_size=5, min_seq_len=4, seed=0)
    q, k, v = (x.transpose(1, 2).float() for x in qkv(2, Shape(1, 19, 2, 5, 5)))
    torch.manual_seed(0)
    ref = attn(q, k, v, causal=True)
    torch.manual_seed(0)
    got = torch.compile(attn, fullgraph=True, backend="aot_eager")(q, k, v, causal=True)
    assert_close(got, ref, TOL["f32-interpret"], "module")


def test_chunk_form_compiles_with_inductor():
    torch._dynamo.reset()
    q, k, v = qkv(3, Shape(1, 24, 2, 4, 4), dtype=torch.float32)
    kw = dict(proj=proj_for(4, 3, dtype=torch.float32), block_size=8, sample_size=0, min_seq_len=4)
    ref = zh.hyper_attention_chunk(q, k, v, **kw)
    got = torch.compile(zh.hyper_attention_chunk, fullgraph=True)(q, k, v, **kw)
    assert_close(got, ref, TOL["f32-interpret"], "inductor")


def test_fast_op_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    dev = device()
    q, k, v = qkv(2, Shape(1, 40, 2, 8, 8), dtype=torch.float32, device=dev)
    inputs = dict(q=q.requires_grad_(), k=k.requires_grad_(), v=v.requires_grad_())
    cot = [randn(3, *v.shape, dtype=torch.float32, device=dev), randn(4, 1, 40, 2, dtype=torch.float32, device=dev)]
    kw = dict(proj=proj_for(8, 3, dtype=torch.float32), causal=True, block_size=16, sample_size=8,
              min_seq_len=8, return_lse=True)
    cases.assert_compiled_op_gradients_equal_eager(fh.hyper_attention_chunk, lambda op: lambda **a: op(**a, **kw),
                                                   inputs, cot, seed=0)


# Run in a fresh process: under TRITON_INTERPRET=1 (this process) Triton is set up for the
# interpreter and cannot feed the GPU compiler.
AOT_SCRIPT = r"""
import json
import torch
from aot import H100_SHARED, compile_for_h100, stack_bytes
import fast.hyper_attention as fh

I32 = {"perm_q", "perm_k", "smp_k", "smp_blk", "codes"}
F32 = {"lse", "delta", "dlse", "proj", "dk_part", "dv_part"}
HALF = {"q", "k", "v", "o", "do", "dq", "dk", "dv", "x"}
# As the JIT compiles them for bf16: 16-byte-aligned pointers, int32 sizes and strides.
TYPES = dict(dict.fromkeys(I32, "*i32"), **dict.fromkeys(F32, "*fp32"), **dict.fromkeys(HALF, "*bf16"),
             scale="fp32", log_w="fp32")


def spills(kernel, consts, num_warps, num_stages):
    types = dict(TYPES, **dict.fromkeys(("dq", "dk", "dv"), "*fp32")) if consts.get("ACC") else TYPES  # fp32 sums
    return stack_bytes(kernel, types, consts, num_warps, num_stages, default="i32")


out = {}
out["lsh"] = spills(fh._hyper_attention_lsh_kernel, dict(K=64, R=8, BK=64, BM=fh.LSH_TILES[0]), fh.LSH_TILES[1], 1)
for D in (64, 128):
    t = fh._tiles(D, D, torch.bfloat16)
    dims = dict(K=D, V=D, BK=t.BK, BV=t.BV, UPCAST=False)
    hyper = dict(GATHER=True, CAUSAL=False, BLOCK_MASK=False)
    leaf = dict(GATHER=False, CAUSAL=True, BLOCK_MASK=False)
    # backward: "hyper" as the non-causal op stores, "level" as the causal recursion adds
    for name, flags, acc in (("hyper", hyper, False), ("level", hyper, True), ("leaf", leaf, True)):
        samples = name != "leaf"
        fwd_tiles = (t.BMG, t.BNG, t.gwarps, t.gstages) if flags["GATHER"] else (t.BM, t.BN, t.warps, t.stages)
        out[f"fwd {name} D={D}"] = spills(fh._hyper_attention_fwd_kernel, dict(
            dims, BM=fwd_tiles[0], BN=fwd_tiles[1], SAMPLES=samples, INIT=acc and samples, **flags), *fwd_tiles[2:])
        out[f"dq {name} D={D}"] = spills(fh._hyper_attention_bwd_dq_kernel, dict(
            dims, BM=t.BM, BN=t.BN, SAMPLES=samples, ACC=acc, **flags), t.warps, t.stages)
        out[f"dkdv {name} D={D}"] = spills(fh._hyper_attention_bwd_dkdv_block_kernel, dict(
            dims, BM=t.BM1, BN=t.BN1, ACC=acc, **flags), t.bwd_warps, t.stages)
    out[f"dkdv samples D={D}"] = spills(fh._hyper_attention_bwd_dkdv_sample_kernel, dict(
        dims, BM=t.BM1, BN=t.BN1), t.bwd_warps, t.stages)
# Shared memory at the worst shape: fp32, D = 256 (bf16's tiles asked 262 KB in dq and dk/dv, card).
F = dict(TYPES, **dict.fromkeys(HALF, "*fp32"))
t = fh._tiles(256, 256, torch.float32)
dims = dict(K=256, V=256, BK=t.BK, BV=t.BV, UPCAST=False, GATHER=True, CAUSAL=False, BLOCK_MASK=True)
shared = lambda kernel, consts, num_warps: compile_for_h100(  # noqa: E731
    kernel, F, consts, num_warps, t.stages, default="i32").metadata.shared
smem = {
    "dq fp32 D=256": shared(fh._hyper_attention_bwd_dq_kernel, dict(dims, BM=t.BM, BN=t.BN, SAMPLES=True, ACC=False),
                            t.warps),
    "dkdv fp32 D=256": shared(fh._hyper_attention_bwd_dkdv_block_kernel, dict(dims, BM=t.BM1, BN=t.BN1, ACC=False),
                              t.bwd_warps),
    "dkdv samples fp32 D=256": shared(fh._hyper_attention_bwd_dkdv_sample_kernel, dict(
        {k: v for k, v in dims.items() if k in ("K", "V", "BK", "BV", "UPCAST")}, BM=t.BM1, BN=t.BN1), t.bwd_warps),
}
print(json.dumps(dict(spills=out, shared=smem, limit=H100_SHARED)))
"""


@pytest.mark.skipif(has_cuda(), reason="on a GPU the kernels compile for real in the GPU tests")
def test_kernels_compile_for_an_h100_without_spilling():
    # The interpreter never compiles: this catches what only the GPU compiler rejects, and register
    # spills, on a CPU. Triton ships ptxas; without it the test skips.
    got = run_aot_script(AOT_SCRIPT, timeout=600)
    assert all(v == 0 for v in got["spills"].values()), got["spills"]
    # and within the H100's shared memory a block, where a launch would fail (OutOfResources)
    assert all(v <= got["limit"] for v in got["shared"].values()), got["shared"]


# ------------------------------------------------------------------------------------------------
# First calls (fast/_compile.py): the dry run makes the launches of the call it precedes
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not fh.INTERPRET, reason="the interpreter's dry run records launches; a GPU compiles them")
@pytest.mark.parametrize("causal", [False, True])
def test_first_call_dry_run_makes_the_launches_of_the_call_and_draws_nothing(monkeypatch, causal):
    import fast._compile as fcomp
    s = Shape(1, 77, 2, 16, 16)  # causal: leaves of 10 rows exact, levels of 19, 39 hashed and sampled
    q, k, v = (x.float().requires_grad_() for x in qkv(40, s))
    kw = dict(proj=proj_for(16, 3, dtype=torch.float32), causal=causal, block_size=5, sample_size=3, min_seq_len=12)
    real, launch = [], fh.launch
    monkeypatch.setattr(fh, "launch", lambda kern, grid, *a, **kwa: (
        real.append(fcomp.signature(kern, kwa)) if getattr(fcomp._local, "pool", None) is None else None,
        launch(kern, grid, *a, **kwa)))
    dry = []
    monkeypatch.setattr(fh, "precompile", lambda plans: dry.extend(fcomp.precompile(plans)))
    g = gen(41)
    o = fh.hyper_attention_chunk(q, k, v, generator=g, **kw)
    o.backward(torch.ones_like(o))
    assert dry and sorted(dry) == sorted(real), (dry, real)
    # the dry run drew from a copy: the generator moved as one call moves it, and the output is the
    # one a call without a dry run gives (this key is done now: no dry run)
    after_one = gen(41)
    o2 = fh.hyper_attention_chunk(q, k, v, generator=after_one, **kw)
    assert torch.equal(o, o2) and torch.equal(g.get_state(), after_one.get_state())


@pytest.mark.gpu
def test_after_the_dry_run_a_first_causal_forward_and_backward_compiles_nothing():
    import fast._compile as fcomp
    s = Shape(1, 3000, 3, 48, 48)  # H = 3, D = 48: variants no other test compiles
    q, k, v = (x.to(torch.bfloat16).requires_grad_() for x in qkv(42, s, device="cuda"))
    kw = dict(proj=proj_for(48, 4, dtype=torch.float32).cuda(), causal=True, block_size=64, sample_size=32,
              min_seq_len=256)
    fns = [fcomp.jit_function(getattr(fh, n)) for n in dir(fh) if n.startswith("_hyper_attention_") and n.endswith("kernel")]
    dev = torch.cuda.current_device()
    fh._precompile(q, k, v, kw["proj"], True, 48 ** -0.5, 64, 32, 256, gen_cuda := torch.Generator("cuda").manual_seed(0))
    compiled = [len(fn.device_caches[dev][0]) for fn in fns]
    assert sum(compiled) >= 6
    o = fh.hyper_attention_chunk(q, k, v, scale=48 ** -0.5, generator=gen_cuda, **kw)
    o.float().sum().backward()
    assert [len(fn.device_caches[dev][0]) for fn in fns] == compiled
