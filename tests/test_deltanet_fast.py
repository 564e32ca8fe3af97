"""fast/deltanet.py (the Triton delta rule) against zoo/deltanet.py, in DESIGN.md's law order.

(tests/test_deltanet.py holds the zoo's own spec; this file holds the fast mirror's.)
2. fast equals zoo: the chunk and the recurrent (decode) kernels in fp32 under the interpreter,
   from an initial state or not, β ∈ (0, 1) or (0, 2), T = 1, T not a multiple of the chunk,
   odd head dims; fp16/bf16 against the zoo in float64 on a GPU, and against fla's
   chunk_delta_rule where fla imports;
3. gradients agree: q, k, v, beta and the initial state through random cotangents on o and on the
   final state, for the chunk op and for the recurrent op (whose gradient is the chunk backward);
4. causality: perturbing tokens after t leaves the fast outputs up to t bit-identical;
5. state carry: two chained fast calls equal one call; the fast layer equals the zoo layer with
   the same weights (outputs and every parameter's gradient), and decodes like its forward;
6. own law: β = 0 leaves the state unchanged, in the kernels too;
7. bad inputs raise clear errors (CPU without the interpreter, float64, head dims over 256, the
   zoo's shape checks);
8. torch.compile(fullgraph=True) over the fast ops (custom ops), forward and backward.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

import delta_cases as dc
from delta_cases import DEV, F32, TOL32
from strategies import (Shape, assert_close, edge_examples, grads, has_cuda, rand, randn, run_aot_script, seeds,
                        tol_for)
import zoo.deltanet as zd
import fast.deltanet as fd

F64 = torch.float64
small = dc.fast_shapes(max_T=80)  # B·H ≤ 4, head dims 16 or 32 (odd ones from the pinned examples)


def inputs(seed, s: Shape, dtype=F64, dev="cpu", beta_max=1.0):
    """q, unit-norm k (as the layer makes them), v, beta ∈ (0, beta_max)."""
    q = randn(seed, s.B, s.T, s.H, s.K, dtype=dtype, device=dev)
    k = F.normalize(randn(seed + 1, s.B, s.T, s.H, s.K), dim=-1).to(device=dev, dtype=dtype)
    v = randn(seed + 2, s.B, s.T, s.H, s.V, dtype=dtype, device=dev)
    beta = rand(seed + 3, s.B, s.T, s.H, high=beta_max, dtype=dtype, device=dev)
    return q, k, v, beta


def state(seed, s: Shape, dtype=F64, dev="cpu"):
    return randn(seed + 4, s.B, s.H, s.K, s.V, dtype=dtype, device=dev)


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6)
@given(shape=small, with_state=st.booleans(), neg=st.booleans(), seed=seeds)
@edge_examples(chunk_size=16, with_state=True, neg=False)  # T = 1, 15, 17, 35; K, V = 5, 3 and 7, 7
@example(shape=Shape(1, 65, 2, 16, 16), with_state=False, neg=True, seed=1)  # one past the kernel chunk
@example(shape=Shape(1, 70, 1, 128, 128), with_state=True, neg=False, seed=5)  # K = V = 128 (fp32 tiles: the 16-bit ones are timed)
@example(shape=Shape(1, 70, 1, 256, 256), with_state=True, neg=False, seed=5)  # K = V = 256: one-stage pipelines
def test_fast_chunk_equals_zoo_in_float32(shape, with_state, neg, seed):
    q, k, v, beta = inputs(seed, shape, F32, DEV, beta_max=2.0 if neg else 1.0)
    S0 = state(seed, shape, F32, DEV) if with_state else None
    o, S = fd.delta_rule_chunk(q, k, v, beta, initial_state=S0, output_final_state=True)
    assert o.dtype == q.dtype and S.dtype == F32
    dc.assert_o_S_close((o, S), zd.delta_rule_recurrent(q, k, v, beta, initial_state=S0, output_final_state=True),
                        TOL32)


@settings(max_examples=4)
@given(shape=small.filter(lambda s: s.T <= 30), with_state=st.booleans(), seed=seeds)
@edge_examples(chunk_size=16, with_state=True)
def test_fast_recurrent_equals_zoo_in_float32(shape, with_state, seed):
    q, k, v, beta = inputs(seed, shape, F32, DEV)
    S0 = state(seed, shape, F32, DEV) if with_state else None
    kw = dict(initial_state=S0, output_final_state=True)
    dc.assert_o_S_close(fd.delta_rule_recurrent(q, k, v, beta, **kw), zd.delta_rule_recurrent(q, k, v, beta, **kw),
                        TOL32)


def test_fast_returns_no_state_unless_asked_and_honours_scale():
    s = Shape(1, 20, 2, 16, 16)
    q, k, v, beta = inputs(0, s, F32, DEV)
    for op in (fd.delta_rule_chunk, fd.delta_rule_recurrent):
        o, S = op(q, k, v, beta, scale=0.3)
        assert S is None
        assert_close(o, zd.delta_rule_recurrent(q, k, v, beta, scale=0.3)[0], TOL32, op.__name__)


HALF_CASES = [(dt, D, T) for dt in (torch.float16, torch.bfloat16)
              for D, T in ((64, 1), (64, 777), (128, 2000), (32, 300), (256, 200))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,T", HALF_CASES)
def test_fast_equals_zoo_float64_in_half_precision_on_gpu(dtype, D, T):
    s = Shape(2, T, 3, D, D)
    q, k, v, beta = inputs(7, s, dtype, "cuda")
    S0 = state(7, s, F32, "cuda")
    kw = dict(initial_state=S0, output_final_state=True)
    ref = zd.delta_rule_chunk(*(x.double() for x in (q, k, v, beta)), initial_state=S0.double(),
                              output_final_state=True)
    tol = tol_for(dtype, "cuda")
    o, S = fd.delta_rule_chunk(q, k, v, beta, **kw)
    assert o.dtype == dtype
    dc.assert_o_S_close((o, S), ref, tol, "chunk")
    dc.assert_o_S_close(fd.delta_rule_recurrent(q, k, v, beta, **kw), ref, tol, "recurrent")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D,T", [(128, 1000), (256, 300)])  # the timed tiles; one-stage pipelines
def test_fast_gradients_equal_zoo_float64_in_half_precision_on_gpu(dtype, D, T):
    s = Shape(2, T, 2, D, D)
    q, k, v, beta = inputs(8, s, dtype, "cuda")
    S0 = state(8, s, F32, "cuda")
    cot = [randn(9, s.B, s.T, s.H, s.V, device="cuda"), randn(10, s.B, s.H, s.K, s.V, device="cuda")]
    x = dict(q=q, k=k, v=v, beta=beta, S0=S0)
    dc.assert_half_gradients_equal_zoo_float64(_as_fn(fd.delta_rule_chunk), _as_fn(zd.delta_rule_chunk), x, cot, dtype)


@pytest.mark.gpu
def test_fast_equals_fla_chunk_delta_rule_on_gpu():
    fla_ops = pytest.importorskip("fla.ops.delta_rule")
    s = Shape(2, 1000, 4, 128, 128)
    q, k, v, beta = inputs(5, s, torch.bfloat16, "cuda")
    S0 = state(5, s, F32, "cuda")
    kw = dict(scale=s.K ** -0.5, initial_state=S0, output_final_state=True)
    o_fla, S_fla = fla_ops.chunk_delta_rule(q, k, v, beta, **kw)
    ref = zd.delta_rule_chunk(*(x.double() for x in (q, k, v, beta)), scale=s.K ** -0.5, initial_state=S0.double(),
                              output_final_state=True)
    dc.assert_fast_and_fla_as_accurate(fd.delta_rule_chunk(q, k, v, beta, **kw), (o_fla, S_fla), ref,
                                       tol_for(torch.bfloat16, "cuda"))


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (random cotangents on o and on the final state)
# ------------------------------------------------------------------------------------------------
def _grad_case(seed, s: Shape, with_state, neg=False, dtype=F32, dev=DEV):
    q, k, v, beta = inputs(seed, s, dtype, dev, beta_max=2.0 if neg else 1.0)
    x = dict(q=q, k=k, v=v, beta=beta)
    if with_state:
        x["S0"] = state(seed, s, F32 if dtype != F64 else F64, dev)
    cot = [randn(seed + 5, s.B, s.T, s.H, s.V, dtype=dtype, device=dev),
           randn(seed + 6, s.B, s.H, s.K, s.V, device=dev)]
    return x, cot


def _as_fn(op):
    return lambda q, k, v, beta, S0=None: op(q, k, v, beta, initial_state=S0, output_final_state=True)


def _assert_grads_equal(op, x, cot, tol):
    dc.assert_grads_equal(_as_fn(op), _as_fn(zd.delta_rule_recurrent), x, cot, tol)


@settings(max_examples=4)
@given(shape=small, with_state=st.booleans(), neg=st.booleans(), seed=seeds)
@example(shape=Shape(1, 1, 1, 16, 16), with_state=True, neg=False, seed=0)  # T = 1
@example(shape=Shape(2, 67, 1, 16, 32), with_state=True, neg=True, seed=3)  # two chunks, ragged
@example(shape=Shape(1, 33, 2, 5, 3), with_state=False, neg=False, seed=4)  # odd head dims
@example(shape=Shape(1, 70, 1, 128, 128), with_state=True, neg=True, seed=5)  # K = V = 128 (fp32 tiles: the 16-bit ones are timed)
@example(shape=Shape(1, 70, 1, 256, 256), with_state=True, neg=True, seed=5)  # K = V = 256: one-stage pipelines
def test_fast_chunk_gradients_equal_zoo_in_float32(shape, with_state, neg, seed):
    x, cot = _grad_case(seed, shape, with_state, neg)
    _assert_grads_equal(fd.delta_rule_chunk, x, cot, TOL32)


def test_fast_recurrent_gradients_equal_zoo_in_float32():
    x, cot = _grad_case(11, Shape(2, 21, 2, 16, 16), True)
    _assert_grads_equal(fd.delta_rule_recurrent, x, cot, TOL32)


def test_fast_gradients_with_only_the_output_or_only_the_state_used():
    s = Shape(1, 40, 2, 16, 16)
    x, (do, dS) = _grad_case(12, s, True)
    _assert_grads_equal(fd.delta_rule_chunk, x, [do, None], TOL32)
    _assert_grads_equal(fd.delta_rule_chunk, x, [None, dS], TOL32)


@settings(max_examples=4)
@given(shape=small, nh=st.sampled_from([1, 2, 3]), gated=st.booleans(), with_state=st.booleans(),
       used=st.sampled_from(["o", "S", "both"]), seed=seeds)
@example(shape=Shape(2, 67, 1, 16, 32), nh=2, gated=True, with_state=True, used="both", seed=3)  # ragged, n_h 2
@example(shape=Shape(1, 30, 2, 16, 16), nh=3, gated=True, with_state=False, used="S", seed=4)  # interleaved
def test_kept_intermediates_give_the_gradients_of_recomputed_ones_bit_for_bit(shape, nh, gated, with_state, used,
                                                                             seed):
    # SAVE_INTERMEDIATES: the backward reads W, R, X, Γ, h and V_new from the forward instead of
    # recomputing them by the same kernels, so every gradient is the same to the bit, whichever
    # outputs the loss reaches (those it does not reach get no cotangent: none is filled with zeros)
    import fast.deltaproduct as fp
    q = randn(seed, shape.B, shape.T, shape.H, shape.K, dtype=F32, device=DEV)
    k = F.normalize(randn(seed + 1, shape.B, shape.T * nh, shape.H, shape.K, dtype=F32, device=DEV), dim=-1)
    v = randn(seed + 2, shape.B, shape.T * nh, shape.H, shape.V, dtype=F32, device=DEV)
    beta = rand(seed + 3, shape.B, shape.T * nh, shape.H, high=2.0, dtype=F32, device=DEV)
    x = dict(q=q, k=k, v=v, beta=beta)
    if gated:
        x["g"] = -rand(seed + 4, shape.B, shape.T, shape.H, dtype=F32, device=DEV)
    if with_state:
        x["S0"] = state(seed, shape, F32, DEV)
    cot = [randn(seed + 5, shape.B, shape.T, shape.H, shape.V, dtype=F32, device=DEV),
           randn(seed + 6, shape.B, shape.H, shape.K, shape.V, device=DEV)]
    cot = {"o": [cot[0], None], "S": [None, cot[1]], "both": cot}[used]
    x = {n: t.requires_grad_() for n, t in x.items()}
    fn = lambda q, k, v, beta, g=None, S0=None: fp.gated_delta_product_chunk(  # noqa: E731
        q, k, v, g, beta, num_householder=nh, initial_state=S0, output_final_state=True)
    got, default = {}, fd.SAVE_INTERMEDIATES
    try:
        for keep in (True, False):
            fd.SAVE_INTERMEDIATES = keep
            got[keep] = grads(fn, x, cot)
    finally:
        fd.SAVE_INTERMEDIATES = default
    for n in x:
        a, b = got[True][n], got[False][n]
        assert (a is None and b is None) or torch.equal(a, b), n


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [fd.delta_rule_chunk, fd.delta_rule_recurrent])
def test_fast_future_tokens_do_not_change_the_past(op):
    s, t = Shape(1, 70, 2, 16, 16), 40
    q, k, v, beta = inputs(13, s, F32, DEV)
    q2, k2, v2, beta2 = (x.clone() for x in (q, k, v, beta))
    q2[:, t + 1:], v2[:, t + 1:] = q2[:, t + 1:] + 1, v2[:, t + 1:] * 3
    k2[:, t + 1:], beta2[:, t + 1:] = k2[:, t + 1:].flip(-1), 1 - beta2[:, t + 1:]
    o, o2 = op(q, k, v, beta)[0], op(q2, k2, v2, beta2)[0]
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
    dc.assert_fast_chained_calls_equal_one_call(fd.delta_rule_chunk, fd.delta_rule_recurrent, x,
                                                [y[:, :t] for y in x], [y[:, t:] for y in x])


def _layers(seed=0, **kw):
    return dc.same_weight_layers(zd.DeltaNet, fd.DeltaNet, seed, hidden_size=32, num_heads=2, **kw)


@pytest.mark.parametrize("kw", [dict(), dict(use_gate=True, allow_neg_eigval=True, qk_activation="elu")])
def test_fast_layer_equals_zoo_layer_with_the_same_weights(kw):
    dc.assert_fast_layer_equals_zoo_layer(*_layers(**kw), randn(14, 2, 37, 32, dtype=F32, device=DEV), dy_seed=15)


def test_fast_layer_prefill_then_decode_equals_forward():
    dc.assert_fast_layer_decodes_like_forward(_layers(1)[1], randn(16, 2, 9, 32, dtype=F32, device=DEV))


# ------------------------------------------------------------------------------------------------
# 6. The method's own law
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [fd.delta_rule_chunk, fd.delta_rule_recurrent])
def test_fast_beta_zero_leaves_the_state_unchanged(op):
    s = Shape(2, 70, 2, 16, 16)
    q, k, v, _ = inputs(17, s, F32, DEV)
    S0 = state(17, s, F32, DEV)
    o, S = op(q, k, v, torch.zeros_like(q[..., 0]), initial_state=S0, output_final_state=True)
    assert torch.equal(S, S0)
    assert_close(o, torch.einsum('bthk,bhkv->bthv', q * s.K ** -0.5, S0), TOL32, "o = sQ S0")


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def test_fast_bad_inputs_raise_clear_errors(monkeypatch):
    s = Shape(1, 8, 1, 16, 16)
    q, k, v, beta = inputs(0, s, F32, DEV)
    with pytest.raises(ValueError, match=r"beta must be \[B, T, H\]"):
        fd.delta_rule_chunk(q, k, v, beta[:, :-1])
    with pytest.raises(ValueError, match=r"k must be \[B, T, H, K\]"):
        fd.delta_rule_recurrent(q, k[..., :8], v, beta)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        fd.delta_rule_chunk(*(x.double() for x in (q, k, v, beta)))
    with pytest.raises(ValueError, match="K, V <= 256"):
        big = Shape(1, 2, 1, 272, 16)
        fd.delta_rule_chunk(*inputs(0, big, F32, DEV))
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        fd.delta_rule_chunk(q, k, v, beta, chunk_size=48)
    with pytest.raises(TypeError, match="initial_state must be float32 or float64"):
        fd.delta_rule_chunk(q, k, v, beta, initial_state=state(0, s, torch.float16, DEV))
    monkeypatch.setattr(fd, "INTERPRET", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fd.delta_rule_chunk(*(x.cpu() for x in (q, k, v, beta)))


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True) over the custom ops
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [fd.delta_rule_chunk, fd.delta_rule_recurrent])
def test_fast_ops_compile_with_fullgraph_forward_and_backward(op):
    s = Shape(1, 20, 2, 16, 16)
    dc.assert_compiled_grads_equal_eager(_as_fn(op), *_grad_case(18, s, True))


def test_fast_layer_compiles_with_fullgraph():
    dc.assert_fast_layer_compiles(_layers(2)[1], randn(19, 1, 12, 32, dtype=F32, device=DEV))


# ------------------------------------------------------------------------------------------------
# The kernels as ptxas builds them for an H100 (on a CPU: Triton's bundled ptxas)
# ------------------------------------------------------------------------------------------------
AOT_SCRIPT = r"""
import json
import torch
import aot
import fast.deltanet as fd

