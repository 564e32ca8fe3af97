"""Checks the delta-rule family's tests share: DeltaNet, Gated DeltaNet and Gated DeltaProduct.

tests/test_deltanet.py, tests/test_gated_deltanet.py and tests/test_deltaproduct.py (the zoo's spec)
and their fast mirrors (tests/test_*_fast.py) test the same laws with the same bodies; each test
file keeps its own inputs, strategies and examples and calls the body here. An op's positional
arguments are the method's inputs as a tuple `x` ((q, k, v, beta) or (q, k, v, g, beta)); method
arguments such as num_householder come in `**kw`. Tolerances are those of tests/strategies.py.
"""

import re

import pytest
import torch
from hypothesis import strategies as st

from strategies import TOL, Shape, assert_close, device, grad_tol, grads, randn, rel_rms, tol_for

F32 = torch.float32
DEV = device()
TOL32 = tol_for(F32, DEV)


def assert_o_S_close(got, ref, tol, what=""):
    """(o, S) against (o_ref, S_ref); messages '<what> o' and '<what> S'."""
    pre = f"{what} " if what else ""
    assert_close(got[0], ref[0], tol, f"{pre}o")
    assert_close(got[1], ref[1], tol, f"{pre}S")


# ------------------------------------------------------------------------------------------------
# The zoo's spec (float64 unless said)
# ------------------------------------------------------------------------------------------------
def assert_recurrent_and_chunk_equal_parallel(parallel, recurrent, chunk, x, L, **kw):
    ref = parallel(*x, **kw)
    for name, got in (("recurrent", recurrent(*x, **kw)), ("chunk", chunk(*x, chunk_size=L, **kw))):
        assert_o_S_close(got, ref, TOL["f64"], name)


def assert_half_inputs_accumulate_in_float32(parallel, chunk, x, x_half, **kw):
    """The chunk form on bf16 inputs (x_half) returns bf16 o, a float32 state, near the float64 x."""
    ref = parallel(*x, output_final_state=True, **kw)
    o, S = chunk(*x_half, chunk_size=16, output_final_state=True, **kw)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_o_S_close((o, S), ref, TOL["bf16-gpu"], "bf16")


def assert_chunk_gradients_equal_parallel(parallel, chunk, ins, cot, L, **kw):
    """ins: the inputs by name (the initial state as S0), requiring grad."""
    def run(op, **extra):
        return lambda S0, **x: op(**x, initial_state=S0, output_final_state=True, **kw, **extra)
    ref = grads(run(parallel), ins, cot)
    got = grads(run(chunk, chunk_size=L), ins, cot)
    for n in ref:
        assert_close(got[n], ref[n], TOL["f64"], f"d{n}")


def assert_future_tokens_do_not_change_the_past(forms, a, b, t, steps=None, **kw):
    """Inputs a up to token t and b after it; steps[i]: positions per token of input i (default 1)."""
    steps = steps or (1,) * len(a)
    mix = [torch.cat([x[:, :(t + 1) * c], y[:, (t + 1) * c:]], 1) for x, y, c in zip(a, b, steps)]
    for name, op in forms.items():
        o, o2 = op(*a, **kw)[0], op(*mix, **kw)[0]
        assert torch.equal(o[:, :t + 1], o2[:, :t + 1]), name


def assert_two_chained_calls_equal_one_call(forms, x, head, tail, **kw):
    """x the whole input, head and tail its two parts."""
    for name, op in forms.items():
        o, S = op(*x, output_final_state=True, **kw)
        o1, S1 = op(*head, output_final_state=True, **kw)
        o2, S2 = op(*tail, initial_state=S1, output_final_state=True, **kw)
        assert_o_S_close((torch.cat([o1, o2], 1), S2), (o, S), TOL["f64"], name)


