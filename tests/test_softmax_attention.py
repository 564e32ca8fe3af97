"""Softmax attention: the spec, in DESIGN.md's law order.

1. forms agree: the online-softmax chunk form equals the parallel definition in float64 (o, lse);
2. fast equals zoo: the Triton kernel in fp32 under the interpreter, fp16/bf16 on a GPU;
3. gradients agree: q, k, v through random cotangents on o and on lse;
4. causality: perturbing tokens after t leaves outputs up to t bit-identical;
5. state carry: softmax has no recurrent state; its carries are the KV cache (prefill then
   decode equals one forward pass) and the lse merge (two key halves merged by lse = all keys);
6. own laws: lse is torch.logsumexp of the scores; equals torch's SDPA; T = 1 returns v; shifting
   every key by one vector changes nothing; NaN in, NaN out;
7. bad inputs raise clear errors;
8. torch.compile(fullgraph=True): both forms and the layer (aot_eager), one form with inductor,
   and the fast op (a custom op) on the CPU under the interpreter.
Also, on a CPU: the headline kernels compile for an H100 (sm_90) without register spills.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

from strategies import (run_aot_script, TOL, Shape, assert_close, chunk_sizes, device, edge_examples, grad_tol,
                        grads, randn, seeds, shapes, tol_for)
import layer_cases as cases
import zoo.softmax_attention as zsa
import fast.softmax_attention as fsa

F64 = torch.float64
causals = st.booleans()


def qkv(seed, s: Shape, dtype=F64, device="cpu", Tk=None):
    """q [B, T, H, K], k [B, Tk, H, K], v [B, Tk, H, V] from one seed."""
    Tk = s.T if Tk is None else Tk
    return (randn(seed, s.B, s.T, s.H, s.K, dtype=dtype, device=device),
            randn(seed + 1, s.B, Tk, s.H, s.K, dtype=dtype, device=device),
            randn(seed + 2, s.B, Tk, s.H, s.V, dtype=dtype, device=device))


def scores(q, k, causal, scale=None):
    """The masked scores s_ij of the card's (1)-(2): [B, H, T, Tk], for the lse law."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = scale * torch.einsum("bthk,bshk->bhts", q, k)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return s


# ------------------------------------------------------------------------------------------------
# 1. Forms agree
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(), causal=causals, L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, causal=True, L=16)
@edge_examples(chunk_size=16, causal=False, L=16)
def test_chunk_equals_parallel_in_float64(shape, causal, L, seed):
    q, k, v = qkv(seed, shape)
    o_ref, lse_ref = zsa.softmax_attention_parallel(q, k, v, causal=causal, return_lse=True)
    o, lse = zsa.softmax_attention_chunk(q, k, v, causal=causal, return_lse=True, chunk_size=L)
    assert_close(o, o_ref, TOL["f64"], "o")
    assert_close(lse, lse_ref, TOL["f64"], "lse")
    assert lse.shape == q.shape[:3]


@given(shape=shapes(max_T=40), Tk=st.integers(1, 90), chunk_size=chunk_sizes, seed=seeds)
def test_chunk_equals_parallel_with_more_or_fewer_keys_than_queries(shape, Tk, chunk_size, seed):
    q, k, v = qkv(seed, shape, Tk=Tk)
    o_ref, lse_ref = zsa.softmax_attention_parallel(q, k, v, causal=False, return_lse=True, scale=0.7)
    o, lse = zsa.softmax_attention_chunk(q, k, v, causal=False, return_lse=True, scale=0.7,
                                         chunk_size=chunk_size)
    assert_close(o, o_ref, TOL["f64"], "o")
    assert_close(lse, lse_ref, TOL["f64"], "lse")


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo (fp32 under the interpreter on CPU; fp16/bf16 on a GPU)
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6)
@given(shape=shapes(max_T=70, max_H=2), causal=causals, seed=seeds)
@edge_examples(chunk_size=32, causal=True)
def test_fast_equals_zoo_in_float32(shape, causal, seed):
    dev = device()
    q, k, v = qkv(seed, shape, dtype=torch.float32, device=dev)
    o_ref, lse_ref = zsa.softmax_attention_parallel(q.double(), k.double(), v.double(), causal=causal,
                                                    return_lse=True)
    o, lse = fsa.softmax_attention_chunk(q, k, v, causal=causal, return_lse=True)
    assert o.dtype == torch.float32 and lse.dtype == torch.float32
    tol = tol_for(torch.float32, dev)
    assert_close(o, o_ref, tol, "o")
    assert_close(lse, lse_ref, tol, "lse")