# As the JIT compiles the chunk kernels at H = 16 with the module's tiles (fd._tiles): 16-byte-aligned
# pointers, the fp32 buffers typed as such, the initial state and dht given (the longer kernels).
# Spills at the timed size (bf16, K = V = 128); shared memory at every size the tile rule treats apart.
types = dict(T="i32", scale="fp32", STORE_X="i32", X="*fp32", gam="*fp32", dgam="*fp32", ht="*fp32", h0="*fp32",
             dht="*fp32", dh0="*fp32")
cfg = lambda c: (c["num_warps"], c["num_stages"])


def kernels(K, dtype, G):
    t = fd._tiles(K, K, dtype)
    dt = {torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    base = dict(H=16, K=K, V=K, BT=fd.CHUNK, PREC=fd._precision(dtype), NH=1, USE_G=G)
    make = lambda kernel, c, **kw: aot.compile_for_h100(kernel, types, dict(base, **kw), *cfg(t[c]), default=dt)
    state = lambda c, **kw: make(fd._chunk_state_fwd_kernel, c, BK=t["BK"], BV=t[c]["BV"], USE_H0=True, **kw)
    return dict(wy=make(fd._chunk_wy_fwd_kernel, "wy", BC=t["wy"]["BV"]),
                state_o=state("state_fwd", COMPUTE_O=True, STORE_H=False),
                state_kept=state("state_fwd", COMPUTE_O=True, STORE_H=True),
                state_rec=state("state_rec", COMPUTE_O=False, STORE_H=True),
                state_bwd=make(fd._chunk_state_bwd_kernel, "state_bwd", BK=t["BK"], BV=t["state_bwd"]["BV"], USE_DHT=True),
                dqkw=make(fd._chunk_bwd_dqkw_kernel, "dqkw", BKS=t["BKS"], BV=t["dqkw"]["BV"]),
                wy_bwd=make(fd._chunk_wy_bwd_kernel, "wy_bwd", BC=t["wy_bwd"]["BV"], NK=K // t["BKS"]))


out = dict(spills={}, shared={})
for G, K, dtype in ((False, 128, torch.bfloat16), (True, 128, torch.bfloat16), (True, 128, torch.float32),
                    (True, 256, torch.bfloat16), (True, 256, torch.float32)):  # the gated kernels load more
    built = kernels(K, dtype, G)
    out["shared"][f"{'gated' if G else 'delta'} K={K} {str(dtype)[6:]}"] = {n: c.metadata.shared for n, c in built.items()}
    if K == 128 and dtype == torch.bfloat16:
        out["spills"]["gated" if G else "delta"] = {n: aot.spill_bytes(c) for n, c in built.items()}
out["limit"] = aot.H100_SHARED
print(json.dumps(out))
"""


@pytest.mark.skipif(has_cuda(), reason="on a GPU the kernels compile for real in the GPU tests")
def test_chunk_kernels_compile_for_an_h100_within_its_shared_memory_spilling_no_more_than_measured():
    # Shared memory: a kernel over the H100's 227 KB compiles, and fails at its launch on the GPU
    # (fp32 at K = V = 128 took the 16-bit tiles until run 56: 330-360 KB; K = 256, 240-290 KB).
    # Spills: the module's tiles were chosen by timing on the H100 (the card's "Tiles"), spills and
    # all; the bounds are ptxas's counts for sm_90 (Triton 3.9, session 15), so a change that spills
    # more fails here. Triton 3.6's ptxas (what the H100 runs) counts differently (the card's
    # "registers").
    got = run_aot_script(AOT_SCRIPT, timeout=600)
    over = {case: {n: b for n, b in shared.items() if b > got["limit"]} for case, shared in got["shared"].items()}
    assert not any(over.values()), over
    none = dict(wy=0, state_o=0, state_kept=0, state_rec=0, state_bwd=0, dqkw=0, wy_bwd=0)
    bound = dict(delta=none, gated=dict(none, wy=32, state_o=24, state_kept=8, state_bwd=40))
    for case, stack in got["spills"].items():
        assert all(stack[n] <= bound[case][n] for n in none), (case, stack, bound[case])


# ------------------------------------------------------------------------------------------------
# First calls (fast/_compile.py): the dry runs reach the launches the op makes
# ------------------------------------------------------------------------------------------------
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import fast._compile as fcomp  # noqa: E402

KERNELS = [fd._chunk_wy_fwd_kernel, fd._chunk_state_fwd_kernel, fd._chunk_state_bwd_kernel,
           fd._chunk_bwd_dqkw_kernel, fd._chunk_wy_bwd_kernel]


def _first_call_case(s: Shape, gated: bool, with_state: bool, dtype=F32, dev=DEV):
    q, k, v, beta = inputs(30, s, dtype, dev)
    g = -rand(31, s.B, s.T, s.H, dtype=dtype, device=dev) if gated else None
    h0 = state(30, s, F32, dev) if with_state else None
    return q, k, v, g, beta, h0


def _dry_run_then_real_launches(monkeypatch, plans, call):
    """The launches `plans`' dry runs record (their keys forgotten first), then those `call` makes."""
    fcomp._done.difference_update(plans)
    dry = fcomp.precompile(plans)
    real, launch = [], fd.launch
    monkeypatch.setattr(fd, "launch", lambda kern, grid, *a, **kw: (real.append(fcomp.signature(kern, kw)),
                                                                    launch(kern, grid, *a, **kw)))
    call()
    return dry, real


@pytest.mark.skipif(not fcomp.INTERPRET, reason="the interpreter's dry run records launches; a GPU compiles them")
@pytest.mark.parametrize("gated,with_state", [(False, False), (True, True)])
@pytest.mark.parametrize("keep", [True, False])
def test_first_call_dry_runs_make_the_launches_of_a_real_forward_and_backward(monkeypatch, gated, with_state, keep):
    monkeypatch.setattr(fd, "SAVE_INTERMEDIATES", keep)
    s = Shape(2, 100, 3, 16, 32)
    q, k, v, g, beta, h0 = _first_call_case(s, gated, with_state)
    plans = {**fd._fwd_plan(q, k, v, g, beta, h0, 0.5), **fd._bwd_plan(q, k, v, g, beta, h0, 0.5, True, keep)}
    x = [t.requires_grad_() if t is not None else None for t in (q, k, v, g, beta, h0)]

    def real_call():
        o, ht = fd.chunk_fwd(*x, 0.5, True)
        torch.autograd.backward((o, ht), (torch.ones_like(o), torch.ones_like(ht)))
    dry, real = _dry_run_then_real_launches(monkeypatch, plans, real_call)
    # kept: steps 1 and 2 (storing X, h and V_new beside o), then 3, 4, 5; else the backward
    # recomputes steps 1 and 2 first. The dry run compiles each variant once (its tiny forward for
    # the saved tensors launches the forward's own variants again)
    assert sorted(set(dry)) == sorted(set(real)) and len(real) == (5 if keep else 7), (dry, real)
    assert fcomp.precompile(plans) == []  # each key once a process


@pytest.mark.skipif(not fcomp.INTERPRET, reason="the interpreter's dry run records launches; a GPU compiles them")
@pytest.mark.parametrize("gated,with_state", [(False, False), (True, True)])
def test_a_forward_without_gradients_compiles_from_its_own_dry_run(monkeypatch, gated, with_state):
    # its two kernels side by side on the first call (runs 58, 64: compiled at their launches, one
    # after the other, the forward's first call took longer than the forward + backward's)
    s = Shape(2, 100, 3, 16, 32)
    q, k, v, g, beta, h0 = _first_call_case(s, gated, with_state)
    plans = fd._fwd_plan(q, k, v, g, beta, h0, 0.5, keep=False)
    x = [t.requires_grad_() if t is not None else None for t in (q, k, v, g, beta, h0)]
    dry, real = _dry_run_then_real_launches(monkeypatch, plans, torch.no_grad()(lambda: fd.chunk_fwd(*x, 0.5, True)))
    assert sorted(set(dry)) == sorted(set(real)) and len(real) == 2, (dry, real)  # step 1, step 2 (o only)
    fcomp._done.difference_update(plans)
    with torch.no_grad():
        fd.chunk_fwd(*x, 0.5, True)
    assert set(plans) <= fcomp._done  # the op ran the dry run itself


def _kernel_with_a_runtime_flag(x, T, STORE_X, USE_G: tl.constexpr):  # the WY kernel's kinds of argument
    pass


def test_a_flag_passed_by_keyword_splits_variants_only_as_triton_does():
    # a JITFunction made by hand: under the interpreter @triton.jit gives none to inspect
    fn = triton.runtime.jit.JITFunction(_kernel_with_a_runtime_flag, do_not_specialize=["T", "STORE_X"])
    spec = lambda **kw: fcomp._spec(fn, (torch.zeros(4), 100), kw)  # noqa: E731
    assert spec(STORE_X=0, USE_G=True) == spec(STORE_X=1, USE_G=True)  # do_not_specialize: one variant
    assert spec(STORE_X=0, USE_G=True) != spec(STORE_X=0, USE_G=False)  # a constexpr: two
    assert spec(STORE_X=0, num_warps=4) != spec(STORE_X=0, num_warps=8)  # a launch option: two


@pytest.mark.gpu
def test_the_dry_runs_compile_each_variant_once():
    s = Shape(1, 200, 7, 48, 48)  # H = 7, K = V = 48: variants no other test compiles
    q, k, v, g, beta, h0 = _first_call_case(s, True, True, torch.bfloat16, "cuda")
    dev = torch.cuda.current_device()
    fns = [fcomp.jit_function(kern) for kern in KERNELS]
    count = lambda: sum(len(fn.device_caches[dev][0]) for fn in fns)  # noqa: E731
    before = count()
    futures = fcomp.precompile({**fd._fwd_plan(q, k, v, g, beta, h0, 0.5),
                                **fd._bwd_plan(q, k, v, g, beta, h0, 0.5, True, fd.SAVE_INTERMEDIATES)})
    # with the intermediates kept, five variants (step 1, step 2 storing o, h and V_new, steps 3-5);
    # recomputed, six (step 1 once for both directions, step 2 with o and with the states, steps
    # 3-5). One compile each: none twice (run 28 compiled step 1 twice, side by side: 7 for 6)
    assert count() - before == len(futures) == (5 if fd.SAVE_INTERMEDIATES else 6)
    # and each loaded onto the device by the dry run (Triton would load them at their first launches,
    # one after another)
    assert all(getattr(c, "module", True) is not None for fn in fns for c in fn.device_caches[dev][0].values())


@pytest.mark.gpu
@pytest.mark.parametrize("gated,grad", [(False, True), (True, True), (True, False)])
def test_after_the_dry_runs_a_first_forward_and_backward_compiles_nothing(gated, grad):
    s = Shape(1, 200, 5 if grad else 6, 48, 48)  # H = 5 or 6, K = V = 48: variants no other test compiles
    q, k, v, g, beta, h0 = _first_call_case(s, gated, True, torch.bfloat16, "cuda")
    dev = torch.cuda.current_device()
    fns = [fcomp.jit_function(kern) for kern in KERNELS]
    keep = grad and fd.SAVE_INTERMEDIATES
    plans = fd._fwd_plan(q, k, v, g, beta, h0, 0.5, keep=keep)
    if grad:
        plans.update(fd._bwd_plan(q, k, v, g, beta, h0, 0.5, False, keep))
    fcomp.precompile(plans)
    compiled = [len(fn.device_caches[dev][0]) for fn in fns]
    x = [t.requires_grad_() if t is not None else None for t in (q, k, v, g, beta, h0)]
    with torch.set_grad_enabled(grad):
        o, _ = fd.chunk_fwd(*x, 0.5, False)
    if grad:
        o.float().sum().backward()
    assert [len(fn.device_caches[dev][0]) for fn in fns] == compiled