def assert_prefill_then_decode_equals_forward(make_layer, T, t, seed, state_shape):
    """make_layer() after seeding; B = 2, hidden size 16; state_shape(layer) is the cache's S."""
    t = min(t, T)
    torch.manual_seed(seed % 1000)
    layer = make_layer().double()
    x = randn(seed, 2, T, 16)
    y_ref = layer(x)
    ys, cache = [], None
    if t:
        y, cache = layer.prefill(x[:, :t])
        ys.append(y)
    for i in range(t, T):
        y_i, cache = layer.step(x[:, i], cache)
        ys.append(y_i[:, None])
    assert_close(torch.cat(ys, 1), y_ref, TOL["f64"], "y")
    assert sum(c.numel() for c in cache.values()) == 2 * layer.state_size(T)  # B = 2
    assert cache["S"].shape == state_shape(layer)


def assert_every_form_gives(forms, x, ref, **kw):
    """Every form on x gives (o, S) = ref in float64."""
    for name, op in forms.items():
        assert_o_S_close(op(*x, output_final_state=True, **kw), ref, TOL["f64"], name)


def assert_layer_state_dict_loads_both_ways_with_fla(ours_cls, fla_name, opts, **size):
    fla_layers = pytest.importorskip("fla.layers")
    ours = ours_cls(64, num_heads=2, **size, **opts)
    theirs = getattr(fla_layers, fla_name)(hidden_size=64, num_heads=2, **size, **opts)
    assert {n: p.shape for n, p in ours.state_dict().items()} == {n: p.shape for n, p in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())


def assert_layer_output_equals_fla(ours_cls, fla_name, opts, refused=(), fla_mode=None, **size):
    """Our layer in float64 against fla's in fp16 with the same weights; an error of a type in
    `refused` that names Triton skips (fla 0.6.0 refuses its gated kernels on Hopper under
    Triton < 3.7.1). `fla_mode`: fla's `mode` argument, where its default kernel is not the one
    to compare against (see test_deltanet.py)."""
    # One configuration, T = 150 (> 64: fla's chunk kernels, which its layers use in training): each
    # new shape costs fla a Triton compile and autotune, and the GPU run's test budget is shared.
    fla_layers = pytest.importorskip("fla.layers")
    torch.manual_seed(0)
    ours = ours_cls(64, num_heads=2, **size, **opts).cuda()
    mode = {} if fla_mode is None else dict(mode=fla_mode)
    theirs = getattr(fla_layers, fla_name)(hidden_size=64, num_heads=2, **size, **opts, **mode).cuda()
    theirs.load_state_dict(ours.state_dict())
    # fla's kernels refuse fp32. fp16, not bf16: a whole layer rounds ~8 times, which in bf16 costs
    # ~1e-2 relative RMS (the zoo layer on a CPU: 0.6-1.1e-2), half the bf16 bound; in fp16 ~1e-3.
    x = randn(1, 2, 150, 64, device="cuda", scale=0.5)
    with torch.no_grad():
        y_ref = ours.double()(x.double())
        try:
            y_fla = theirs.eval().half()(x.half())[0]
        except refused as e:
            if "triton" in str(e).lower():
                pytest.skip(f"fla refused: {e}")
            raise
    assert_close(y_fla, y_ref, TOL["f16-gpu"], f"fla {fla_name} (fp16) vs zoo (float64)")


def bad_case_ids(cases):
    """pytest ids of a _bad_cases() list: its names."""
    return [c[0] for c in cases]


def assert_bad_input_raises(case, good, chunk, others):
    """case = (name, changes, err, msg): chunk and (unless it is about chunk_size) others raise."""
    _, changes, err, msg = case
    args = {**good, **changes}
    ops = [chunk] + (list(others) if "chunk_size" not in changes else [])
    for op in ops:
        with pytest.raises(err, match=re.escape(msg)):
            op(**args)