@pytest.mark.parametrize("K,V,T,Tk", [(32, 32, 40, 40), (64, 16, 33, 33), (20, 40, 17, 50)])
def test_fast_equals_zoo_for_wider_and_unequal_head_dims(K, V, T, Tk):
    dev = device()
    s = Shape(1, T, 2, K, V)
    for causal in ([True, False] if T == Tk else [False]):
        q, k, v = qkv(3, s, dtype=torch.float32, device=dev, Tk=Tk)
        o_ref, lse_ref = zsa.softmax_attention_parallel(q.double(), k.double(), v.double(),
                                                        causal=causal, return_lse=True, scale=0.3)
        o, lse = fsa.softmax_attention_chunk(q, k, v, causal=causal, return_lse=True, scale=0.3)
        assert_close(o, o_ref, tol_for(torch.float32, dev), f"o causal={causal}")
        assert_close(lse, lse_ref, tol_for(torch.float32, dev), f"lse causal={causal}")


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                    reason="TMA needs sm_90+")
@pytest.mark.parametrize("causal,T,Tk", [(True, 45, 45), (False, 45, 45), (False, 9, 37)])
def test_fast_forward_with_tma_loads_equals_zoo(causal, T, Tk):
    # The Hopper path (TMA boxes of a [B·Tk, H·D] view) runs in the interpreter too. Sequence 1
    # is all NaN: the boxes of sequence 0's last, ragged key block reach into it, and must not
    # let it leak (its values are zeroed, its scores masked).
    dev = device()
    q, k, v = qkv(6, Shape(2, T, 2, 32, 32), dtype=torch.float32, device=dev, Tk=Tk)
    k[1], v[1] = float("nan"), float("nan")
    t = fsa._tiles(32, 32, torch.float32, q.device)
    o, lse = fsa._softmax_attention_chunk_fwd(q, k, v, causal, 32 ** -0.5, t, tma=True)
    o_ref, lse_ref = zsa.softmax_attention_parallel(q[:1].double(), k[:1].double(), v[:1].double(),
                                                    causal=causal, return_lse=True)
    assert_close(o[:1], o_ref, tol_for(torch.float32, dev), "o")
    assert_close(lse[:1].transpose(1, 2), lse_ref, tol_for(torch.float32, dev), "lse")
    assert torch.isnan(o[1]).all()


@pytest.mark.parametrize("scale", [-0.6, 0.0])
def test_fast_equals_zoo_for_negative_and_zero_scale(scale):
    dev = device()
    inputs, cot = _grad_inputs(4, Shape(1, 35, 2, 16, 16), torch.float32, dev)
    inputs64 = {n: x.detach().double().requires_grad_() for n, x in inputs.items()}
    op_args = dict(causal=True, scale=scale, return_lse=True)
    ref = grads(lambda **a: zsa.softmax_attention_parallel(**a, **op_args), inputs64, cot)
    got = grads(lambda **a: fsa.softmax_attention_chunk(**a, **op_args), inputs, cot)
    o, lse = fsa.softmax_attention_chunk(*inputs.values(), **op_args)
    o_ref, lse_ref = zsa.softmax_attention_parallel(*inputs64.values(), **op_args)
    assert_close(o, o_ref, tol_for(torch.float32, dev), "o")
    assert_close(lse, lse_ref, tol_for(torch.float32, dev), "lse")
    for n in ref:  # with scale 0, dq is exactly 0, and assert_close then demands exactly 0
        assert_close(got[n], ref[n], grad_tol(tol_for(torch.float32, dev)), f"d{n}")


