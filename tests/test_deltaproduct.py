"""Gated DeltaProduct (n_h delta-rule steps per token): the spec, in DESIGN.md's law order.

1. forms agree: recurrent and chunk equal the parallel definition in float64 (o and final state),
   with and without the forget gate, n_h = 1..3, β ∈ (0, 2), chunks splitting tokens;
2. fast equals zoo: tests/test_deltaproduct_fast.py (with fast/deltaproduct.py);
3. gradients agree: chunk and parallel, q, k, v, g, beta and the initial state;
4. causality: perturbing tokens after t (all their micro-steps) leaves outputs up to t bit-identical;
5. state carry: two chained calls equal one call; the layer's prefill then decode equals forward;
6. own laws: n_h = 1 is Gated DeltaNet; the recurrence is the gated delta rule over the T·n_h
   interleaved micro-steps (gate on the first, output at the last); g = None is g = 0; β = 0
   leaves the state unchanged; the layer loads fla's weights and gives fla's output (GPU, fla);
7. bad inputs raise clear errors (lengths that are not T·n_h, g per micro-step, g > 0, ...);
8. torch.compile(fullgraph=True): every form and the layer (aot_eager), the chunk form with inductor.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import delta_cases as dc
from strategies import TOL, Shape, assert_close, chunk_sizes, edge_examples, randn, rand, seeds, shapes
import zoo.deltaproduct as zp
import zoo.gated_deltanet as zg

F64 = torch.float64
small = shapes(max_T=30, max_K=6, max_V=6)
householders = st.integers(1, 3)
FORMS = {
    "parallel": zp.gated_delta_product_parallel,
    "recurrent": zp.gated_delta_product_recurrent,
    "chunk16": lambda *a, **kw: zp.gated_delta_product_chunk(*a, chunk_size=16, **kw),
}


def inputs(seed, s: Shape, n, dtype=F64, beta_max=2.0, gate=True):
    """q [B, T, H, K]; unit-norm k, v, beta ∈ (0, beta_max) with n micro-steps per token; g ≤ 0 or None."""
    q = randn(seed, s.B, s.T, s.H, s.K, dtype=dtype)
    k = F.normalize(randn(seed + 1, s.B, s.T * n, s.H, s.K, dtype=F64), dim=-1).to(dtype)
    v = randn(seed + 2, s.B, s.T * n, s.H, s.V, dtype=dtype)
    g = -rand(seed + 3, s.B, s.T, s.H, dtype=dtype) if gate else None
    beta = rand(seed + 4, s.B, s.T * n, s.H, high=beta_max, dtype=dtype)
    return q, k, v, g, beta


def cut(x, n, a, b):
    """Tokens a..b of (q, k, v, g, beta): k, v, beta hold n micro-steps per token."""
    q, k, v, g, beta = x
    return q[:, a:b], k[:, a * n:b * n], v[:, a * n:b * n], (None if g is None else g[:, a:b]), beta[:, a * n:b * n]


# ------------------------------------------------------------------------------------------------
# 1. Forms agree
# ------------------------------------------------------------------------------------------------
@given(shape=small, n=householders, gate=st.booleans(), with_state=st.booleans(), L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, n=2, gate=True, with_state=True, L=16)
def test_recurrent_and_chunk_equal_parallel_in_float64(shape, n, gate, with_state, L, seed):
    x = inputs(seed, shape, n, gate=gate)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V) if with_state else None
    dc.assert_recurrent_and_chunk_equal_parallel(zp.gated_delta_product_parallel, zp.gated_delta_product_recurrent,
                                                 zp.gated_delta_product_chunk, x, L, num_householder=n,
                                                 initial_state=S0, output_final_state=True)


def test_half_inputs_accumulate_in_float32_and_return_the_input_dtype():
    q, k, v, g, beta = inputs(5, Shape(1, 20, 2, 8, 8), 2)
    dc.assert_half_inputs_accumulate_in_float32(zp.gated_delta_product_parallel, zp.gated_delta_product_chunk,
                                                (q, k, v, g, beta),
                                                (q.bfloat16(), k.bfloat16(), v.bfloat16(), g.float(), beta.bfloat16()),
                                                num_householder=2)


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo: tests/test_deltaproduct_fast.py (written with fast/deltaproduct.py)
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (zoo chunk vs the parallel definition)
# ------------------------------------------------------------------------------------------------
@settings(max_examples=5)
@given(shape=shapes(max_T=20, max_K=5, max_V=5), n=householders, L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, n=2, L=16)
def test_chunk_gradients_equal_parallel_in_float64(shape, n, L, seed):
    q, k, v, g, beta = inputs(seed, shape, n)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V)
    ins = {m: x.requires_grad_() for m, x in dict(q=q, k=k, v=v, g=g, beta=beta, S0=S0).items()}
    cot = [randn(seed + 6, *q.shape[:3], shape.V), randn(seed + 7, *S0.shape)]
    dc.assert_chunk_gradients_equal_parallel(zp.gated_delta_product_parallel, zp.gated_delta_product_chunk, ins, cot,
                                             L, num_householder=n)


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@given(shape=small, n=householders, t=st.integers(0, 29), seed=seeds)
def test_future_tokens_do_not_change_the_past(shape, n, t, seed):
    t = min(t, shape.T - 1)
    cuts = (1, n, n, 1, n)  # micro-steps per token of (q, k, v, g, beta)
    dc.assert_future_tokens_do_not_change_the_past(FORMS, inputs(seed, shape, n), inputs(seed + 11, shape, n), t,
                                                   cuts, num_householder=n)


# ------------------------------------------------------------------------------------------------
# 5. State carry
# ------------------------------------------------------------------------------------------------
@given(shape=small, n=householders, gate=st.booleans(), split=st.floats(0.0, 1.0), seed=seeds)
def test_two_chained_calls_equal_one_call(shape, n, gate, split, seed):
    assume(shape.T >= 2)
    x = inputs(seed, shape, n, gate=gate)
    m = min(shape.T - 1, max(1, int(split * shape.T)))
    dc.assert_two_chained_calls_equal_one_call(FORMS, x, cut(x, n, 0, m), cut(x, n, m, shape.T), num_householder=n)


LAYER_OPTIONS = [
    dict(),
    dict(num_v_heads=4, use_forget_gate=False, allow_neg_eigval=False, conv_bias=True, use_output_gate=False,
         num_householder=3),
    dict(use_short_conv=False, num_householder=1, expand_v=1.5),
]


@settings(max_examples=6)
@given(T=st.integers(1, 14), t=st.integers(0, 14), form=st.sampled_from(["chunk", "recurrent", "parallel"]),
       opts=st.sampled_from(range(len(LAYER_OPTIONS))), seed=seeds)
def test_prefill_then_decode_equals_forward(T, t, form, opts, seed):
    dc.assert_prefill_then_decode_equals_forward(
        lambda: zp.GatedDeltaProduct(16, head_dim=4, num_heads=2, form=form, **LAYER_OPTIONS[opts]), T, t, seed,
        lambda layer: (2, layer.num_v_heads, 4, layer.head_v_dim))


# ------------------------------------------------------------------------------------------------
# 6. The method's own laws
# ------------------------------------------------------------------------------------------------
@given(shape=small, seed=seeds)
def test_one_householder_step_is_gated_deltanet(shape, seed):
    q, k, v, g, beta = inputs(seed, shape, 1)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V)
    ref = zg.gated_delta_rule_recurrent(q, k, v, g, beta, initial_state=S0, output_final_state=True)
    dc.assert_every_form_gives(FORMS, (q, k, v, g, beta), ref, num_householder=1, initial_state=S0)


@given(shape=small, n=householders, seed=seeds)
def test_it_is_the_gated_delta_rule_over_interleaved_micro_steps(shape, n, seed):
    # Micro-step t·n + j carries k, v, β of (t, j); the gate sits on j = 0, the query on j = n − 1.
    q, k, v, g, beta = inputs(seed, shape, n)
    B, T, H, K = q.shape
    q_m = torch.zeros(B, T, n, H, K, dtype=F64)
    q_m[:, :, -1] = q
    g_m = torch.zeros(B, T, n, H, dtype=F64)
    g_m[:, :, 0] = g
    o_m, S_ref = zg.gated_delta_rule_recurrent(q_m.flatten(1, 2), k, v, g_m.flatten(1, 2), beta,
                                               scale=K ** -0.5, output_final_state=True)
    o, S = zp.gated_delta_product_recurrent(q, k, v, g, beta, num_householder=n, output_final_state=True)
    assert_close(o, o_m[:, n - 1::n], TOL["f64"], "o")
    assert_close(S, S_ref, TOL["f64"], "S")


@given(shape=small, n=householders, seed=seeds)
def test_no_forget_gate_is_a_zero_log_decay(shape, n, seed):
    q, k, v, g, beta = inputs(seed, shape, n)
    for name, op in FORMS.items():
        o, S = op(q, k, v, None, beta, num_householder=n, output_final_state=True)
        o0, S0 = op(q, k, v, torch.zeros_like(g), beta, num_householder=n, output_final_state=True)
        assert_close(o, o0, TOL["f64"], f"{name} o")
        assert_close(S, S0, TOL["f64"], f"{name} S")


@given(shape=small, n=householders, seed=seeds)
def test_beta_zero_leaves_the_state_unchanged(shape, n, seed):
    q, k, v, _, beta = inputs(seed, shape, n, gate=False)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V)
    for name, op in FORMS.items():
        _, S = op(q, k, v, None, torch.zeros_like(beta), num_householder=n, initial_state=S0, output_final_state=True)
        assert torch.equal(S, S0), name


def test_two_reflections_make_a_rotation_one_step_cannot():
    # β = 2 with unit k: I − 2kkᵀ is a reflection. Two per token (n_h = 2) rotate the state by
    # twice the angle between the keys, here 90°. One step I − βkkᵀ fixes every vector ⊥ k, so no
    # single step (any β) is a rotation in 2-D.
    q = torch.eye(2, dtype=F64).view(1, 1, 1, 2, 2)[:, :, :, 0]  # [1, 1, 1, 2]
    c = 2 ** -0.5
    k = torch.tensor([[1.0, 0.0], [c, c]], dtype=F64).view(1, 2, 1, 2)  # keys 45° apart
    S0 = torch.eye(2, dtype=F64).view(1, 1, 2, 2)
    _, S = zp.gated_delta_product_recurrent(q, k, torch.zeros(1, 2, 1, 2, dtype=F64), None,
                                            torch.full((1, 2, 1), 2.0, dtype=F64), num_householder=2,
                                            initial_state=S0, output_final_state=True)
    rot90 = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    assert_close(S[0, 0], rot90, TOL["f64"], "two reflections = a 90° rotation")


# fla's chunk_gated_delta_product reads g.shape unconditionally (fla @ 2189cb0), so its layer's
# chunk mode fails without the forget gate: compare outputs with the gate on.
FLA_OUTPUT_OPTIONS = dict(num_v_heads=4, allow_neg_eigval=False, conv_bias=True, use_output_gate=False,
                          num_householder=3)


@pytest.mark.gpu
@pytest.mark.parametrize("opts", LAYER_OPTIONS, ids=["default", "gva-nogate-3", "noconv-1"])
def test_layer_state_dict_loads_both_ways_with_fla(opts):
    dc.assert_layer_state_dict_loads_both_ways_with_fla(zp.GatedDeltaProduct, "GatedDeltaProduct", opts, head_dim=16)


@pytest.mark.gpu
def test_layer_output_equals_fla():
    # fla 0.6.0 on Hopper asks for Triton >= 3.7.1: skip, saying so.
    dc.assert_layer_output_equals_fla(zp.GatedDeltaProduct, "GatedDeltaProduct", FLA_OUTPUT_OPTIONS,
                                      refused=(RuntimeError, AssertionError), head_dim=16)


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def _bad_cases():
    q, k, v, g, beta = inputs(0, Shape(2, 8, 3, 4, 5), 2)
    S0 = randn(1, 2, 3, 4, 5)
    return [
        ("rank", dict(q=q[0]), ValueError, "q must be [B, T, H, K]"),
        ("k not T·n_h", dict(k=k[:, :15]), ValueError, "k must be [B, T·n_h, H, K]"),
        ("v not T·n_h", dict(v=v[:, :8]), ValueError, "v must be [B, T·n_h, H, V]"),
        ("beta not T·n_h", dict(beta=beta[:, :8]), ValueError, "beta must be [B, T·n_h, H]"),
        ("g per micro-step", dict(g=g.repeat_interleave(2, 1)), ValueError, "g must be [B, T, H]"),
        ("g positive", dict(g=-g + 0.1), ValueError, "must be <= 0"),
        ("n_h zero", dict(num_householder=0), ValueError, "num_householder must be a positive int"),
        ("n_h wrong", dict(num_householder=3), ValueError, "k must be [B, T·n_h, H, K]"),
        ("int dtype", dict(beta=beta.long()), TypeError, "floating-point"),
        ("mixed dtypes", dict(v=v.float()), TypeError, "share one dtype"),
        ("mixed devices", dict(beta=beta.to("meta")), ValueError, "is on"),
        ("state shape", dict(initial_state=S0[:1]), ValueError, "initial_state must be [B, H, K, V]"),
        ("fp16 state", dict(initial_state=S0.half()), TypeError, "float32 or float64"),
        ("chunk not power of two", dict(chunk_size=12), ValueError, "power of two"),
    ], dict(q=q, k=k, v=v, g=g, beta=beta, num_householder=2)


@pytest.mark.parametrize("case", range(len(_bad_cases()[0])), ids=dc.bad_case_ids(_bad_cases()[0]))
def test_bad_inputs_raise_clear_errors(case):
    cases, good = _bad_cases()
    dc.assert_bad_input_raises(cases[case], good, zp.gated_delta_product_chunk,
                               [zp.gated_delta_product_parallel, zp.gated_delta_product_recurrent])


def test_check_decay_false_skips_the_check_and_the_layer_never_runs_it(monkeypatch):
    q, k, v, g, beta = inputs(0, Shape(1, 10, 2, 4, 3), 2)
    dc.assert_check_decay_is_a_switch(
        [zp.gated_delta_product_parallel, zp.gated_delta_product_recurrent, zp.gated_delta_product_chunk],
        dict(q=q, k=k, v=v, g=g, beta=beta), -0.1 * g, zp.gated_delta_product_parallel,
        zp.GatedDeltaProduct(16, head_dim=4, num_heads=2).double(), monkeypatch, zp, TOL["f64"], num_householder=2)


def test_layer_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        zp.GatedDeltaProduct(16, head_dim=4, num_heads=2, num_v_heads=3)
    with pytest.raises(ValueError, match="form must be"):
        zp.GatedDeltaProduct(16, head_dim=4, num_heads=2, form="fused")
    with pytest.raises(ValueError, match=r"\[B, T, C\] with C = 16"):
        zp.GatedDeltaProduct(16, head_dim=4, num_heads=2)(torch.randn(2, 5, 15))


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMS))
def test_forms_compile_fullgraph_with_aot_eager(name):
    x = inputs(0, Shape(2, 9, 2, 4, 3), 2, dtype=torch.float32)
    dc.assert_form_compiles_with_aot_eager(FORMS[name], x, num_householder=2,
                                           initial_state=randn(3, 2, 2, 4, 3, dtype=torch.float32))


def test_layer_compiles_fullgraph_with_aot_eager_forward_and_step():
    dc.assert_layer_compiles_with_aot_eager_forward_and_step(
        lambda: zp.GatedDeltaProduct(16, head_dim=4, num_heads=2, num_v_heads=4),
        randn(0, 2, 11, 16, dtype=torch.float32))


def test_chunk_form_compiles_with_inductor():
    x = inputs(0, Shape(1, 20, 2, 4, 8), 2, dtype=torch.float32)
    dc.assert_chunk_compiles_with_inductor(zp.gated_delta_product_chunk, zp.gated_delta_product_parallel, x,
                                           num_householder=2)