def assert_check_decay_is_a_switch(forms, x, grow, ref_form, layer, monkeypatch, module, tol, **kw):
    """g > 0 (growth) raises by default; check_decay=False skips the check (its host sync) and every
    form computes the growth as `ref_form` does; `layer` (g ≤ 0 by construction) never runs the
    check: `module`'s _check_log_decay is made to fail and the layer's forward still runs."""
    bad = {**x, "g": grow}
    ref = ref_form(**bad, **kw, check_decay=False)[0]
    assert torch.isfinite(ref).all()
    for form in forms:
        with pytest.raises(ValueError, match="must be <= 0"):
            form(**bad, **kw)
        assert_close(form(**bad, **kw, check_decay=False)[0], ref, tol)

    def checked(g):
        raise AssertionError("the layer ran the g <= 0 check")

    monkeypatch.setattr(module, "_check_log_decay", checked)
    layer(torch.randn(1, 5, layer.hidden_size, dtype=next(layer.parameters()).dtype,
                      device=next(layer.parameters()).device))


def assert_default_check_makes_no_host_sync_on_gpu(forms, x, grow, **kw):
    """On a GPU the default g <= 0 check makes no synchronising call before the kernels are queued
    (torch's sync debug mode raises on one; waiting on the verdict's event is not one) and gives
    check_decay=False's output bit for bit; g = `grow` (> 0) still raises ValueError."""
    for form in forms:
        ref = form(**x, **kw, check_decay=False)[0]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            o = form(**x, **kw)[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(o, ref), form.__name__
        with pytest.raises(ValueError, match="must be <= 0"):
            form(**{**x, "g": grow}, **kw)


def assert_nan_reaches_every_later_output(forms, x):
    """x holds a NaN at token 3 (batch 0): every output from token 3 on holds a NaN."""
    for name, op in forms.items():
        o = op(*x)[0]
        assert torch.isnan(o[0, 3:]).any(-1).all(), name


def assert_form_compiles_with_aot_eager(op, x, **kw):
    torch._dynamo.reset()
    got = torch.compile(op, fullgraph=True, backend="aot_eager")(*x, output_final_state=True, **kw)
    assert_o_S_close(got, op(*x, output_final_state=True, **kw), TOL["f32-interpret"])


def assert_layer_compiles_with_aot_eager_forward_and_step(make_layer, x):
    """make_layer() after seeding 0; the step is at the last token of x (float32)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = make_layer()
    t = x.shape[1] - 1
    y = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert_close(y, layer(x), TOL["f32-interpret"], "forward")
    _, cache = layer.prefill(x[:, :t])
    y_t, _ = torch.compile(layer.step, fullgraph=True, backend="aot_eager")(x[:, t], cache)
    assert_close(y_t, layer(x)[:, t], TOL["f32-interpret"], "step")


def assert_chunk_compiles_with_inductor(chunk, parallel, x, **kw):
    torch._dynamo.reset()
    o, _ = torch.compile(chunk, fullgraph=True)(*x, chunk_size=16, **kw)
    assert_close(o, parallel(*x, **kw)[0], TOL["f32-interpret"], "o")


# ------------------------------------------------------------------------------------------------
# The fast mirrors (fp32 under the interpreter, fp16/bf16 on a GPU)
# ------------------------------------------------------------------------------------------------
def fast_shapes(max_T):
    """B·H ≤ 4 (interpreter time); head dims from a small set, because K and V are compile-time
    constants of the kernels: on a GPU every new (K, V) compiles the kernels again (odd dims come
    from the pinned examples)."""
    return st.builds(Shape, st.integers(1, 2), st.integers(1, max_T), st.integers(1, 2), st.sampled_from((16, 32)),
                     st.sampled_from((16, 32)))


def assert_as_accurate_as_fla(what, fast, fla, ref, tol):
    """fast within the tolerance of the float64 zoo, and not less accurate than fla (×1.5 + 1e-3)."""
    assert_close(fast, ref, tol, f"fast {what} vs zoo")
    e_fast, e_fla = rel_rms(fast, ref), rel_rms(fla, ref)
    assert e_fast <= 1.5 * e_fla + 1e-3, f"{what}: fast's relative RMS error {e_fast:.3g}, fla's {e_fla:.3g}"


def assert_fast_and_fla_as_accurate(fast, fla, ref, tol):
    """(o, S) of the fast op and of fla's against the float64 zoo's."""
    for what, a, b, r in zip("oS", fast, fla, ref):
        assert_as_accurate_as_fla(what, a, b, r, tol)


def assert_half_gradients_equal_zoo_float64(fast_fn, zoo_fn, x, cot, dtype):
    """Gradients of the fast op on half inputs x against the zoo's in float64, on the GPU."""
    got = grads(fast_fn, {n: t.requires_grad_() for n, t in x.items()}, cot)
    ref = grads(zoo_fn, {n: t.double().requires_grad_() for n, t in x.items()}, cot)
    for n in x:
        assert_close(got[n], ref[n], grad_tol(tol_for(dtype, "cuda")), f"d{n}")


def assert_grads_equal(fn, ref_fn, x, cot, tol):
    """fn's gradients (fp32) against ref_fn's in float64; an input with no path to the used outputs
    (q, when only S is used) gets none or a zero gradient."""
    got = grads(fn, {n: t.clone().requires_grad_() for n, t in x.items()}, cot)
    ref = grads(ref_fn, {n: t.double().requires_grad_() for n, t in x.items()}, cot)
    assert set(got) == set(x)
    for n in x:
        if ref[n] is None:
            assert got[n] is None or not got[n].any(), f"d{n} should be zero"
        else:
            assert_close(got[n], ref[n], grad_tol(tol), f"d{n}")


def assert_fast_chained_calls_equal_one_call(chunk, recurrent, x, head, tail, **kw):
    """The chunk op over x against the chunk op over head, then the recurrent op over tail."""
    o, S = chunk(*x, output_final_state=True, **kw)
    o1, S1 = chunk(*head, output_final_state=True, **kw)
    o2, S2 = recurrent(*tail, initial_state=S1, output_final_state=True, **kw)
    assert_o_S_close((torch.cat([o1, o2], 1), S2), (o, S), TOL32)


def same_weight_layers(zoo_cls, fast_cls, seed=0, **kw):
    """The zoo layer and the fast layer with the same weights, on DEV."""
    torch.manual_seed(seed)
    ref, fast = zoo_cls(**kw), fast_cls(**kw)
    fast.load_state_dict(ref.state_dict())
    return ref.to(DEV), fast.to(DEV)


def assert_fast_layer_equals_zoo_layer(ref, fast, x, dy_seed):
    """Outputs and every parameter's gradient through a random cotangent."""
    y_ref, y = ref(x), fast(x)
    assert_close(y, y_ref, TOL32, "y")
    dy = randn(dy_seed, *y.shape, dtype=F32, device=DEV)
    (y_ref * dy).sum().backward()
    (y * dy).sum().backward()
    for (n, p), p_ref in zip(fast.named_parameters(), ref.parameters()):
        assert_close(p.grad, p_ref.grad, grad_tol(TOL32), f"d{n}")


def assert_fast_layer_decodes_like_forward(fast, x, prefill=5):
    """Prefill the first `prefill` tokens of x, then one step a token."""
    y = fast(x)
    y_pre, cache = fast.prefill(x[:, :prefill])
    steps = []
    for t in range(prefill, x.shape[1]):
        y_t, cache = fast.step(x[:, t], cache)
        steps.append(y_t)
    assert_close(torch.cat([y_pre, torch.stack(steps, 1)], 1), y, TOL32, "prefill + decode")


def assert_compiled_grads_equal_eager(fn, x, cot):
    """torch.compile(fullgraph=True) over fn: forward and backward bit-identical to eager."""
    eager = grads(fn, {n: t.clone().requires_grad_() for n, t in x.items()}, cot)
    compiled = grads(torch.compile(fn, fullgraph=True, backend="aot_eager"),
                     {n: t.clone().requires_grad_() for n, t in x.items()}, cot)
    for n in x:
        assert torch.equal(compiled[n], eager[n]), f"d{n} differs under torch.compile"


def assert_fast_layer_compiles(fast, x):
    assert_close(torch.compile(fast, fullgraph=True, backend="aot_eager")(x), fast(x), TOL32, "compiled layer")