HALF_CASES = [(dt, D, T, causal) for dt in (torch.float16, torch.bfloat16) for D in (32, 64, 128)
              for T, causal in ((1, True), (127, True), (1000, True), (1000, False), (333, False))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T,causal", HALF_CASES)
def test_fast_equals_zoo_in_half_precision_on_gpu(dtype, D, T, causal):
    q, k, v = qkv(11, Shape(2, T, 3, D, D), dtype=dtype, device="cuda")
    cases.assert_fast_o_and_lse_equal_zoo(zsa.softmax_attention_parallel, fsa.softmax_attention_chunk, q, k, v,
                                          causal=causal)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T,causal", [(torch.bfloat16, 128, 1000, True),
                                              (torch.float16, 64, 333, False)])
def test_fast_forward_without_tma_equals_zoo_on_gpu(dtype, D, T, causal):
    # On an H100 the public op takes the TMA path; this keeps the portable pointer path tested.
    q, k, v = qkv(12, Shape(2, T, 3, D, D), dtype=dtype, device="cuda")
    t = fsa._tiles(D, D, dtype, q.device)
    o, lse = fsa._softmax_attention_chunk_fwd(q, k, v, causal, D ** -0.5, t, tma=False)
    o_ref, lse_ref = zsa.softmax_attention_parallel(q.double(), k.double(), v.double(), causal=causal,
                                                    return_lse=True)
    assert_close(o, o_ref, tol_for(dtype, "cuda"), "o")
    assert_close(lse.transpose(1, 2), lse_ref, tol_for(torch.float32, "cuda"), "lse")


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (random cotangents on o and on lse)
# ------------------------------------------------------------------------------------------------
def _grad_inputs(seed, shape, dtype, dev, Tk=None):
    q, k, v = (x.requires_grad_() for x in qkv(seed, shape, dtype=dtype, device=dev, Tk=Tk))
    do = randn(seed + 3, *q.shape[:3], shape.V, dtype=dtype, device=dev)
    dlse = randn(seed + 4, *q.shape[:3], dtype=torch.float32 if dtype != F64 else F64, device=dev)
    return dict(q=q, k=k, v=v), [do, dlse]


@settings(max_examples=6)
@given(shape=shapes(max_T=50), causal=causals, L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, causal=True, L=16)
def test_chunk_gradients_equal_parallel_in_float64(shape, causal, L, seed):
    inputs, cot = _grad_inputs(seed, shape, F64, "cpu")
    ref = grads(lambda **a: zsa.softmax_attention_parallel(**a, causal=causal, return_lse=True), inputs, cot)
    got = grads(lambda **a: zsa.softmax_attention_chunk(**a, causal=causal, return_lse=True,
                                                        chunk_size=L), inputs, cot)
    for n in ref:
        assert_close(got[n], ref[n], TOL["f64"], f"d{n}")


@settings(max_examples=5)
@given(shape=shapes(max_T=50, max_H=2), causal=causals, seed=seeds, with_lse=st.booleans())
@edge_examples(chunk_size=32, causal=True, with_lse=True)
@example(shape=Shape(1, 1, 1, 1, 3), causal=False, seed=2, with_lse=False)  # dq = 0 by the math, not by the kernel (CI)
def test_fast_gradients_equal_zoo_in_float32(shape, causal, seed, with_lse):
    dev = device()
    inputs, (do, dlse) = _grad_inputs(seed, shape, torch.float32, dev)
    cot = [do, dlse] if with_lse else [do]
    kw = dict(causal=causal, return_lse=with_lse)
    cases.assert_fast_gradients_equal_zoo(lambda **a: zsa.softmax_attention_parallel(**a, **kw),
                                          lambda **a: fsa.softmax_attention_chunk(**a, **kw), inputs, cot,
                                          torch.float32)


def test_fast_gradients_with_fewer_queries_than_keys_and_unequal_head_dims():
    dev = device()
    inputs, cot = _grad_inputs(5, Shape(1, 9, 2, 24, 40), torch.float32, dev, Tk=45)
    inputs64 = {n: x.detach().double().requires_grad_() for n, x in inputs.items()}
    ref = grads(lambda **a: zsa.softmax_attention_parallel(**a, causal=False, return_lse=True), inputs64, cot)
    got = grads(lambda **a: fsa.softmax_attention_chunk(**a, causal=False, return_lse=True), inputs, cot)
    for n in ref:
        assert_close(got[n], ref[n], grad_tol(tol_for(torch.float32, dev)), f"d{n}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T,causal", [c for c in HALF_CASES if c[2] != 333])
