"""fast/gated_deltanet.py (the Triton gated delta rule) against zoo/gated_deltanet.py, in DESIGN.md's
law order. (tests/test_gated_deltanet.py holds the zoo's own spec; this file the fast mirror's.)

2. fast equals zoo: chunk and recurrent (decode) kernels in fp32 under the interpreter, strong
   and weak decays, with and without an initial state, T = 1, T not a multiple of the chunk, odd
   head dims; fp16/bf16 against the zoo in float64 on a GPU, and against fla's
   chunk_gated_delta_rule where fla imports (and accepts this Triton);
3. gradients agree: q, k, v, g, beta and the initial state through random cotangents on o and
   the final state, chunk op and recurrent op;
4. causality: perturbing tokens after t (gates included) leaves fast outputs up to t bit-identical;
5. state carry: two chained fast calls equal one call; the fast layer (grouped value heads
   included) equals the zoo layer with the same weights, outputs and parameter gradients, and
   decodes like its forward;
6. own law: with g = 0 the fast gated rule equals the fast delta rule;
7. bad inputs: g > 0, g of the wrong shape, plus the common checks;
   on a GPU the default g check makes no host sync before the kernels are queued;
8. torch.compile(fullgraph=True) over the fast ops, forward and backward, and the fast layer.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

import delta_cases as dc
from delta_cases import DEV, F32, TOL32
from strategies import Shape, edge_examples, rand, randn, seeds, tol_for
import zoo.gated_deltanet as zg
import fast.deltanet as fd
import fast.gated_deltanet as fg

F64 = torch.float64
small = dc.fast_shapes(max_T=80)  # B·H ≤ 4, head dims 16 or 32 (odd ones from the pinned examples)


def inputs(seed, s: Shape, dtype=F64, dev="cpu", g_max=1.0):
    """q, unit-norm k, v, log decay g ∈ (−g_max, 0], beta ∈ (0, 1)."""
    q = randn(seed, s.B, s.T, s.H, s.K, dtype=dtype, device=dev)
    k = F.normalize(randn(seed + 1, s.B, s.T, s.H, s.K), dim=-1).to(device=dev, dtype=dtype)
    v = randn(seed + 2, s.B, s.T, s.H, s.V, dtype=dtype, device=dev)
    g = -rand(seed + 3, s.B, s.T, s.H, high=g_max, dtype=dtype, device=dev)
    beta = rand(seed + 4, s.B, s.T, s.H, dtype=dtype, device=dev)
    return q, k, v, g, beta


def state(seed, s: Shape, dtype=F64, dev="cpu"):
    return randn(seed + 5, s.B, s.H, s.K, s.V, dtype=dtype, device=dev)


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6)
@given(shape=small, with_state=st.booleans(), g_max=st.sampled_from([0.05, 1.0, 4.0]), seed=seeds)
@edge_examples(chunk_size=16, with_state=True, g_max=1.0)  # T = 1, 15, 17, 35; K, V = 5, 3 and 7, 7
@example(shape=Shape(1, 65, 2, 16, 16), with_state=False, g_max=4.0, seed=1)  # one past the kernel chunk
@example(shape=Shape(1, 70, 1, 128, 128), with_state=True, g_max=1.0, seed=5)  # K = V = 128 (fp32 tiles: the 16-bit ones are timed)
@example(shape=Shape(1, 70, 1, 256, 256), with_state=True, g_max=1.0, seed=5)  # K = V = 256: one-stage pipelines
def test_fast_chunk_equals_zoo_in_float32(shape, with_state, g_max, seed):
    q, k, v, g, beta = inputs(seed, shape, F32, DEV, g_max)
    S0 = state(seed, shape, F32, DEV) if with_state else None
    kw = dict(initial_state=S0, output_final_state=True)
    o, S = fg.gated_delta_rule_chunk(q, k, v, g, beta, **kw)
    assert o.dtype == q.dtype and S.dtype == F32
    dc.assert_o_S_close((o, S), zg.gated_delta_rule_recurrent(q, k, v, g, beta, **kw), TOL32)


@settings(max_examples=4)
@given(shape=small.filter(lambda s: s.T <= 30), with_state=st.booleans(), seed=seeds)
@edge_examples(chunk_size=16, with_state=True)
def test_fast_recurrent_equals_zoo_in_float32(shape, with_state, seed):
    q, k, v, g, beta = inputs(seed, shape, F32, DEV)
    S0 = state(seed, shape, F32, DEV) if with_state else None
    kw = dict(initial_state=S0, output_final_state=True)
    dc.assert_o_S_close(fg.gated_delta_rule_recurrent(q, k, v, g, beta, **kw),
                        zg.gated_delta_rule_recurrent(q, k, v, g, beta, **kw), TOL32)


HALF_CASES = [(dt, D, T) for dt in (torch.float16, torch.bfloat16) for D, T in ((64, 1), (64, 777), (128, 2000))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T", HALF_CASES)
def test_fast_equals_zoo_float64_in_half_precision_on_gpu(dtype, D, T):
    s = Shape(2, T, 3, D, D)
    q, k, v, g, beta = inputs(7, s, dtype, "cuda", g_max=0.5)
    S0 = state(7, s, F32, "cuda")
    ref = zg.gated_delta_rule_chunk(*(x.double() for x in (q, k, v, g, beta)), initial_state=S0.double(),
                                    output_final_state=True)
    for op in (fg.gated_delta_rule_chunk, fg.gated_delta_rule_recurrent):
        o, S = op(q, k, v, g, beta, initial_state=S0, output_final_state=True)
        assert o.dtype == dtype
        dc.assert_o_S_close((o, S), ref, tol_for(dtype, "cuda"), op.__name__)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_gradients_equal_zoo_float64_in_half_precision_on_gpu(dtype):
    s = Shape(2, 1000, 2, 128, 128)
    q, k, v, g, beta = inputs(8, s, dtype, "cuda", g_max=0.5)
    x = dict(q=q, k=k, v=v, g=g, beta=beta, S0=state(8, s, F32, "cuda"))
    cot = [randn(9, s.B, s.T, s.H, s.V, device="cuda"), randn(10, s.B, s.H, s.K, s.V, device="cuda")]
    dc.assert_half_gradients_equal_zoo_float64(_as_fn(fg.gated_delta_rule_chunk), _as_fn(zg.gated_delta_rule_chunk), x,
                                               cot, dtype)


@pytest.mark.gpu
def test_fast_equals_fla_chunk_gated_delta_rule_on_gpu():
    fla_ops = pytest.importorskip("fla.ops.gated_delta_rule")
    s = Shape(2, 1000, 4, 128, 128)
    q, k, v, g, beta = inputs(5, s, torch.bfloat16, "cuda", g_max=0.5)
    g = g.float()  # fla takes the log decay in fp32
    S0 = state(5, s, F32, "cuda")
    kw = dict(scale=s.K ** -0.5, initial_state=S0, output_final_state=True)
    try:
        o_fla, S_fla = fla_ops.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    except Exception as e:  # fla 0.6.0 refuses its gated kernels on Hopper with Triton < 3.7.1
        pytest.skip(f"fla's chunk_gated_delta_rule refused to run here: {e}")
    ref = zg.gated_delta_rule_chunk(*(x.double() for x in (q, k, v, g, beta)), scale=s.K ** -0.5,
                                    initial_state=S0.double(), output_final_state=True)
    dc.assert_fast_and_fla_as_accurate(fg.gated_delta_rule_chunk(q, k, v, g, beta, **kw), (o_fla, S_fla), ref,
                                       tol_for(torch.bfloat16, "cuda"))


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (random cotangents on o and on the final state)
# ------------------------------------------------------------------------------------------------
def _grad_case(seed, s: Shape, with_state, g_max=1.0, dtype=F32, dev=DEV):
    q, k, v, g, beta = inputs(seed, s, dtype, dev, g_max)
    x = dict(q=q, k=k, v=v, g=g, beta=beta)
    if with_state:
        x["S0"] = state(seed, s, F32 if dtype != F64 else F64, dev)
    cot = [randn(seed + 6, s.B, s.T, s.H, s.V, dtype=dtype, device=dev),
           randn(seed + 7, s.B, s.H, s.K, s.V, device=dev)]
    return x, cot


def _as_fn(op):
    return lambda q, k, v, g, beta, S0=None: op(q, k, v, g, beta, initial_state=S0, output_final_state=True)


def _assert_grads_equal(op, x, cot, tol):
    dc.assert_grads_equal(_as_fn(op), _as_fn(zg.gated_delta_rule_recurrent), x, cot, tol)


@settings(max_examples=4)
@given(shape=small, with_state=st.booleans(), g_max=st.sampled_from([0.05, 1.0, 4.0]), seed=seeds)
@example(shape=Shape(1, 1, 1, 16, 16), with_state=True, g_max=1.0, seed=0)  # T = 1
@example(shape=Shape(2, 67, 1, 16, 32), with_state=True, g_max=1.0, seed=3)  # two chunks, ragged
@example(shape=Shape(1, 33, 2, 5, 3), with_state=False, g_max=0.05, seed=4)  # odd head dims
@example(shape=Shape(1, 70, 1, 128, 128), with_state=True, g_max=1.0, seed=5)  # K = V = 128 (fp32 tiles: the 16-bit ones are timed)
@example(shape=Shape(1, 70, 1, 256, 256), with_state=True, g_max=1.0, seed=5)  # K = V = 256: one-stage pipelines
def test_fast_chunk_gradients_equal_zoo_in_float32(shape, with_state, g_max, seed):
    x, cot = _grad_case(seed, shape, with_state, g_max)
    _assert_grads_equal(fg.gated_delta_rule_chunk, x, cot, TOL32)


def test_fast_recurrent_gradients_equal_zoo_in_float32():
    x, cot = _grad_case(11, Shape(2, 21, 2, 16, 16), True)
    _assert_grads_equal(fg.gated_delta_rule_recurrent, x, cot, TOL32)


def test_fast_gradients_with_only_the_output_or_only_the_state_used():
    x, (do, dS) = _grad_case(12, Shape(1, 40, 2, 16, 16), True)
    _assert_grads_equal(fg.gated_delta_rule_chunk, x, [do, None], TOL32)
    _assert_grads_equal(fg.gated_delta_rule_chunk, x, [None, dS], TOL32)


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [fg.gated_delta_rule_chunk, fg.gated_delta_rule_recurrent])
def test_fast_future_tokens_do_not_change_the_past(op):
    s, t = Shape(1, 70, 2, 16, 16), 40
    x = list(inputs(13, s, F32, DEV))
    x2 = [y.clone() for y in x]
    for y in x2:
        y[:, t + 1:] = y[:, t + 1:] * 0.5 - 0.1 if y.dim() == 3 else y[:, t + 1:].flip(-1) * 2
    o, o2 = op(*x)[0], op(*x2)[0]
    assert torch.equal(o[:, :t + 1], o2[:, :t + 1])
    assert not torch.equal(o[:, t + 1:], o2[:, t + 1:])


# ------------------------------------------------------------------------------------------------
# 5. State carry
# ------------------------------------------------------------------------------------------------
@settings(max_examples=3)
@given(shape=small, split=st.floats(0.0, 1.0), seed=seeds)
def test_fast_chained_calls_equal_one_call(shape, split, seed):
    x = inputs(seed, shape, F32, DEV)
    t = int(split * shape.T)
    dc.assert_fast_chained_calls_equal_one_call(fg.gated_delta_rule_chunk, fg.gated_delta_rule_recurrent, x,
                                                [y[:, :t] for y in x], [y[:, t:] for y in x])


def _layers(seed=0, **kw):
    return dc.same_weight_layers(zg.GatedDeltaNet, fg.GatedDeltaNet, seed, hidden_size=32, head_dim=16, num_heads=2,
                                 expand_v=1, **kw)


@pytest.mark.parametrize("kw", [dict(), dict(num_v_heads=4, use_gate=False, allow_neg_eigval=True)])
def test_fast_layer_equals_zoo_layer_with_the_same_weights(kw):
    dc.assert_fast_layer_equals_zoo_layer(*_layers(**kw), randn(14, 2, 37, 32, dtype=F32, device=DEV), dy_seed=15)


def test_fast_layer_prefill_then_decode_equals_forward():
    dc.assert_fast_layer_decodes_like_forward(_layers(1)[1], randn(16, 2, 9, 32, dtype=F32, device=DEV))


# ------------------------------------------------------------------------------------------------
# 6. The method's own law
# ------------------------------------------------------------------------------------------------
def test_fast_zero_gate_equals_the_fast_delta_rule():
    s = Shape(2, 70, 2, 16, 16)
    q, k, v, g, beta = inputs(17, s, F32, DEV)
    S0 = state(17, s, F32, DEV)
    for gated, plain in ((fg.gated_delta_rule_chunk, fd.delta_rule_chunk),
                         (fg.gated_delta_rule_recurrent, fd.delta_rule_recurrent)):
        dc.assert_o_S_close(gated(q, k, v, torch.zeros_like(g), beta, initial_state=S0, output_final_state=True),
                            plain(q, k, v, beta, initial_state=S0, output_final_state=True), TOL32)


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def test_fast_bad_inputs_raise_clear_errors():
    s = Shape(1, 8, 1, 16, 16)
    q, k, v, g, beta = inputs(0, s, F32, DEV)
    with pytest.raises(ValueError, match="must be <= 0"):
        fg.gated_delta_rule_chunk(q, k, v, -g, beta)
    with pytest.raises(ValueError, match=r"g must be \[B, T, H\]"):
        fg.gated_delta_rule_recurrent(q, k, v, g[..., None], beta)
    with pytest.raises(ValueError, match=r"beta must be \[B, T, H\]"):
        fg.gated_delta_rule_chunk(q, k, v, g, beta[:, :-1])
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        fg.gated_delta_rule_chunk(*(x.double() for x in (q, k, v, g, beta)))


def test_fast_check_decay_false_computes_growth_as_the_zoo_and_the_fast_layer_never_checks(monkeypatch):
    s = Shape(1, 70, 2, 16, 16)  # two kernel chunks
    q, k, v, g, beta = inputs(22, s, F32, DEV)
    zoo_chunk = lambda **x: zg.gated_delta_rule_chunk(**{n: t.double() for n, t in x.items() if torch.is_tensor(t)},
                                                       check_decay=x["check_decay"])
    dc.assert_check_decay_is_a_switch([fg.gated_delta_rule_chunk, fg.gated_delta_rule_recurrent],
                                      dict(q=q, k=k, v=v, g=g, beta=beta), -0.02 * g, zoo_chunk,
                                      _layers()[1], monkeypatch, zg, TOL32)


@pytest.mark.gpu
def test_fast_default_check_makes_no_host_sync_on_gpu():
    q, k, v, g, beta = inputs(23, Shape(2, 300, 3, 64, 64), torch.bfloat16, "cuda")
    dc.assert_default_check_makes_no_host_sync_on_gpu([fg.gated_delta_rule_chunk, fg.gated_delta_rule_recurrent],
                                                      dict(q=q, k=k, v=v, g=g, beta=beta), -0.02 * g)


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True) over the custom ops
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [fg.gated_delta_rule_chunk, fg.gated_delta_rule_recurrent])
def test_fast_ops_compile_with_fullgraph_forward_and_backward(op):
    dc.assert_compiled_grads_equal_eager(_as_fn(op), *_grad_case(18, Shape(1, 20, 2, 16, 16), True))


def test_fast_layer_compiles_with_fullgraph():
    dc.assert_fast_layer_compiles(_layers(2)[1], randn(19, 1, 12, 32, dtype=F32, device=DEV))
