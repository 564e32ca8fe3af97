"""Sliding-window attention: the spec, in DESIGN.md's law order.

1. forms agree: the chunk form and the rolling-cache recurrent form equal the band-masked
   parallel definition in float64 (o and lse);
2. fast equals zoo: the Triton windowed flash kernel in fp32 under the interpreter, bf16 on a GPU;
3. gradients agree: q, k, v through random cotangents on o (and lse);
4. causality: perturbing tokens after t leaves outputs up to t bit-identical;
5. state carry: two recurrent calls chained by the cache equal one call; prefill then decode
   equals forward, the cache's size does not grow with T;
6. own laws: window ≥ T is full causal softmax attention; window = 1 returns v; keys that left
   the window change nothing; equals SDPA with the band as an explicit mask;
7. bad inputs raise clear errors (window < 1, a window larger than the decode cache, ...);
8. torch.compile(fullgraph=True): every form and the layer (aot_eager), the chunk form with
   inductor, the fast op on the CPU under the interpreter.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

from strategies import (run_aot_script, TOL, Shape, assert_close, chunk_sizes, device, edge_examples, grad_tol,
                        grads, has_cuda, interpreting, randn, seeds, shapes, tol_for)
import layer_cases as cases
import zoo.sliding_window_attention as zw
import fast.sliding_window_attention as fw

F64 = torch.float64
windows = st.sampled_from([1, 2, 3, 7, 16, 33, 100])


def qkv(seed, s: Shape, dtype=F64, device="cpu"):
    return (randn(seed, s.B, s.T, s.H, s.K, dtype=dtype, device=device),
            randn(seed + 1, s.B, s.T, s.H, s.K, dtype=dtype, device=device),
            randn(seed + 2, s.B, s.T, s.H, s.V, dtype=dtype, device=device))


def sdpa(q, k, v, mask=None, causal=False):
    return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=mask,
                                          is_causal=causal).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# 1. Forms agree
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(), window=windows, L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, window=7, L=16)
@edge_examples(chunk_size=16, window=1, L=16)
def test_chunk_and_recurrent_equal_parallel_in_float64(shape, window, L, seed):
    q, k, v = qkv(seed, shape)
    o_ref, lse_ref = zw.sliding_window_attention_parallel(q, k, v, window=window, return_lse=True)
    o, lse = zw.sliding_window_attention_chunk(q, k, v, window=window, return_lse=True, chunk_size=L)
    assert_close(o, o_ref, TOL["f64"], "chunk o")
    assert_close(lse, lse_ref, TOL["f64"], "chunk lse")
    o_rec, _ = zw.sliding_window_attention_recurrent(q, k, v, window=window)
    assert_close(o_rec, o_ref, TOL["f64"], "recurrent o")


@settings(max_examples=5)
@given(shape=shapes(max_T=50), window=windows, L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, window=5, L=16)
def test_chunk_gradients_equal_parallel_in_float64(shape, window, L, seed):
    q, k, v = (x.requires_grad_() for x in qkv(seed, shape))
    cot = [randn(seed + 3, *v.shape), randn(seed + 4, *q.shape[:3])]
    kw = dict(window=window, return_lse=True)
    ref = grads(lambda **a: zw.sliding_window_attention_parallel(**a, **kw), dict(q=q, k=k, v=v), cot)
    got = grads(lambda **a: zw.sliding_window_attention_chunk(**a, chunk_size=L, **kw), dict(q=q, k=k, v=v), cot)
    for n in ref:
        assert_close(got[n], ref[n], TOL["f64"], f"d{n}")


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo (fp32 under the interpreter on CPU; fp16/bf16 on a GPU)
# ------------------------------------------------------------------------------------------------
# The hypothesis-drawn fp32 fast tests are the interpreter's law (CI): every drawn K, V and flag
# set compiles new kernels on a GPU, minutes of the GPU run. The GPU checks its own cases below.
interpreter_only = pytest.mark.skipif(has_cuda(), reason="fp32 hypothesis sweep of the kernels: CPU interpreter")


@interpreter_only
@settings(max_examples=6)
@given(shape=shapes(max_T=70, max_H=2), window=windows, seed=seeds)
@edge_examples(chunk_size=32, window=7)
def test_fast_equals_zoo_in_float32(shape, window, seed):
    dev = device()
    q, k, v = qkv(seed, shape, dtype=torch.float32, device=dev)
    o_ref, lse_ref = zw.sliding_window_attention_parallel(q.double(), k.double(), v.double(), window=window,
                                                          return_lse=True)
    o, lse = fw.sliding_window_attention_chunk(q, k, v, window=window, return_lse=True)
    assert o.dtype == torch.float32 and lse.dtype == torch.float32
    assert_close(o, o_ref, tol_for(torch.float32, dev), "o")
    assert_close(lse, lse_ref, tol_for(torch.float32, dev), "lse")


# Windows and lengths that make every kind of block range appear under the interpreter's tiles
# (BM = 32, BN = 16; backward BN1 = 32, BM1 = 16): no interior (W < BM + BN − 1), an interior,
# a window past T, window = 1, unequal head dims.
RANGE_CASES = [(150, 60, 16, 16), (150, 48, 16, 8), (130, 47, 8, 24), (64, 64, 16, 16), (90, 1, 16, 16),
               (40, 100, 4, 4)]


@interpreter_only
@pytest.mark.parametrize("T,window,K,V", RANGE_CASES)
def test_fast_equals_zoo_on_every_block_range(T, window, K, V):
    dev = device()
    q, k, v = qkv(4, Shape(1, T, 2, K, V), dtype=torch.float32, device=dev)
    cot = [randn(7, 1, T, 2, V, dtype=torch.float32, device=dev), randn(8, 1, T, 2, dtype=torch.float32, device=dev)]
    inputs = dict(q=q.requires_grad_(), k=k.requires_grad_(), v=v.requires_grad_())
    inputs64 = {n: x.detach().double().requires_grad_() for n, x in inputs.items()}
    kw = dict(window=window, return_lse=True)
    out = fw.sliding_window_attention_chunk(q, k, v, **kw)
    ref = zw.sliding_window_attention_parallel(inputs64["q"], inputs64["k"], inputs64["v"], **kw)
    tol = tol_for(torch.float32, dev)
    assert_close(out[0], ref[0], tol, "o")
    assert_close(out[1], ref[1], tol, "lse")
    g_ref = grads(lambda **a: zw.sliding_window_attention_parallel(**a, **kw), inputs64, cot)
    g = grads(lambda **a: fw.sliding_window_attention_chunk(**a, **kw), inputs, cot)
    for n in g_ref:
        assert_close(g[n], g_ref[n], grad_tol(tol), f"d{n}")


@pytest.mark.skipif(has_cuda() and torch.cuda.get_device_capability()[0] < 9, reason="TMA needs sm_90+")
@pytest.mark.parametrize("loops,tma", [(2, True), (2, False), (1, True), (1, False), (3, True), (3, False)])
def test_fast_forward_every_loop_structure_and_load_path_equals_zoo(loops, tma):
    # The forward's loop structures (1: one masked loop; 2, the op's: interior unmasked then both
    # edges masked; 3: edge, interior, diagonal) and load paths (TMA boxes of a [B·T, H·D] view,
    # run by the interpreter too, or pointers) on every kind of block range. Sequence 1 is all NaN:
    # the boxes of sequence 0's last diagonal block reach into it, and must not let it leak.
    dev = device()
    for T, window in [(150, 60), (130, 47), (90, 1), (40, 40), (100, 33), (64, 64)]:
        q, k, v = qkv(5, Shape(2, T, 2, 16, 16), dtype=torch.float32, device=dev)
        k[1], v[1] = float("nan"), float("nan")
        t = fw._tiles(16, 16, window, torch.float32, q.device)
        o, lse = fw._sliding_window_attention_chunk_fwd(q, k, v, window, 0.25, t, loops, tma)
        o_ref, lse_ref = zw.sliding_window_attention_parallel(q[:1].double(), k[:1].double(), v[:1].double(),
                                                              window=window, scale=0.25, return_lse=True)
        assert_close(o[:1], o_ref, tol_for(torch.float32, dev), f"o T={T} W={window}")
        assert_close(lse[:1].transpose(1, 2), lse_ref, tol_for(torch.float32, dev), f"lse T={T} W={window}")
        assert torch.isnan(o[1]).all()


@pytest.mark.parametrize("scale", [-0.6, 0.0])
def test_fast_takes_negative_and_zero_scales(scale):
    # The kernel's unmasked loop takes the row max before scaling (needs scale >= 0); the op
    # negates q for a negative scale, and autograd carries the sign into dq.
    dev = device()
    q, k, v = qkv(9, Shape(1, 70, 2, 16, 16), dtype=torch.float32, device=dev)
    inputs = dict(q=q.requires_grad_(), k=k.requires_grad_(), v=v.requires_grad_())
    inputs64 = {n: x.detach().double().requires_grad_() for n, x in inputs.items()}
    cot = [randn(3, *v.shape, dtype=torch.float32, device=dev), randn(4, 1, 70, 2, dtype=torch.float32, device=dev)]
    kw = dict(window=40, scale=scale, return_lse=True)
    ref = grads(lambda **a: zw.sliding_window_attention_parallel(**a, **kw), inputs64, cot)
    got = grads(lambda **a: fw.sliding_window_attention_chunk(**a, **kw), inputs, cot)
    tol = tol_for(torch.float32, dev)
    assert_close(fw.sliding_window_attention_chunk(q, k, v, **kw)[0],
                 zw.sliding_window_attention_parallel(*inputs64.values(), **kw)[0], tol, "o")
    for n in ref:
        if ref[n].abs().max() == 0:  # scale = 0: dq = dk = 0 exactly in the reference
            assert got[n].abs().max() <= 1e-5, f"d{n} should vanish"
            continue
        assert_close(got[n], ref[n], grad_tol(tol), f"d{n}")


# (dtype, D, T, W) on the GPU's tiles: W = 64 (no unmasked interior), 129 (a band past one block),
# 512 (an interior); T = 1, ragged, and long enough to cross many blocks. Few, so the GPU run
# compiles a handful of kernel variants.
HALF_CASES = [(torch.bfloat16, 128, 1, 64), (torch.bfloat16, 128, 1000, 64), (torch.bfloat16, 128, 1000, 512),
              (torch.bfloat16, 128, 777, 129), (torch.float16, 64, 1000, 512), (torch.float16, 64, 127, 64),
              (torch.bfloat16, 32, 500, 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T,window", HALF_CASES)
def test_fast_equals_zoo_in_half_precision_on_gpu(dtype, D, T, window):
    q, k, v = qkv(11, Shape(2, T, 3, D, D), dtype=dtype, device="cuda")
    cases.assert_fast_o_and_lse_equal_zoo(zw.sliding_window_attention_parallel, fw.sliding_window_attention_chunk,
                                          q, k, v, window=window)


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (random cotangents on o and on lse)
# ------------------------------------------------------------------------------------------------
@interpreter_only
@settings(max_examples=5)
@given(shape=shapes(max_T=60, max_H=2), window=windows, with_lse=st.booleans(), seed=seeds)
@edge_examples(chunk_size=32, window=5, with_lse=True)
def test_fast_gradients_equal_zoo_in_float32(shape, window, with_lse, seed):
    dev = device()
    q, k, v = qkv(seed, shape, dtype=torch.float32, device=dev)
    inputs = dict(q=q.requires_grad_(), k=k.requires_grad_(), v=v.requires_grad_())
    inputs64 = {n: x.detach().double().requires_grad_() for n, x in inputs.items()}
    cot = [randn(seed + 3, *v.shape, dtype=torch.float32, device=dev)]
    if with_lse:
        cot.append(randn(seed + 4, *q.shape[:3], dtype=torch.float32, device=dev))
    kw = dict(window=window, return_lse=with_lse)
    ref = grads(lambda **a: zw.sliding_window_attention_parallel(**a, **kw), inputs64, cot)
    got = grads(lambda **a: fw.sliding_window_attention_chunk(**a, **kw), inputs, cot)
    for n in ref:
        assert got[n].dtype == torch.float32
        if ref[n].abs().max() == 0:
            # One visible key (W = 1 or T = 1) and no lse cotangent: P ≡ 1, so dq = dk = 0 exactly,
            # while the kernel's ds = P·(do·v − o·do) cancels only to rounding (tf32 dots on a GPU).
            # A wrong mask would give ds of the size of |do||v|: bound the residue well below it.
            unit = ref["v"].abs().max() * inputs["v"].abs().max() * inputs["k" if n == "q" else "q"].abs().max()
            assert got[n].abs().max() <= grad_tol(tol_for(torch.float32, dev)).worst * unit, f"d{n} should vanish"
            continue
        assert_close(got[n], ref[n], grad_tol(tol_for(torch.float32, dev)), f"d{n}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T,window", [c for c in HALF_CASES if c[2] != 1])
def test_fast_gradients_equal_zoo_in_half_precision_on_gpu(dtype, D, T, window):
    q, k, v = qkv(21, Shape(2, T, 3, D, D), dtype=dtype, device="cuda")
    inputs = dict(q=q.requires_grad_(), k=k.requires_grad_(), v=v.requires_grad_())
    cot = [randn(3, *v.shape, dtype=dtype, device="cuda"), randn(4, *q.shape[:3], dtype=torch.float32, device="cuda")]
    kw = dict(window=window, return_lse=True)
    cases.assert_fast_gradients_equal_zoo(lambda **a: zw.sliding_window_attention_parallel(**a, **kw),
                                          lambda **a: fw.sliding_window_attention_chunk(**a, **kw), inputs, cot, dtype)


@pytest.mark.gpu
def test_fast_layer_gradients_equal_zoo_layer_with_the_same_weights_on_gpu():
    cases.assert_fast_layer_gradients_equal_zoo_layer(
        lambda: zw.SlidingWindowAttention(256, 2, window=100), lambda: fw.SlidingWindowAttention(256, 2, window=100))


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(max_T=40), window=windows, t=st.integers(0, 39), seed=seeds)
def test_future_tokens_do_not_change_the_past(shape, window, t, seed):
    t = min(t, shape.T - 1)
    q, k, v = qkv(seed, shape)
    q2, k2, v2 = cases.with_future_replaced((q, k, v), t, lambda shape: randn(seed + 7, *shape))
    for op in (zw.sliding_window_attention_parallel,
               lambda *a, **kw: zw.sliding_window_attention_chunk(*a, chunk_size=16, **kw),
               lambda *a, **kw: zw.sliding_window_attention_recurrent(*a, **kw)[0]):
        o, o2 = op(q, k, v, window=window), op(q2, k2, v2, window=window)
        assert torch.equal(o[:, :t + 1], o2[:, :t + 1])


def test_fast_future_tokens_do_not_change_the_past():
    dev, t = device(), 40
    q, k, v = qkv(9, Shape(1, 75, 2, 16, 8), dtype=torch.float32, device=dev)
    q2, k2, v2 = cases.with_future_replaced((q, k, v), t, 100.0)  # large, so a leak would move the prefix
    o, o2 = (fw.sliding_window_attention_chunk(*a, window=20) for a in ((q, k, v), (q2, k2, v2)))
    assert torch.equal(o[:, :t + 1], o2[:, :t + 1])
    assert not torch.equal(o[:, t + 1:], o2[:, t + 1:])  # and the perturbation was seen


# ------------------------------------------------------------------------------------------------
# 5. State carry: the rolling cache
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(max_T=40), window=windows, split=st.floats(0, 1), seed=seeds)
def test_two_chained_recurrent_calls_equal_one_call(shape, window, split, seed):
    assume(shape.T >= 2)
    q, k, v = qkv(seed, shape)
    n = min(shape.T - 1, max(1, int(split * shape.T)))
    op = zw.sliding_window_attention_recurrent
    o, (kc, vc, cnt) = op(q, k, v, window=window, output_final_state=True)
    o1, h1 = op(q[:, :n], k[:, :n], v[:, :n], window=window, output_final_state=True)
    o2, (kc2, vc2, cnt2) = op(q[:, n:], k[:, n:], v[:, n:], window=window, initial_state=h1,
                              output_final_state=True)
    assert_close(torch.cat([o1, o2], 1), o, TOL["f64"], "o")
    assert torch.equal(kc2, kc) and torch.equal(vc2, vc) and int(cnt2) == int(cnt) == shape.T
    assert kc.shape == (shape.B, window, shape.H, shape.K)  # the cache is W slots, whatever T


@settings(max_examples=6)
@given(T=st.integers(1, 24), t=st.integers(0, 24), window=st.sampled_from([1, 4, 9, 30]),
       form=st.sampled_from(["chunk", "recurrent", "parallel"]), seed=seeds)
def test_prefill_then_decode_equals_forward(T, t, window, form, seed):
    layer, cache = cases.assert_prefill_then_decode_equals_forward(
        lambda: zw.SlidingWindowAttention(12, 3, window=window, form=form), T, t, seed)
    assert cache["k"].shape == (2, window, 3, 4) and int(cache["pos"]) == T
    assert (cache["k"].numel() + cache["v"].numel()) // 2 + 1 == layer.state_size(T)  # per sequence (B = 2), + pos


def test_state_size_does_not_grow_with_T():
    layer = zw.SlidingWindowAttention(16, 2, window=8)
    assert layer.state_size(1) == layer.state_size(10_000) == 2 * 8 * 16 + 1


def test_fast_layer_decodes_like_its_forward():
    cases.assert_fast_layer_decodes_like_its_forward(lambda: fw.SlidingWindowAttention(32, 2, window=6))


# ------------------------------------------------------------------------------------------------
# 6. The method's own laws
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(), extra=st.integers(0, 20), seed=seeds)
def test_window_at_least_T_is_full_causal_softmax_attention(shape, extra, seed):
    q, k, v = qkv(seed, shape)
    ref = sdpa(q, k, v, causal=True)
    W = shape.T + extra
    assert_close(zw.sliding_window_attention_parallel(q, k, v, window=W), ref, TOL["f64"], "parallel")
    assert_close(zw.sliding_window_attention_chunk(q, k, v, window=W, chunk_size=16), ref, TOL["f64"], "chunk")


@given(shape=shapes(), seed=seeds)
def test_window_one_attends_to_itself_only(shape, seed):
    q, k, v = qkv(seed, shape)
    assert torch.equal(zw.sliding_window_attention_parallel(q, k, v, window=1), v)
    assert torch.equal(zw.sliding_window_attention_chunk(q, k, v, window=1, chunk_size=16), v)
    assert torch.equal(zw.sliding_window_attention_recurrent(q, k, v, window=1)[0], v)


@given(shape=shapes(), window=windows, seed=seeds)
def test_equals_sdpa_with_the_band_as_a_mask(shape, window, seed):
    q, k, v = qkv(seed, shape)
    i = torch.arange(shape.T)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)  # card (1): i−W < j ≤ i
    assert band.sum(-1).max() == min(window, shape.T)  # W keys, itself included
    assert_close(zw.sliding_window_attention_chunk(q, k, v, window=window, chunk_size=16),
                 sdpa(q, k, v, mask=band), TOL["f64"], "chunk vs SDPA")


@given(shape=shapes(min_K=1), window=st.integers(1, 10), seed=seeds)
def test_keys_that_left_the_window_change_nothing(shape, window, seed):
    assume(shape.T > window)
    q, k, v = qkv(seed, shape)
    t = shape.T - 1  # the last query sees keys t−W+1 … t; change every older key and value
    k2, v2 = k.clone(), v.clone()
    k2[:, : t - window + 1] += 10.0
    v2[:, : t - window + 1] -= 10.0
    for op in (zw.sliding_window_attention_parallel,
               lambda *a, **kw: zw.sliding_window_attention_chunk(*a, chunk_size=16, **kw)):
        assert torch.equal(op(q, k, v, window=window)[:, t], op(q, k2, v2, window=window)[:, t])


def test_based_config_window_size_maps_to_window():
    # Based passes (window_size // 2, 0) to flash-attn, which counts keys left of the query:
    # window_size = 256 means 128 keys before the query plus itself, W = 129 here.
    q, k, v = qkv(0, Shape(1, 300, 1, 4, 2))
    o = zw.sliding_window_attention_parallel(q, k, v, window=256 // 2 + 1)
    i = torch.arange(300)
    left = 256 // 2  # flash-attn window_size[0]
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] <= left)
    assert_close(o, sdpa(q, k, v, mask=mask), TOL["f64"], "flash window (128, 0)")


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def _bad_cases():
    q, k, v = qkv(0, Shape(2, 8, 3, 4, 5))
    return [
        ("rank", dict(q=q[0]), ValueError, "q must be [B, T, H, D]"),
        ("not a tensor", dict(k=k.tolist()), TypeError, "k must be a torch.Tensor"),
        ("k shape", dict(k=k[..., :3]), ValueError, "k must be [B, T, H, K]"),
        ("T mismatch", dict(v=v[:, :5]), ValueError, "v must be [B, T, H, V]"),
        ("int dtype", dict(q=q.long()), TypeError, "floating point"),
        ("mixed dtypes", dict(q=q.float()), TypeError, "share one dtype"),
        ("window 0", dict(window=0), ValueError, "window must be an int >= 1"),
        ("window negative", dict(window=-3), ValueError, "window must be an int >= 1"),
        ("window float", dict(window=2.5), ValueError, "window must be an int >= 1"),
        ("chunk not power of two", dict(chunk_size=48), ValueError, "power of two"),
        ("scale tensor", dict(scale=torch.tensor(1.0)), TypeError, "scale"),
    ], (q, k, v)


@pytest.mark.parametrize("case", range(len(_bad_cases()[0])), ids=[c[0] for c in _bad_cases()[0]])
def test_bad_inputs_raise_clear_errors(case):
    (_, changes, err, msg), (q, k, v) = _bad_cases()[0][case], _bad_cases()[1]
    args = {**dict(q=q, k=k, v=v), **changes}
    ops = [zw.sliding_window_attention_chunk, fw.sliding_window_attention_chunk]
    if "chunk_size" not in changes:
        ops += [zw.sliding_window_attention_parallel, zw.sliding_window_attention_recurrent]
    for op in ops:
        with pytest.raises(err, match=re.escape(msg)):
            op(**args)


def test_a_window_larger_than_the_decode_cache_raises():
    q, k, v = qkv(0, Shape(1, 10, 2, 4, 4))
    _, h = zw.sliding_window_attention_recurrent(q, k, v, window=4, output_final_state=True)
    with pytest.raises(ValueError, match="window larger"):
        zw.sliding_window_attention_recurrent(q[:, :1], k[:, :1], v[:, :1], window=8, initial_state=h)
    small = zw.SlidingWindowAttention(8, 2, window=4)
    big = zw.SlidingWindowAttention(8, 2, window=16)
    _, cache = small.prefill(torch.randn(1, 6, 8))
    with pytest.raises(ValueError, match="window larger"):
        big.step(torch.randn(1, 8), cache)


def test_layer_rejects_bad_sizes_and_inputs():
    with pytest.raises(ValueError, match="even head dim"):
        zw.SlidingWindowAttention(12, 4)  # head dim 3: rotary needs pairs
    with pytest.raises(ValueError, match="window must be"):
        zw.SlidingWindowAttention(12, 3, window=0)
    with pytest.raises(ValueError, match="form must be"):
        zw.SlidingWindowAttention(12, 3, form="flash")
    layer = zw.SlidingWindowAttention(12, 3)
    with pytest.raises(ValueError, match=r"\[B, T, C\] with C = 12"):
        layer(torch.randn(2, 5, 11))
    with pytest.raises(ValueError, match=r"\[B, C\] with C = 12"):
        layer.step(torch.randn(2, 1, 12), None)


@pytest.mark.skipif(has_cuda() or interpreting(), reason="only without a GPU and without the interpreter")
def test_fast_op_on_cpu_without_the_interpreter_says_so():
    q, k, v = qkv(0, Shape(1, 4, 1, 4, 4), dtype=torch.float32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fw.sliding_window_attention_chunk(q, k, v)


def test_fast_op_rejects_float64_and_head_dims_above_256():
    q, k, v = qkv(0, Shape(1, 2, 1, 300, 4), dtype=torch.float32, device=device())
    with pytest.raises(ValueError, match="256"):
        fw.sliding_window_attention_chunk(q, k, v)
    with pytest.raises(TypeError, match="float64"):
        fw.sliding_window_attention_chunk(*(x[..., :4].double() for x in (q, k, v)))


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["parallel", "chunk", "recurrent"])
def test_forms_compile_fullgraph_with_aot_eager(name):
    torch._dynamo.reset()
    op = getattr(zw, f"sliding_window_attention_{name}")
    q, k, v = qkv(0, Shape(2, 19, 2, 8, 6), dtype=torch.float32)
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    out, ref = compiled(q, k, v, window=5), op(q, k, v, window=5)
    out, ref = (out[0], ref[0]) if name == "recurrent" else (out, ref)
    assert_close(out, ref, TOL["f32-interpret"], "o")


def test_layer_compiles_fullgraph_with_aot_eager_forward_and_step():
    cases.assert_layer_compiles_fullgraph_with_aot_eager_forward_and_step(
        lambda: zw.SlidingWindowAttention(16, 2, window=5))


def test_chunk_form_compiles_with_inductor():
    torch._dynamo.reset()
    q, k, v = qkv(0, Shape(1, 40, 2, 8, 8), dtype=torch.float32)
    o = torch.compile(zw.sliding_window_attention_chunk, fullgraph=True)(q, k, v, window=7, chunk_size=16)
    assert_close(o, zw.sliding_window_attention_parallel(q, k, v, window=7), TOL["f32-interpret"], "o")


def test_fast_op_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    dev = device()
    q, k, v = qkv(2, Shape(1, 40, 2, 16, 16), dtype=torch.float32, device=dev)
    inputs = dict(q=q.requires_grad_(), k=k.requires_grad_(), v=v.requires_grad_())
    cot = [randn(3, *v.shape, dtype=torch.float32, device=dev), randn(4, 1, 40, 2, dtype=torch.float32, device=dev)]
    cases.assert_compiled_op_gradients_equal_eager(
        fw.sliding_window_attention_chunk, lambda op: lambda **a: op(**a, window=9, return_lse=True), inputs, cot)


# Run in a fresh process: under TRITON_INTERPRET=1 (this process) Triton is set up for the
# interpreter and cannot feed the GPU compiler.
AOT_SCRIPT = r"""
import json
import torch
from aot import stack_bytes
import fast.sliding_window_attention as fw