def test_fast_gradients_equal_zoo_in_half_precision_on_gpu(dtype, D, T, causal):
    inputs, cot = _grad_inputs(21, Shape(2, T, 3, D, D), dtype, "cuda")
    kw = dict(causal=causal, return_lse=True)
    cases.assert_fast_gradients_equal_zoo(lambda **a: zsa.softmax_attention_parallel(**a, **kw),
                                          lambda **a: fsa.softmax_attention_chunk(**a, **kw), inputs, cot, dtype)


@pytest.mark.gpu
def test_fast_layer_gradients_equal_zoo_layer_with_the_same_weights_on_gpu():
    cases.assert_fast_layer_gradients_equal_zoo_layer(
        lambda: zsa.SoftmaxAttention(256, 2), lambda: fsa.SoftmaxAttention(256, 2))


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(max_T=40), t=st.integers(0, 39), seed=seeds)
def test_future_tokens_do_not_change_the_past(shape, t, seed):
    t = min(t, shape.T - 1)
    q, k, v = qkv(seed, shape)
    q2, k2, v2 = cases.with_future_replaced((q, k, v), t, lambda shape: randn(seed + 7, *shape))
    for op in (zsa.softmax_attention_parallel, zsa.softmax_attention_chunk):
        o, lse = op(q, k, v, return_lse=True)
        o2, lse2 = op(q2, k2, v2, return_lse=True)
        assert torch.equal(o[:, :t + 1], o2[:, :t + 1]), op.__name__
        assert torch.equal(lse[:, :t + 1], lse2[:, :t + 1]), op.__name__


def test_fast_future_tokens_do_not_change_the_past():
    dev, s, t = device(), Shape(1, 45, 2, 16, 8), 20
    q, k, v = qkv(9, s, dtype=torch.float32, device=dev)
    q2, k2, v2 = cases.with_future_replaced((q, k, v), t, 100.0)  # large, so a leak would move the prefix
    o, o2 = fsa.softmax_attention_chunk(q, k, v), fsa.softmax_attention_chunk(q2, k2, v2)
    assert torch.equal(o[:, :t + 1], o2[:, :t + 1])
    assert not torch.equal(o[:, t + 1:], o2[:, t + 1:])  # and the perturbation was seen


def test_layer_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    layer = zsa.SoftmaxAttention(12, 3).double()
    x = randn(0, 2, 30, 12)
    x2 = x.clone()
    x2[:, 11:] = randn(1, 2, 19, 12)
    assert torch.equal(layer(x)[:, :11], layer(x2)[:, :11])


# ------------------------------------------------------------------------------------------------
# 5. State carry: the KV cache, and the lse merge of two key halves
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6)
@given(T=st.integers(1, 24), t=st.integers(0, 24), form=st.sampled_from(["chunk", "parallel"]),
       seed=seeds)
def test_prefill_then_decode_equals_forward(T, t, form, seed):
    layer, cache = cases.assert_prefill_then_decode_equals_forward(
        lambda: zsa.SoftmaxAttention(12, 3, form=form), T, t, seed)
    assert cache["k"].shape == (2, T, 3, 4)
    assert cache["k"].numel() + cache["v"].numel() == 2 * layer.state_size(T)  # per sequence, B = 2


def test_fast_layer_decodes_like_its_forward():
    cases.assert_fast_layer_decodes_like_its_forward(lambda: fsa.SoftmaxAttention(32, 2))


@given(shape=shapes(max_T=40), split=st.floats(0.01, 0.99), chunk_size=chunk_sizes, seed=seeds)
def test_two_key_halves_merged_by_lse_equal_all_keys(shape, split, chunk_size, seed):
    Tk = shape.T + 5
    q, k, v = qkv(seed, shape, Tk=Tk)
    n = max(1, min(Tk - 1, int(split * Tk)))
    op = zsa.softmax_attention_chunk
    o1, lse1 = op(q, k[:, :n], v[:, :n], causal=False, return_lse=True, chunk_size=chunk_size)
    o2, lse2 = op(q, k[:, n:], v[:, n:], causal=False, return_lse=True, chunk_size=chunk_size)
    o, lse = op(q, k, v, causal=False, return_lse=True, chunk_size=chunk_size)
    lse12 = torch.logaddexp(lse1, lse2)  # card: lse = log(e^lse₁ + e^lse₂)
    o12 = (lse1 - lse12).exp()[..., None] * o1 + (lse2 - lse12).exp()[..., None] * o2
    assert_close(lse12, lse, TOL["f64"], "lse")
    assert_close(o12, o, TOL["f64"], "o")


