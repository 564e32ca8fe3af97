"""Gated DeltaNet (the gated delta rule): the spec, in DESIGN.md's law order.

1. forms agree: recurrent and chunk equal the parallel definition in float64 (o and final state),
   from an initial state or not, for gentle and for very strong decays (e^{Γ} underflowing to 0);
2. fast equals zoo: tests/test_gated_deltanet_fast.py (with fast/gated_deltanet.py);
3. gradients agree: chunk and parallel, q, k, v, g, beta and the initial state;
4. causality: perturbing tokens after t leaves outputs up to t bit-identical;
5. state carry: two chained calls equal one call; the layer's prefill then decode equals forward,
   grouped value heads included;
6. own laws: g = 0 is the plain delta rule (zoo/deltanet.py); β = 0 leaves only the decay,
   S_T = e^{Σg} S_0; the layer loads fla's weights and gives fla's output (GPU, fla installed);
7. bad inputs raise clear errors (g or beta of the wrong shape, g > 0, fp16 state, ...);
8. torch.compile(fullgraph=True): every form and the layer (aot_eager), the chunk form with inductor.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import delta_cases as dc
from strategies import TOL, Shape, assert_close, chunk_sizes, edge_examples, randn, rand, seeds, shapes
import zoo.deltanet as zd
import zoo.gated_deltanet as zg

F64 = torch.float64
small = shapes(max_T=70, max_K=8, max_V=8)
FORMS = {
    "parallel": zg.gated_delta_rule_parallel,
    "recurrent": zg.gated_delta_rule_recurrent,
    "chunk16": lambda *a, **kw: zg.gated_delta_rule_chunk(*a, chunk_size=16, **kw),
}


def inputs(seed, s: Shape, dtype=F64, beta_max=1.0, g_scale=1.0):
    """q, unit-norm k (as the layer makes them), v, log decay g ∈ (−g_scale, 0], beta ∈ (0, beta_max)."""
    q = randn(seed, s.B, s.T, s.H, s.K, dtype=dtype)
    k = F.normalize(randn(seed + 1, s.B, s.T, s.H, s.K, dtype=F64), dim=-1).to(dtype)
    v = randn(seed + 2, s.B, s.T, s.H, s.V, dtype=dtype)
    g = -rand(seed + 3, s.B, s.T, s.H, high=g_scale, dtype=dtype)
    beta = rand(seed + 4, s.B, s.T, s.H, high=beta_max, dtype=dtype)
    return q, k, v, g, beta


# ------------------------------------------------------------------------------------------------
# 1. Forms agree
# ------------------------------------------------------------------------------------------------
@given(shape=small, with_state=st.booleans(), neg=st.booleans(), g_scale=st.sampled_from([0.1, 2.0, 300.0]),
       L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, with_state=True, neg=True, g_scale=2.0, L=16)
def test_recurrent_and_chunk_equal_parallel_in_float64(shape, with_state, neg, g_scale, L, seed):
    q, k, v, g, beta = inputs(seed, shape, beta_max=2.0 if neg else 1.0, g_scale=g_scale)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V) if with_state else None
    dc.assert_recurrent_and_chunk_equal_parallel(zg.gated_delta_rule_parallel, zg.gated_delta_rule_recurrent,
                                                 zg.gated_delta_rule_chunk, (q, k, v, g, beta), L, initial_state=S0,
                                                 output_final_state=True)


def test_half_inputs_accumulate_in_float32_and_return_the_input_dtype():
    q, k, v, g, beta = inputs(5, Shape(1, 40, 2, 8, 8))
    dc.assert_half_inputs_accumulate_in_float32(zg.gated_delta_rule_parallel, zg.gated_delta_rule_chunk,
                                                (q, k, v, g, beta),
                                                (q.bfloat16(), k.bfloat16(), v.bfloat16(), g.float(), beta.bfloat16()))


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo: tests/test_gated_deltanet_fast.py (written with fast/gated_deltanet.py)
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (zoo chunk vs the parallel definition)
# ------------------------------------------------------------------------------------------------
@settings(max_examples=5)
@given(shape=shapes(max_T=40, max_K=6, max_V=6), L=chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, L=16)
def test_chunk_gradients_equal_parallel_in_float64(shape, L, seed):
    q, k, v, g, beta = inputs(seed, shape)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V)
    ins = {n: x.requires_grad_() for n, x in dict(q=q, k=k, v=v, g=g, beta=beta, S0=S0).items()}
    cot = [randn(seed + 6, *v.shape), randn(seed + 7, *S0.shape)]
    dc.assert_chunk_gradients_equal_parallel(zg.gated_delta_rule_parallel, zg.gated_delta_rule_chunk, ins, cot, L)


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@given(shape=small, t=st.integers(0, 69), seed=seeds)
def test_future_tokens_do_not_change_the_past(shape, t, seed):
    t = min(t, shape.T - 1)
    dc.assert_future_tokens_do_not_change_the_past(FORMS, inputs(seed, shape), inputs(seed + 11, shape), t)


# ------------------------------------------------------------------------------------------------
# 5. State carry
# ------------------------------------------------------------------------------------------------
@given(shape=small, split=st.floats(0.0, 1.0), seed=seeds)
def test_two_chained_calls_equal_one_call(shape, split, seed):
    assume(shape.T >= 2)
    x = inputs(seed, shape)
    n = min(shape.T - 1, max(1, int(split * shape.T)))
    dc.assert_two_chained_calls_equal_one_call(FORMS, x, [t[:, :n] for t in x], [t[:, n:] for t in x])


LAYER_OPTIONS = [
    dict(),
    dict(num_v_heads=4, allow_neg_eigval=True, conv_bias=True, use_gate=False),
    dict(use_short_conv=False, expand_v=1.5),
]


@settings(max_examples=6)
@given(T=st.integers(1, 20), t=st.integers(0, 20), form=st.sampled_from(["chunk", "recurrent", "parallel"]),
       opts=st.sampled_from(range(len(LAYER_OPTIONS))), seed=seeds)
def test_prefill_then_decode_equals_forward(T, t, form, opts, seed):
    dc.assert_prefill_then_decode_equals_forward(
        lambda: zg.GatedDeltaNet(16, head_dim=4, num_heads=2, form=form, **LAYER_OPTIONS[opts]), T, t, seed,
        lambda layer: (2, layer.num_v_heads, 4, layer.head_v_dim))


def test_grouped_value_heads_share_query_and_key_heads():
    # num_v_heads = 4 over num_heads = 2: value heads 0, 1 read q/k head 0 and 2, 3 read head 1.
    torch.manual_seed(0)
    layer = zg.GatedDeltaNet(16, head_dim=4, num_heads=2, num_v_heads=4).double()
    seen = {}
    layer.chunk_op = lambda q, k, *a, **kw: (seen.update(q=q, k=k), zg.gated_delta_rule_chunk(q, k, *a, **kw))[1]
    layer(randn(0, 1, 5, 16))
    assert seen["q"].shape == (1, 5, 4, 4)
    assert torch.equal(seen["q"][:, :, 0], seen["q"][:, :, 1]) and torch.equal(seen["k"][:, :, 2], seen["k"][:, :, 3])
    assert not torch.equal(seen["q"][:, :, 1], seen["q"][:, :, 2])


# ------------------------------------------------------------------------------------------------
# 6. The method's own laws
# ------------------------------------------------------------------------------------------------
@given(shape=small, seed=seeds)
def test_zero_log_decay_is_the_plain_delta_rule(shape, seed):
    q, k, v, g, beta = inputs(seed, shape)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V)
    ref = zd.delta_rule_parallel(q, k, v, beta, initial_state=S0, output_final_state=True)
    dc.assert_every_form_gives(FORMS, (q, k, v, torch.zeros_like(g), beta), ref, initial_state=S0)


@given(shape=small, seed=seeds)
def test_beta_zero_leaves_only_the_decay(shape, seed):
    q, k, v, g, beta = inputs(seed, shape)
    S0 = randn(seed + 5, shape.B, shape.H, shape.K, shape.V)
    decay = g.sum(1).exp()[..., None, None]  # e^{Σ_t g_t}  [B, H, 1, 1]
    for name, op in FORMS.items():
        _, S = op(q, k, v, g, torch.zeros_like(beta), initial_state=S0, output_final_state=True)
        assert_close(S, decay * S0, TOL["f64"], name)


@pytest.mark.gpu
@pytest.mark.parametrize("opts", LAYER_OPTIONS, ids=["default", "gva-negeig", "noconv-expandv"])
def test_layer_state_dict_loads_both_ways_with_fla(opts):
    dc.assert_layer_state_dict_loads_both_ways_with_fla(zg.GatedDeltaNet, "GatedDeltaNet", opts, head_dim=16)


@pytest.mark.gpu
def test_layer_output_equals_fla():
    # fla 0.6.0 refuses its gated kernels on Hopper under Triton < 3.7.1: skip, saying so.
    dc.assert_layer_output_equals_fla(zg.GatedDeltaNet, "GatedDeltaNet", LAYER_OPTIONS[1],
                                      refused=(RuntimeError, AssertionError, ImportError), head_dim=16)


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def _bad_cases():
    q, k, v, g, beta = inputs(0, Shape(2, 8, 3, 4, 5))
    S0 = randn(1, 2, 3, 4, 5)
    return [
        ("rank", dict(q=q[0]), ValueError, "q must be [B, T, H, K]"),
        ("k shape", dict(k=k[..., :3]), ValueError, "k must be [B, T, H, K]"),
        ("T mismatch", dict(v=v[:, :5]), ValueError, "v must be [B, T, H, V]"),
        ("g shape", dict(g=g[..., None]), ValueError, "g must be [B, T, H]"),
        ("g per head dim", dict(g=g[..., None].expand(2, 8, 3, 4)), ValueError, "g must be [B, T, H]"),
        ("g positive", dict(g=-g + 0.1), ValueError, "must be <= 0"),
        ("g not a tensor", dict(g=0.0), TypeError, "g must be a tensor"),
        ("beta shape", dict(beta=beta[:, :7]), ValueError, "beta must be [B, T, H]"),
        ("int dtype", dict(g=g.long()), TypeError, "floating-point"),
        ("mixed dtypes", dict(k=k.float()), TypeError, "share one dtype"),
        ("mixed devices", dict(g=g.to("meta")), ValueError, "is on"),
        ("state shape", dict(initial_state=S0[..., :4]), ValueError, "initial_state must be [B, H, K, V]"),
        ("fp16 state", dict(initial_state=S0.half()), TypeError, "float32 or float64"),
        ("chunk not power of two", dict(chunk_size=24), ValueError, "power of two"),
    ], dict(q=q, k=k, v=v, g=g, beta=beta)


@pytest.mark.parametrize("case", range(len(_bad_cases()[0])), ids=dc.bad_case_ids(_bad_cases()[0]))
def test_bad_inputs_raise_clear_errors(case):
    cases, good = _bad_cases()
    dc.assert_bad_input_raises(cases[case], good, zg.gated_delta_rule_chunk,
                               [zg.gated_delta_rule_parallel, zg.gated_delta_rule_recurrent])


def test_check_decay_false_skips_the_check_and_the_layer_never_runs_it(monkeypatch):
    q, k, v, g, beta = inputs(0, Shape(1, 20, 2, 4, 3))
    dc.assert_check_decay_is_a_switch(
        [zg.gated_delta_rule_parallel, zg.gated_delta_rule_recurrent, zg.gated_delta_rule_chunk],
        dict(q=q, k=k, v=v, g=g, beta=beta), -0.1 * g, zg.gated_delta_rule_parallel,
        zg.GatedDeltaNet(16, head_dim=4, num_heads=2).double(), monkeypatch, zg, TOL["f64"])


def test_nan_inputs_give_nan_outputs_not_silence():
    q, k, v, g, beta = inputs(0, Shape(1, 20, 1, 4, 4))
    g[0, 3, 0] = float("nan")
    dc.assert_nan_reaches_every_later_output(FORMS, (q, k, v, g, beta))


def test_layer_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        zg.GatedDeltaNet(16, head_dim=4, num_heads=2, num_v_heads=3)
    with pytest.raises(ValueError, match="must be an integer"):
        zg.GatedDeltaNet(16, head_dim=3, num_heads=2, expand_v=0.5)
    with pytest.raises(ValueError, match="form must be"):
        zg.GatedDeltaNet(16, head_dim=4, num_heads=2, form="fused")
    with pytest.raises(ValueError, match=r"\[B, T, C\] with C = 16"):
        zg.GatedDeltaNet(16, head_dim=4, num_heads=2)(torch.randn(2, 5, 15))


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMS))
def test_forms_compile_fullgraph_with_aot_eager(name):
    x = inputs(0, Shape(2, 19, 2, 4, 3), dtype=torch.float32)
    dc.assert_form_compiles_with_aot_eager(FORMS[name], x, initial_state=randn(3, 2, 2, 4, 3, dtype=torch.float32))


def test_layer_compiles_fullgraph_with_aot_eager_forward_and_step():
    dc.assert_layer_compiles_with_aot_eager_forward_and_step(
        lambda: zg.GatedDeltaNet(16, head_dim=4, num_heads=2, num_v_heads=4), randn(0, 2, 19, 16, dtype=torch.float32))


def test_chunk_form_compiles_with_inductor():
    x = inputs(0, Shape(1, 40, 2, 4, 8), dtype=torch.float32)
    dc.assert_chunk_compiles_with_inductor(zg.gated_delta_rule_chunk, zg.gated_delta_rule_parallel, x)