torch.cuda.get_device_capability = lambda device=None: (9, 0)  # the tile rule asks: an H100


def spills(kernel, ptrs, consts, num_warps, num_stages):
    # As the JIT compiles it for bf16 at the headline size: i32 sizes, fp32 scalars, H % 16 == 0.
    return stack_bytes(kernel, dict(ptrs, T="i32", H="i32", W="i32"), consts, num_warps, num_stages,
                       default="fp32", aligned=("H",))


bf, f32 = "*bf16", "*fp32"
out = {}
for W in (64, 512):
    t = fw._tiles(128, 128, W, torch.bfloat16, "cuda")
    dims = dict(K=128, V=128, BK=t.BK, BV=t.BV, UPCAST=False)
    io = dict(q=bf, k=bf, v=bf, lse=f32, delta=f32)
    td = f"tensordesc<bf16[{t.BN},{t.BK}]>"
    for loops, tma in ((2, True), (2, False), (1, True), (3, False)):  # the op's path first
        kv = dict(k=td, v=td) if tma else {}
        out[f"fwd{W}_loops{loops}_tma{int(tma)}"] = spills(
            fw._sliding_window_attention_chunk_fwd_kernel, dict(io, o=bf, **kv),
            dict(dims, BM=t.BM, BN=t.BN, LOOPS=loops, TMA=tma), t.warps, t.stages)
    out[f"dkdv{W}"] = spills(fw._sliding_window_attention_chunk_bwd_dkdv_kernel, dict(io, do=bf, dk=bf, dv=bf),
                             dict(dims, BM=t.BM1, BN=t.BN1), t.bwd_warps, t.stages)
    out[f"dq{W}"] = spills(fw._sliding_window_attention_chunk_bwd_dq_kernel, dict(io, do=bf, dq=bf),
                           dict(dims, BM=t.BM2, BN=t.BN2), t.bwd_warps, t.stages)
print(json.dumps(out))
"""


@pytest.mark.skipif(has_cuda(), reason="on a GPU the kernels compile for real in the GPU tests")
def test_kernels_compile_for_an_h100_without_spilling():
    # The interpreter never compiles: this catches what only the GPU compiler rejects, and register
    # spills, on a CPU. Triton ships ptxas; without it the test skips.
    stack = run_aot_script(AOT_SCRIPT, timeout=600)
    assert all(v == 0 for v in stack.values()), stack