# ------------------------------------------------------------------------------------------------
# 6. The method's own laws
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(), causal=causals, seed=seeds)
def test_lse_is_the_logsumexp_of_the_scores(shape, causal, seed):
    q, k, v = qkv(seed, shape)
    ref = torch.logsumexp(scores(q, k, causal), dim=-1).transpose(1, 2)  # [B, T, H]
    for op in (zsa.softmax_attention_parallel, zsa.softmax_attention_chunk):
        assert_close(op(q, k, v, causal=causal, return_lse=True)[1], ref, TOL["f64"], op.__name__)


@given(shape=shapes(), causal=causals, seed=seeds)
def test_equals_torch_sdpa_in_float64(shape, causal, seed):
    q, k, v = qkv(seed, shape)
    ref = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                         is_causal=causal).transpose(1, 2)
    for op in (zsa.softmax_attention_parallel, zsa.softmax_attention_chunk):
        assert_close(op(q, k, v, causal=causal), ref, TOL["f64"], op.__name__)


def test_causal_single_token_returns_its_value():
    q, k, v = qkv(0, Shape(2, 1, 3, 5, 4))
    for op in (zsa.softmax_attention_parallel, zsa.softmax_attention_chunk):
        o, lse = op(q, k, v, return_lse=True)
        assert torch.equal(o, v)  # one key: P = 1 exactly
        assert_close(lse, scores(q, k, True)[..., 0].transpose(1, 2), TOL["f64"], "lse = s_00")
    dev = device()
    o = fsa.softmax_attention_chunk(q.float().to(dev), k.float().to(dev), v.float().to(dev))
    assert_close(o, v.float(), tol_for(torch.float32, dev), "fast")


@given(shape=shapes(max_T=30), causal=causals, seed=seeds)
def test_shifting_every_key_by_one_vector_changes_nothing(shape, causal, seed):
    # s_ij -> s_ij + scale·q_i·c: the same constant for a whole row, which softmax cancels.
    q, k, v = qkv(seed, shape)
    c = randn(seed + 5, 1, 1, shape.H, shape.K)
    for op in (zsa.softmax_attention_parallel, zsa.softmax_attention_chunk):
        assert_close(op(q, k + c, v, causal=causal), op(q, k, v, causal=causal), TOL["f64"], op.__name__)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, inside the interpreter, on inf - inf
@pytest.mark.parametrize("where,bad", [("q", "nan"), ("k", "nan"), ("v", "nan"), ("q", "inf"),
                                       ("k", "inf"), ("v", "inf")])
def test_nan_or_inf_input_gives_nan_output(where, bad):
    q, k, v = qkv(0, Shape(1, 6, 2, 4, 3))
    q[..., 0] = q[..., 0].abs()  # so an infinite k[..., 0] makes the scores +inf, not -inf (card)
    {"q": q, "k": k, "v": v}[where][0, 0, 0, 0] = float(bad)  # token 0: every query sees it
    results = {op.__name__: op(q, k, v, causal=False)
               for op in (zsa.softmax_attention_parallel, zsa.softmax_attention_chunk)}
    dev = device()
    results["fast"] = fsa.softmax_attention_chunk(q.float().to(dev), k.float().to(dev), v.float().to(dev),
                                                  causal=False).cpu()
    for name, o in results.items():
        rows = {"q": o[0, :1, 0], "k": o[0, :, 0], "v": o[0, :, 0, :1]}[where]  # what sees it
        if where == "v" and bad == "inf":  # +inf·P: the output is +inf, never finite
            assert not torch.isfinite(rows).any(), f"{name}: v=inf gave {rows}"
        else:
            assert torch.isnan(rows).all(), f"{name}: {where}={bad} gave {rows}"
        assert torch.isfinite(o[0, :, 1]).all(), f"{name}: head 1 never sees the bad value"


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def _bad_cases():
    q, k, v = qkv(0, Shape(2, 8, 3, 4, 5))
    return [
        ("rank", dict(q=q[0]), ValueError, "q must have shape [B, T, H, K]"),
        ("not a tensor", dict(k=k.tolist()), TypeError, "k must be a torch.Tensor"),
        ("B mismatch", dict(k=k[:1], v=v[:1]), ValueError, "agree on B and H"),
        ("H mismatch", dict(v=v[:, :, :2]), ValueError, "agree on B and H"),
        ("T mismatch k v", dict(v=v[:, :5]), ValueError, "same number of keys"),
        ("causal T mismatch", dict(k=k[:, :5], v=v[:, :5]), ValueError, "as many keys as queries"),
        ("head dim q vs k", dict(k=k[..., :3]), ValueError, "share the head dim K"),
        ("int dtype", dict(q=q.long()), TypeError, "real floating"),
        ("complex dtype", dict(v=v.to(torch.complex128)), TypeError, "real floating"),
        ("mixed dtypes", dict(q=q.float()), TypeError, "share one dtype"),
        ("mixed devices", dict(q=q.to("meta")), ValueError, "one device"),
        ("chunk not power of two", dict(chunk_size=48), ValueError, "power of two"),
        ("chunk zero", dict(chunk_size=0), ValueError, "power of two"),
        ("scale tensor", dict(scale=torch.tensor(1.0)), TypeError, "scale"),
    ], (q, k, v)


@pytest.mark.parametrize("case", range(len(_bad_cases()[0])), ids=[c[0] for c in _bad_cases()[0]])
@pytest.mark.parametrize("mod", [zsa, fsa], ids=["zoo", "fast"])
def test_bad_inputs_raise_clear_errors(case, mod):
    (_, changes, err, msg), (q, k, v) = _bad_cases()[0][case], _bad_cases()[1]
    args = {**dict(q=q, k=k, v=v), **changes}
    ops = [mod.softmax_attention_chunk]
    if mod is zsa and "chunk_size" not in changes:
        ops.append(zsa.softmax_attention_parallel)
    for op in ops:
        with pytest.raises(err, match=re.escape(msg)):
            op(args["q"], args["k"], args["v"], **{a: b for a, b in args.items() if a not in ("q", "k", "v")})


def test_layer_rejects_bad_sizes_and_inputs():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        zsa.SoftmaxAttention(10, 3)
    with pytest.raises(ValueError, match="form must be"):
        zsa.SoftmaxAttention(12, 3, form="recurrent")
    layer = zsa.SoftmaxAttention(12, 3)
    with pytest.raises(ValueError, match=r"\[B, T, C\] with C = 12"):
        layer(torch.randn(2, 5, 11))
    with pytest.raises(ValueError, match=r"\[B, C\] with C = 12"):
        layer.step(torch.randn(2, 1, 12), None)


def test_fast_op_on_cpu_without_the_interpreter_says_so(monkeypatch):
    monkeypatch.setattr(fsa, "INTERPRET", False)  # as if TRITON_INTERPRET were unset
    q, k, v = qkv(0, Shape(1, 4, 1, 4, 4), dtype=torch.float32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fsa.softmax_attention_chunk(q, k, v)


def test_fast_op_rejects_float64():
    q, k, v = qkv(0, Shape(1, 4, 1, 4, 4), device=device())
    with pytest.raises(TypeError, match="float64"):
        fsa.softmax_attention_chunk(q, k, v)


def test_fast_op_rejects_head_dims_above_256():
    q, k, v = qkv(0, Shape(1, 2, 1, 300, 4), dtype=torch.float32, device=device())
    with pytest.raises(ValueError, match="256"):
        fsa.softmax_attention_chunk(q, k, v)


AOT_SCRIPT = r"""
import json
import torch
from aot import stack_bytes
import fast.softmax_attention as f

torch.cuda.get_device_capability = lambda device=None: (9, 0)  # the tile rule as on an H100
t = f._tiles(128, 128, torch.bfloat16, None)
# As the JIT would compile them for bf16, K = V = 128, causal, 16-byte-aligned pointers.
P, TD = "*bf16", f"tensordesc<bf16[{t.BN},{t.BK}]>"
scalars = dict(H="i32", T="i32", TK="i32", scale="fp32")
fwd = dict(K=128, V=128, BK=t.BK, BV=t.BV, BM=t.BM, BN=t.BN, CAUSAL=True, UPCAST=False)
bwd = dict(K=128, V=128, BK=t.BK, BV=t.BV, CAUSAL=True, UPCAST=False)
print(json.dumps({
    "fwd": stack_bytes(f._softmax_attention_chunk_fwd_kernel, dict(q=P, k=P, v=P, o=P, lse="*fp32", **scalars),
                       dict(fwd, TMA=False), t.warps, t.stages),
    "fwd_tma": stack_bytes(f._softmax_attention_chunk_fwd_kernel, dict(q=P, k=TD, v=TD, o=P, lse="*fp32", **scalars),
                           dict(fwd, TMA=True), t.warps, t.stages),
    "dkdv": stack_bytes(f._softmax_attention_chunk_bwd_dkdv_kernel,
                        dict(q=P, k=P, v=P, o=P, do=P, lse="*fp32", dlse="*fp32", delta="*fp32", dq=P, dk=P, dv=P,
                             **scalars),
                        dict(bwd, BM=t.BM1, BN=t.BN1), t.bwd_warps, t.bwd_stages),
    "dq": stack_bytes(f._softmax_attention_chunk_bwd_dq_kernel,
                      dict(q=P, k=P, v=P, o=P, do=P, lse="*fp32", dlse="*fp32", delta="*fp32", dq=P, dk=P, dv=P,
                           **scalars),
                      dict(bwd, BM=t.BM2, BN=t.BN2), t.bwd_warps, t.bwd_stages),
}))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile for real in the GPU tests")
def test_kernels_compile_for_an_h100_without_spilling():
    # The interpreter never compiles: this catches what only the GPU compiler rejects (it caught a
    # non-constexpr global), and register spills, on a CPU, for the headline bf16 D = 128 causal
    # forward (pointer and TMA loads) and backward. Triton ships ptxas; without it the test skips.
    stack = run_aot_script(AOT_SCRIPT, timeout=300)
    assert stack == {"fwd": 0, "fwd_tma": 0, "dkdv": 0, "dq": 0}, f"stack bytes (spills): {stack}"


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [zsa.softmax_attention_parallel, zsa.softmax_attention_chunk],
                         ids=["parallel", "chunk"])
def test_forms_compile_fullgraph_with_aot_eager(op):
    torch._dynamo.reset()
    q, k, v = qkv(0, Shape(2, 21, 2, 8, 6), dtype=torch.float32)
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    for causal in (True, False):
        o, lse = compiled(q, k, v, causal=causal, return_lse=True)
        o_ref, lse_ref = op(q, k, v, causal=causal, return_lse=True)
        assert_close(o, o_ref, TOL["f32-interpret"], "o")
        assert_close(lse, lse_ref, TOL["f32-interpret"], "lse")


def test_layer_compiles_fullgraph_with_aot_eager_forward_and_step():
    cases.assert_layer_compiles_fullgraph_with_aot_eager_forward_and_step(lambda: zsa.SoftmaxAttention(16, 2))


def test_chunk_form_compiles_with_inductor():
    torch._dynamo.reset()
    q, k, v = qkv(0, Shape(1, 40, 2, 8, 8), dtype=torch.float32)
    compiled = torch.compile(zsa.softmax_attention_chunk, fullgraph=True)
    o, lse = compiled(q, k, v, return_lse=True, chunk_size=16)
    o_ref, lse_ref = zsa.softmax_attention_parallel(q, k, v, return_lse=True)
    assert_close(o, o_ref, TOL["f32-interpret"], "o")
    assert_close(lse, lse_ref, TOL["f32-interpret"], "lse")


def test_fast_op_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    dev = device()
    inputs, cot = _grad_inputs(2, Shape(1, 20, 2, 16, 16), torch.float32, dev)
    cases.assert_compiled_op_gradients_equal_eager(
        fsa.softmax_attention_chunk, lambda op: lambda **a: op(**a, causal=True, return_lse=True), inputs, cot)
