"""Holographic attention (LongAttention): the spec, in DESIGN.md's law order.

1. forms agree: recurrent and chunk equal the parallel cumsum in float64 (o and final state),
   with and without an initial state;
2. fast equals zoo: the Triton chunk op in fp32 under the interpreter (strided inputs included),
   bf16 on a GPU;
3. gradients agree: all four inputs and the initial state through random cotangents on o and the
   final state, zoo chunk/recurrent vs parallel in float64, fast vs zoo in fp32 and bf16 (GPU);
4. causality: perturbing tokens after t leaves outputs up to t bit-identical;
5. state carry: two calls chained by the state equal one call; prefill then decode equals forward;
   the decode cache does not grow with T;
6. own laws: binding then unbinding with the exact position phasor recovers the content with
   crosstalk E|ĉ − c|² = (t − 1)/hd_dim (the bound √(t/hd_dim)); the scan at t = 10⁵ in fp32 equals
   a float64 cumsum and its phases equal float64 t·ω mod 2π (where fp32 t·ω is off by > 10⁻³ rad);
   bf16 inputs scan in fp32; the 1/√(t+1) scale keeps E|r_t|² = E|c|²·E|q|² at every t;
7. bad inputs raise clear errors;
8. torch.compile(fullgraph=True): every zoo form and the layer (aot_eager), the layer with inductor.
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from strategies import (run_aot_script, TOL, Shape, assert_close, edge_examples, grad_tol, grads, has_cuda, rand, randn, seeds,
                        shapes, tol_for)
import layer_cases as cases
import zoo.holographic as zh
import fast.holographic as fh

F64 = torch.float64
FORMS = [zh.holographic_parallel, zh.holographic_recurrent, zh.holographic_chunk]
zoo_chunk_sizes = st.sampled_from([1, 4, 16, 64])  # the zoo takes any power of two


def inputs(seed, s: Shape, dtype=F64, device="cpu"):
    """a_phase, a_mag, q_re, q_im [B, T, H, D] (D = s.K) and integer frequencies [H, D]."""
    xs = [randn(seed + i, s.B, s.T, s.H, s.K, dtype=dtype, device=device, scale=2.0) for i in range(4)]
    return xs + [zh.random_frequencies(s.H, s.K, seed).to(device)]


def state(seed, s: Shape, dtype=F64, device="cpu"):
    """An initial state: M [B, H, D, 2] and positions t [B] (different per sequence, some large)."""
    M = randn(seed + 7, s.B, s.H, s.K, 2, dtype=dtype, device=device, scale=3.0)
    t = torch.randint(0, 10**6, (s.B,), generator=torch.Generator().manual_seed(seed)).to(device)
    return M, t


def flat(o, final):
    return (o,) if final is None else (o, final[0])


def run(op, xs, **kw):
    return flat(*op(*xs, **kw))


# ------------------------------------------------------------------------------------------------
# 1. Forms agree
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(), with_state=st.booleans(), L=zoo_chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, with_state=True, L=16)
def test_recurrent_and_chunk_equal_parallel_in_float64(shape, with_state, L, seed):
    xs = inputs(seed, shape)
    init = state(seed, shape) if with_state else None
    ref = zh.holographic_parallel(*xs, initial_state=init, output_final_state=True)
    for op, kw in ((zh.holographic_recurrent, {}), (zh.holographic_chunk, {"chunk_size": L})):
        o, (M, t) = op(*xs, initial_state=init, output_final_state=True, **kw)
        assert_close(o, ref[0], TOL["f64"], f"{op.__name__} o")
        assert_close(M, ref[1][0], TOL["f64"], f"{op.__name__} M")
        assert torch.equal(t, ref[1][1])
    assert o.shape == (shape.B, shape.T, shape.H, 2 * shape.K)
    t0 = torch.zeros(shape.B, dtype=torch.int64) if init is None else init[1]
    assert torch.equal(ref[1][1], t0 + shape.T)


def test_forms_return_no_state_unless_asked():
    xs = inputs(0, Shape(1, 5, 1, 3, 3))
    for op in FORMS:
        assert op(*xs)[1] is None


# ------------------------------------------------------------------------------------------------
# 2. Fast equals zoo (Triton; the interpreter on a CPU)
# ------------------------------------------------------------------------------------------------
def projected(seed, s: Shape, dtype=torch.float32, device="cpu"):
    """The four inputs as the layer makes them: [B, T, H, D] views of one [B, T, 4·H·D] projection
    (strided, shared strides), plus integer frequencies."""
    x = randn(seed, s.B, s.T, 4 * s.H * s.K, dtype=dtype, device=device, scale=2.0)
    return [z.view(s.B, s.T, s.H, s.K) for z in x.chunk(4, dim=-1)] + [zh.random_frequencies(s.H, s.K, seed).to(device)]


def fast_vs_zoo(xs, init, L, tol, cot_seed=None):
    """Forward (and, with cot_seed, gradients) of the fast chunk op against the zoo's parallel
    form in float64 on the same (rounded) inputs."""
    names = ["a_phase", "a_mag", "q_re", "q_im", "freqs", "M0"]
    args = dict(zip(names, xs + [init[0] if init else None]))
    t0 = init[1] if init else None

    def call(op, **kw):
        def fn(a_phase, a_mag, q_re, q_im, freqs, M0=None):
            return run(op, (a_phase, a_mag, q_re, q_im, freqs), initial_state=None if M0 is None else (M0, t0),
                       output_final_state=True, **kw)
        return fn

    as64 = {n: (x.double() if x is not None and x.is_floating_point() else x) for n, x in args.items()}
    ref = call(zh.holographic_parallel)(**as64)
    got = call(fh.holographic_chunk, chunk_size=L)(**args)
    assert got[0].dtype == xs[0].dtype and got[1].dtype == torch.float32
    assert_close(got[0], ref[0], tol, "fast o")
    assert_close(got[1], ref[1], tol, "fast M_T")
    if cot_seed is None:
        return
    cot = [randn(cot_seed, *got[0].shape, device=xs[0].device, dtype=xs[0].dtype),
           randn(cot_seed + 1, *got[1].shape, device=xs[0].device)]
    for n in names:
        if args[n] is not None and args[n].is_floating_point():
            args[n].requires_grad_(True)
            as64[n] = as64[n].detach().requires_grad_(True)
    g_ref = grads(call(zh.holographic_parallel), {k: v for k, v in as64.items() if v is not None}, cot)
    g = grads(call(fh.holographic_chunk, chunk_size=L), {k: v for k, v in args.items() if v is not None}, cot)
    assert set(g) == set(g_ref) and len(g) == 4 + (init is not None)
    for n in g_ref:
        assert g[n].dtype == args[n].dtype
        assert_close(g[n], g_ref[n], grad_tol(tol), f"fast d{n}")


@settings(max_examples=4)
@given(shape=shapes(max_T=70, max_H=2, max_K=40), with_state=st.booleans(), L=st.sampled_from([16, 32, 64]),
       seed=seeds)
@edge_examples(chunk_size=16, K=5, with_state=True, L=16)
def test_fast_chunk_equals_zoo_in_float32_forward_and_backward(shape, with_state, L, seed):
    xs = projected(seed, shape)
    init = state(seed, shape, dtype=torch.float32) if with_state else None
    fast_vs_zoo(xs, init, L, tol_for(torch.float32, xs[0].device.type), cot_seed=seed + 20)


@pytest.mark.parametrize("lanes", [16, 8])
def test_fast_runs_a_wide_head_as_narrow_ones_forward_and_backward(monkeypatch, lanes):
    # Heads only tile hd_dim: the op runs D = 48 lanes a head as 3 or 6 heads of HEAD_LANES (the H100
    # setting is 512); o, the final state and every gradient must come out in the caller's layout.
    monkeypatch.setattr(fh, "HEAD_LANES", lanes)
    s = Shape(2, 23, 2, 48, 48)
    xs = projected(7, s)
    fast_vs_zoo(xs, state(7, s, dtype=torch.float32), 16, TOL["f32-interpret"], cot_seed=9)


def test_fast_takes_contiguous_inputs_and_separate_strides():
    s = Shape(2, 21, 2, 6, 6)
    xs = inputs(3, s, dtype=torch.float32)  # four separate contiguous tensors
    xs[2] = xs[2].transpose(1, 2).contiguous().transpose(1, 2)  # different strides: copied, still right
    fast_vs_zoo(xs, state(3, s, dtype=torch.float32), 16, TOL["f32-interpret"], cot_seed=5)


@pytest.mark.parametrize("tiles,prefetch,stages,vector", [((16, 64, 4), False, 1, True), ((32, 32, 4), False, 1, True),
                                                          ((16, 128, 8), False, 1, True), ((64, 16, 4), True, 1, True),
                                                          ((32, 32, 4), True, 2, True), ((16, 64, 4), False, 3, True),
                                                          ((32, 32, 4), True, 1, False)])
def test_fast_tiles_other_than_the_rule_give_the_rules_result_forward_and_backward(tiles, prefetch, stages, vector):
    # The GPU benchmark (python -m fast.holographic) times other tiles than the rule's, and other
    # loads (prefetch: the next chunk in registers; stages: Triton's pipeliner; vector=False: the
    # kernel with stride_h unspecialised): each must
    # compute the same o and the same gradients, whatever the rows per step and the lanes per program.
    # BT = 64 > T: the prefetched chunk lies wholly past T (forward) or is chunk 0 again (backward).
    s = Shape(2, 45, 2, 70, 70)  # D = 70: lanes masked in the last tile; T = 45: a partial chunk
    ap, am, qr, qi, freqs = projected(4, s)
    t0 = torch.tensor([0, 3])
    h0 = state(4, s, dtype=torch.float32)[0]
    do = randn(5, (s.B, s.T, s.H, 2 * s.K), dtype=torch.float32)
    dht = randn(6, (s.B, s.H, s.K, 2), dtype=torch.float32)
    rule = fh._holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, h0, True, 16)
    pipe = dict(prefetch=prefetch, stages=stages, vector=vector)
    other = fh._holographic_chunk_fwd(ap, am, qr, qi, freqs, t0, h0, True, tiles[0], tiles=tiles, **pipe)
    tol = TOL["f32-interpret"]
    assert_close(other[0], rule[0], tol, "o")
    assert_close(other[1], rule[1], tol, "final memory")
    g_rule = fh._holographic_chunk_bwd(do, dht, ap, am, qr, qi, freqs, t0, rule[2], True, 16)
    g_other = fh._holographic_chunk_bwd(do, dht, ap, am, qr, qi, freqs, t0, other[2], True, tiles[0], tiles=tiles,
                                        **pipe)
    for name, a, b in zip(("d a_phase", "d a_mag", "d q_re", "d q_im", "d h0"), g_other, g_rule):
        assert_close(a, b, grad_tol(tol), name)


# Round 2's forward tiles (fast.holographic card, "Latency"). BD = 32·warps gives each thread whole
# columns (the scan in-thread); BT 8 only through the launcher. FAST (approximate math) has no
# interpreter path: the GPU tests and the AOT compile below cover it.
FWD_TILES = [(16, 64, 4), (32, 32, 4), (16, 128, 4), (16, 32, 1), (8, 64, 2), (16, 64, 8)]


@pytest.mark.parametrize("tiles", FWD_TILES)
def test_fast_forward_tiles_equal_zoo_and_feed_the_backward(monkeypatch, tiles):
    # The public op through a forward launched with the switches: o and the final state against the
    # zoo in float64; at BT = 16 (the backward's) also the gradients, from the checkpoints it wrote.
    orig = fh._holographic_chunk_fwd

    def fwd(*args, **kw):
        return orig(*args[:8], tiles[0], **kw, tiles=tiles)
    monkeypatch.setattr(fh, "_holographic_chunk_fwd", fwd)
    s = Shape(2, 37, 2, 40, 40)  # a partial chunk; D = 40: lanes masked in the last tile
    xs = projected(8, s)
    init = state(8, s, dtype=torch.float32)
    fast_vs_zoo(xs, init, 16, TOL["f32-interpret"], cot_seed=30 if tiles[0] == fh.KERNEL_CHUNK else None)


def test_fast_forward_writes_no_checkpoints_without_grad():
    # The benchmark's forward (no_grad) skips the checkpoints: same o, and an empty ck.
    s = Shape(1, 37, 2, 24, 24)
    xs = projected(9, s)
    for x in xs[:4]:
        x.requires_grad_(True)
    o = fh.holographic_chunk(*xs)[0]
    t0 = torch.zeros(1, dtype=torch.int64)
    with torch.no_grad():
        assert torch.equal(fh.holographic_chunk(*xs)[0], o)
        assert torch.ops.zoo.holographic_chunk_fwd(*xs, t0, None, False, 16, False)[2].numel() == 0
    assert torch.ops.zoo.holographic_chunk_fwd(*[x.detach() for x in xs], t0, None, False, 16, True)[2].shape[2] == 3


GPU_CASES = [(torch.bfloat16, 1000, 2, 64, 64), (torch.float16, 333, 1, 200, 32), (torch.bfloat16, 4099, 1, 96, 16),
             (torch.float32, 700, 3, 48, 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,T,H,D,L", GPU_CASES)
def test_fast_equals_zoo_in_half_precision_on_gpu(dtype, T, H, D, L):
    s = Shape(2, T, H, D, D)
    xs = projected(0, s, dtype=dtype, device="cuda")
    init = state(0, s, dtype=torch.float32, device="cuda")
    fast_vs_zoo(xs, init, L, tol_for(dtype, "cuda"), cot_seed=9)


@pytest.mark.gpu
def test_fast_scan_at_t_1e5_on_gpu():
    s = Shape(1, 10**5, 1, 16, 16)
    xs = projected(1, s, dtype=torch.bfloat16, device="cuda")
    fast_vs_zoo(xs, None, 64, tol_for(torch.bfloat16, "cuda"))


# ------------------------------------------------------------------------------------------------
# 3. Gradients agree (zoo forms)
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6)
@given(shape=shapes(max_T=40, max_K=6), with_state=st.booleans(), L=zoo_chunk_sizes, seed=seeds)
@edge_examples(chunk_size=16, K=3, with_state=True, L=16)
def test_chunk_and_recurrent_gradients_equal_parallel_in_float64(shape, with_state, L, seed):
    xs = inputs(seed, shape)
    names = ["a_phase", "a_mag", "q_re", "q_im", "freqs"]
    args = {n: x.requires_grad_(x.is_floating_point()) for n, x in zip(names, xs)}
    M0, t0 = state(seed, shape)
    if with_state:
        args["M0"] = M0.requires_grad_()
    cot = [randn(seed + 11, shape.B, shape.T, shape.H, 2 * shape.K), randn(seed + 12, shape.B, shape.H, shape.K, 2)]

    def call(op, **kw):
        def fn(a_phase, a_mag, q_re, q_im, freqs, M0=None):
            init = None if M0 is None else (M0, t0)
            return run(op, (a_phase, a_mag, q_re, q_im, freqs), initial_state=init, output_final_state=True, **kw)
        return fn

    ref = grads(call(zh.holographic_parallel), args, cot)
    assert set(ref) == {"a_phase", "a_mag", "q_re", "q_im"} | ({"M0"} if with_state else set())
    for op, kw in ((zh.holographic_recurrent, {}), (zh.holographic_chunk, {"chunk_size": L})):
        got = grads(call(op, **kw), args, cot)
        for n in ref:
            assert_close(got[n], ref[n], TOL["f64"], f"{op.__name__} d{n}")


# ------------------------------------------------------------------------------------------------
# 4. Causality
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(max_T=40), t=st.integers(0, 39), seed=seeds)
def test_future_tokens_do_not_change_the_past(shape, t, seed):
    t = min(t, shape.T - 1)
    xs = inputs(seed, shape)
    ys = [x.clone() for x in xs]
    for y in ys[:4]:
        y[:, t + 1:] = randn(seed + 5, *y[:, t + 1:].shape)
    for op in (zh.holographic_parallel, zh.holographic_chunk):
        a, b = op(*xs)[0], op(*ys)[0]
        assert torch.equal(a[:, :t + 1], b[:, :t + 1]), op.__name__


def test_layer_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    m = zh.LongAttention(12, 2, hd_dim=8).double()
    x = torch.randn(2, 30, 12, dtype=F64)
    y = x.clone()
    y[:, 17:] = torch.randn(2, 13, 12, dtype=F64)
    assert torch.equal(m(x)[:, :17], m(y)[:, :17])


def test_fast_future_tokens_do_not_change_the_past():
    s = Shape(1, 40, 1, 8, 8)
    xs = inputs(4, s, dtype=torch.float32)
    ys = [x.clone() for x in xs]
    for y in ys[:4]:
        y[:, 21:] = randn(9, *y[:, 21:].shape, dtype=torch.float32)
    a, b = fh.holographic_chunk(*xs, chunk_size=16)[0], fh.holographic_chunk(*ys, chunk_size=16)[0]
    assert torch.equal(a[:, :21], b[:, :21])


# ------------------------------------------------------------------------------------------------
# 5. State carry, decoding
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(max_T=60), split=st.floats(0.0, 1.0), with_state=st.booleans(), L=zoo_chunk_sizes, seed=seeds)
def test_two_chained_calls_equal_one_call(shape, split, with_state, L, seed):
    cut = max(1, min(shape.T - 1, int(split * shape.T))) if shape.T > 1 else 1
    xs = inputs(seed, shape)
    init = state(seed, shape) if with_state else None
    o, (M, t) = zh.holographic_chunk(*xs, initial_state=init, output_final_state=True, chunk_size=L)
    if shape.T == 1:
        return
    o1, s1 = zh.holographic_chunk(*[x[:, :cut] for x in xs[:4]], xs[4], initial_state=init,
                                  output_final_state=True, chunk_size=L)
    o2, (M2, t2) = zh.holographic_recurrent(*[x[:, cut:] for x in xs[:4]], xs[4], initial_state=s1,
                                            output_final_state=True)
    assert_close(torch.cat([o1, o2], 1), o, TOL["f64"], "o")
    assert_close(M2, M, TOL["f64"], "M")
    assert torch.equal(t2, t)


@settings(max_examples=5)
@given(T=st.integers(1, 20), t=st.integers(0, 20), form=st.sampled_from(["chunk", "recurrent", "parallel"]),
       seed=seeds)
def test_prefill_then_decode_equals_forward(T, t, form, seed):
    _, cache = cases.assert_prefill_then_decode_equals_forward(
        lambda: zh.LongAttention(12, 2, hd_dim=10, form=form), T, t, seed, what="decoded y")
    assert torch.equal(cache["t"], torch.full((2,), T))


def test_decode_cache_does_not_grow_with_the_sequence():
    m = zh.LongAttention(8, 1, hd_dim=6).double()
    x = randn(0, 1, 50, 8)
    sizes, cache = [], None
    for i in range(50):
        _, cache = m.step(x[:, i], cache)
        sizes.append(sum(v.numel() for v in cache.values()))
    assert set(sizes) == {2 * 6 + 1} and m.state_size(1) == m.state_size(10**6) == 2 * 6 + 1


def test_fast_chained_calls_equal_one_call_and_the_fast_layer_decodes_like_the_zoo_layer():
    s = Shape(2, 45, 1, 7, 7)
    xs = inputs(6, s, dtype=torch.float32)
    o, (M, t) = fh.holographic_chunk(*xs, output_final_state=True, chunk_size=16)
    o1, s1 = fh.holographic_chunk(*[x[:, :19] for x in xs[:4]], xs[4], output_final_state=True, chunk_size=16)
    o2, (M2, t2) = fh.holographic_chunk(*[x[:, 19:] for x in xs[:4]], xs[4], initial_state=s1,
                                        output_final_state=True, chunk_size=16)
    assert_close(torch.cat([o1, o2], 1), o, TOL["f32-interpret"], "chained o")
    assert_close(M2, M, TOL["f32-interpret"], "chained M")
    assert torch.equal(t2, t)
    torch.manual_seed(0)
    ref = zh.LongAttention(12, 2, hd_dim=20)
    fast = fh.LongAttention(12, 2, hd_dim=20)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 23, 12)
    assert_close(fast(x), ref(x), TOL["f32-interpret"], "fast layer")
    y, _ = cases.decode(fast, x, 15)
    assert_close(y, ref(x), TOL["f32-interpret"], "fast prefill + zoo-recurrent steps")


# ------------------------------------------------------------------------------------------------
# 6. The method's own laws
# ------------------------------------------------------------------------------------------------
def test_unbinding_with_the_position_phasor_recovers_the_content_up_to_sqrt_t_over_hd_crosstalk():
    """Store t unit-magnitude contents with random phases; unbind item k with conj(p_k) and
    project on c_k: ĉ = (1/D) Σ_d (M ⊙ conj(p_k))_d conj(c_k,d) = 1 + crosstalk, with
    E|crosstalk|² = (t − 1)/D exactly for independent phases. Measured over many k, the RMS
    crosstalk must sit on √((t−1)/D) (within the sampling error), so it shrinks like √(t/hd_dim)."""
    ratios = {}
    for t, D in [(16, 64), (64, 64), (256, 64), (64, 1024), (256, 1024)]:
        a_phase = randn(t * D, 8, t, 1, D)  # 8 independent memories
        a_mag = torch.full_like(a_phase, 40.0)  # σ(40) = 1 − 4e-18: unit magnitude
        zero = torch.zeros_like(a_phase)
        freqs = zh.random_frequencies(1, D, t + D)
        _, (M, _) = zh.holographic_parallel(a_phase, a_mag, zero, zero, freqs, output_final_state=True)
        M = torch.view_as_complex(M)[:, 0]  # [8, D]
        c = torch.polar(torch.ones_like(a_phase), math.pi * torch.tanh(a_phase))[:, :, 0]  # (1) [8, t, D]
        p = torch.polar(torch.ones(t, D, dtype=F64), zh.position_phase(torch.arange(t)[None], freqs)[0, :, 0])  # (2) [t, D]
        c_hat = (M[:, None] * p.conj() * c.conj()).mean(-1)  # [8, t]
        rms = (c_hat - 1).abs().pow(2).mean().sqrt().item()
        bound = math.sqrt((t - 1) / D)
        ratios[(t, D)] = rms / bound
        assert 0.85 < rms / bound < 1.15, f"t={t}, D={D}: RMS crosstalk {rms:.4f} vs √((t−1)/D) = {bound:.4f}"
    assert ratios  # every (t, D) measured


def test_phases_keep_their_precision_at_t_1e5_where_float32_t_omega_does_not():
    freqs = zh.random_frequencies(1, 64, 3)
    t = torch.arange(10**5 - 50, 10**5)[None]  # [1, 50]
    got = zh.position_phase(t, freqs).float()  # what the compute dtype sees
    omega = freqs.double() * (2 * math.pi / zh.TURN)  # [1, 64]
    exact = torch.remainder(t[0, :, None].double() * omega + math.pi, 2 * math.pi) - math.pi  # float64 [50, 64]
    err = (got[0, :, 0].double() - exact).abs()
    err = torch.minimum(err, 2 * math.pi - err).max().item()
    naive = t[0, :, None].float() * omega.float()  # v1: t·ω in fp32
    naive_err = (torch.remainder(naive.double() - exact, 2 * math.pi))
    naive_err = torch.minimum(naive_err, 2 * math.pi - naive_err).max().item()
    assert err < 1e-6 and naive_err > 1e-3, (err, naive_err)


def test_the_float32_scan_at_t_1e5_equals_a_float64_cumsum():
    T, D = 10**5, 4
    s = Shape(1, T, 1, D, D)
    xs32 = inputs(1, s, dtype=torch.float32)
    o, (M, t) = zh.holographic_chunk(*xs32, output_final_state=True)
    ref, (M_ref, _) = zh.holographic_parallel(*[x.double() if x.is_floating_point() else x for x in xs32],
                                              output_final_state=True)
    assert M.dtype == torch.float32 and int(t) == T
    assert_close(M, M_ref, TOL["f32-interpret"], "M_T")
    assert_close(o, ref, TOL["f32-interpret"], "o")


def test_bf16_inputs_are_scanned_in_float32():
    s = Shape(1, 4096, 1, 8, 8)
    xs = inputs(2, s, dtype=torch.bfloat16)
    o, (M, _) = zh.holographic_chunk(*xs, output_final_state=True)
    _, (M_ref, _) = zh.holographic_parallel(*[x.double() if x.is_floating_point() else x for x in xs],
                                            output_final_state=True)
    assert o.dtype == torch.bfloat16 and M.dtype == torch.float32
    assert_close(M, M_ref, TOL["f32-interpret"], "M_T from bf16 inputs")  # a bf16 scan is ~1e-2 off


def test_the_read_out_scale_keeps_the_retrieval_at_unit_size_at_every_t():
    """(5): with uniform random content phases, E|M_t|² = (t+1)·E|c|², so E|r_t|² = E|c|²·E|q|² at every t;
    without the 1/√(t+1) it would grow like t."""
    T, D = 512, 256
    s = Shape(4, T, 1, D, D)
    xs = inputs(3, s)
    xs[0] = torch.atanh(rand(4, 4, T, 1, D, low=-1.0, high=1.0))  # (1) content phase uniform in (-π, π)
    o = zh.holographic_parallel(*xs)[0]  # [4, T, 1, 2D]
    c2 = torch.sigmoid(xs[1]).pow(2).mean().item()
    q2 = (xs[2] ** 2 + xs[3] ** 2).mean().item()
    r2 = o.pow(2).view(4, T, D, 2).sum(-1).mean(dim=(0, 2))  # E|r_t|² per t [T]
    for window in (slice(0, 8), slice(60, 68), slice(T - 8, T)):
        ratio = r2[window].mean().item() / (c2 * q2)
        assert 0.8 < ratio < 1.25, (window, ratio)


# ------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    s = Shape(2, 5, 1, 3, 3)
    xs = inputs(0, s)
    op = zh.holographic_chunk
    with pytest.raises(ValueError, match="a_mag must be"):
        op(xs[0], xs[1][:, :4], *xs[2:])
    with pytest.raises(ValueError, match=r"\[B, T, H, D\]"):
        op(xs[0][0], *xs[1:])
    with pytest.raises(TypeError, match="floating"):
        op(xs[0].long(), *xs[1:])
    with pytest.raises(TypeError, match="one dtype"):
        op(xs[0].float(), *xs[1:])
    with pytest.raises(ValueError, match="freqs must be int64"):
        op(*xs[:4], xs[4].double())
    with pytest.raises(ValueError, match="freqs must be int64"):
        op(*xs[:4], xs[4][:, :2])
    with pytest.raises(ValueError, match="power of two"):
        op(*xs, chunk_size=12)
    with pytest.raises(TypeError, match="initial_state"):
        op(*xs, initial_state=torch.zeros(2, 1, 3, 2))
    with pytest.raises(ValueError, match=r"initial_state\[0\]"):
        op(*xs, initial_state=(torch.zeros(2, 1, 3), torch.zeros(2, dtype=torch.int64)))
    with pytest.raises(ValueError, match=r"initial_state\[1\]"):
        op(*xs, initial_state=(torch.zeros(2, 1, 3, 2), torch.zeros(2)))
    for hd in (0, -4):
        with pytest.raises(ValueError, match="hd_dim must be a positive int"):
            zh.LongAttention(8, 1, hd_dim=hd)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        zh.LongAttention(8, 3, hd_dim=8)
    with pytest.raises(ValueError, match="form must be"):
        zh.LongAttention(8, 1, hd_dim=8, form="fft")
    with pytest.raises(ValueError, match=r"x must be \[B, T, C\]"):
        zh.LongAttention(8, 1, hd_dim=8)(torch.randn(2, 5, 7))


def test_nan_in_a_token_reaches_only_that_token_and_later():
    xs = inputs(0, Shape(1, 10, 1, 4, 4))
    xs[1][0, 6, 0, 2] = float("nan")
    o = zh.holographic_chunk(*xs, chunk_size=4)[0]
    assert not o[:, :6].isnan().any() and o[:, 6:, 0, 4:6].isnan().all()


def test_fast_bad_inputs_raise_clear_errors():
    xs = inputs(0, Shape(1, 5, 1, 3, 3))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        fh.holographic_chunk(*xs)  # float64: the zoo's, not the kernel's
    xs32 = inputs(0, Shape(1, 5, 1, 3, 3), dtype=torch.float32)
    with pytest.raises(ValueError, match="chunk_size must be a power of two in"):
        fh.holographic_chunk(*xs32, chunk_size=8)
    with pytest.raises(ValueError, match="a_mag must be"):
        fh.holographic_chunk(xs32[0], xs32[1][:, :3], *xs32[2:])


# ------------------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------
def test_every_form_compiles_without_graph_breaks():
    xs = inputs(0, Shape(2, 21, 2, 5, 5))
    init = state(0, Shape(2, 21, 2, 5, 5))
    for op in FORMS:
        ref = op(*xs, initial_state=init, output_final_state=True)
        got = torch.compile(op, fullgraph=True, backend="aot_eager")(*xs, initial_state=init, output_final_state=True)
        assert_close(got[0], ref[0], TOL["f64"], op.__name__)
        assert_close(got[1][0], ref[1][0], TOL["f64"], op.__name__ + " M")


def test_the_layer_compiles_with_inductor():
    torch.manual_seed(0)
    m = zh.LongAttention(16, 2, hd_dim=8)
    x = torch.randn(2, 19, 16)
    assert_close(torch.compile(m, fullgraph=True)(x), m(x), TOL["f32-interpret"], "inductor layer")


# ------------------------------------------------------------------------------------------------
# The hybrid model (train/holo_transformer.py): decode equals forward, constant holographic cache, errors
# ------------------------------------------------------------------------------------------------
from train.holo_transformer import HoloConfig, HoloTransformer  # noqa: E402


def tiny_model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=29, dim=16, n_layers=4, n_heads=2, hd_dim=24, max_seq_len=40)
    return HoloTransformer(HoloConfig(**{**cfg, **kw})).double()


def test_model_prefill_then_step_equals_forward_and_generate_follows_the_forward_argmax():
    m = tiny_model()
    assert [type(b.mixer).__name__ for b in m.layers] == ["LongAttention"] + ["RotaryAttention"] * 3
    m = tiny_model(attn_layers=(2,))
    idx = torch.randint(29, (2, 13), generator=torch.Generator().manual_seed(1))
    full = m(idx)
    assert full.shape == (2, 13, 29) and m.head.weight is m.emb.weight
    logits, caches = m.prefill(idx[:, :5])
    outs, sizes = [logits], []
    for t in range(5, 13):
        step_logits, caches = m.step(idx[:, t], caches)
        outs.append(step_logits[:, None])
        sizes.append(m.cache_sizes(caches))
    assert_close(torch.cat(outs, 1), full, TOL["f64"], "decoded logits")
    # holographic caches keep one size (2·hd_dim + 1 per sequence); the KV cache grows by 2·C per token
    for i, layer in enumerate(m.layers):
        col = [s[i] for s in sizes]
        if i == 2:
            assert col == [2 * (6 + j) * 16 * 2 for j in range(8)]
        else:
            assert set(col) == {2 * (2 * 24 + 1)}
    gen = m.generate(idx[:, :5], 8)
    assert torch.equal(gen[:, :5], idx[:, :5])
    assert torch.equal(m(gen[:, :-1]).argmax(-1)[:, 4:], gen[:, 5:])  # each token = the forward's argmax
    sampled = m.generate(idx[:, :5], 4, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 9)


def test_model_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="hd_dim must be a positive int"):
        HoloConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, hd_dim=0, max_seq_len=8)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        HoloConfig(vocab_size=10, dim=10, n_layers=2, n_heads=3, hd_dim=8, max_seq_len=8)
    with pytest.raises(ValueError, match="attn_layers"):
        HoloConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, hd_dim=8, max_seq_len=8, attn_layers=(5,))
    m = tiny_model(max_seq_len=10)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size = 29\)"):
        m(torch.tensor([[1, 29]]))
    with pytest.raises(ValueError, match=r"token ids must lie"):
        m(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="exceeds max_seq_len = 10"):
        m(torch.zeros(1, 11, dtype=torch.int64))
    with pytest.raises(ValueError, match="exceeds max_seq_len = 10"):
        m.generate(torch.zeros(1, 8, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="idx must be int64"):
        m(torch.zeros(1, 4))


def test_fast_op_compiles_without_graph_breaks_forward_and_backward():
    s = Shape(1, 20, 1, 6, 6)
    xs = [x.requires_grad_(x.is_floating_point()) for x in inputs(2, s, dtype=torch.float32)]

    def loss(a_phase, a_mag, q_re, q_im, freqs):
        o, (M, _) = fh.holographic_chunk(a_phase, a_mag, q_re, q_im, freqs, output_final_state=True, chunk_size=16)
        return o.square().sum() + M.sum()

    ref = torch.autograd.grad(loss(*xs), xs[:4])
    got = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(*xs), xs[:4])
    for g, r in zip(got, ref):
        assert_close(g, r, TOL["f32-interpret"], "compiled fast grad")


AOT_SCRIPT = r"""
import json
from aot import stack_bytes
import fast.holographic as fh


def usage(direction, BT):
    # As the JIT compiles it for the layer: bf16, hd_dim 8192, 16-byte-aligned pointers and strides.
    BD, num_warps = fh._tile_rule(8192, BT)
    bf = "*bf16"
    if direction == "fwd":
        vector = fh.VECTOR
        kern = fh._holographic_chunk_fwd_kernel if vector else fh._holographic_chunk_fwd_kernel_scalar
        ptrs = dict(ap=bf, am=bf, qr=bf, qi=bf, freqs="*i32", t0="*i64", h0="*fp32", o=bf, ht="*fp32", ck="*fp32")
        const = dict(BT=BT, BD=BD, HAS_H0=True, STORE_HT=True, STORE_CK=True, FAST=fh.FAST_FWD, PREFETCH=fh.PREFETCH,
                     STAGES=fh.STAGES)
    else:
        vector = fh.VECTOR_BWD
        kern = fh._holographic_chunk_bwd_kernel if vector else fh._holographic_chunk_bwd_kernel_scalar
        ptrs = dict(ap=bf, am=bf, qr=bf, qi=bf, freqs="*i32", t0="*i64", ck="*fp32", do=bf, dht="*fp32", dap=bf,
                    dam=bf, dqr=bf, dqi=bf, dh0="*fp32")
        const = dict(BT=BT, BD=BD, HAS_DHT=True, STORE_DH0=True, FAST=True, PREFETCH=fh.PREFETCH_BWD,
                     STAGES=fh.STAGES_BWD)
    sizes = dict(stride_b="i32", stride_t="i32", stride_h="i32", T="i32", H="i32", D="i32")
    aligned = ("stride_b", "stride_t", "stride_h", "D") if vector else ("stride_b", "stride_t", "D")
    return stack_bytes(kern, dict(ptrs, **sizes), const, num_warps, aligned=aligned)


def usage_fwd(tiles, fast):
    # Round 2's forward switches as the sweep launches them: scalar kernel, no checkpoints, no state.
    BT, BD, num_warps = tiles
    ptrs = dict(ap="*bf16", am="*bf16", qr="*bf16", qi="*bf16", freqs="*i32", t0="*i64", h0="*fp32", o="*bf16",
                ht="*fp32", ck="*fp32")
    sizes = dict(stride_b="i32", stride_t="i32", stride_h="i32", T="i32", H="i32", D="i32")
    const = dict(BT=BT, BD=BD, HAS_H0=False, STORE_HT=False, STORE_CK=False, FAST=fast, PREFETCH=False, STAGES=1)
    return stack_bytes(fh._holographic_chunk_fwd_kernel_scalar, dict(ptrs, **sizes), const, num_warps,
                       aligned=("stride_b", "stride_t", "D"))


out = {f"{d}{BT}": usage(d, BT) for d in ("fwd", "bwd") for BT in (fh.KERNEL_CHUNK, 32, 64)}
for tiles, fast in [((16, 64, 4), True), ((16, 128, 4), False), ((16, 64, 2), True), ((8, 64, 2), False),
                    ((16, 32, 4), False), ((16, 64, 8), True)]:
    out[f"fwd {tiles} fast {fast:d}"] = usage_fwd(tiles, fast)
print(json.dumps(out))
"""


@pytest.mark.skipif(has_cuda(), reason="on a GPU the kernels compile for real in the GPU tests")
def test_kernels_compile_for_an_h100_without_spilling():
    """The interpreter never compiles: this catches what only the GPU compiler rejects (plain
    globals, unsupported ops) and register spills, on a CPU, with Triton's bundled ptxas."""
    stack = run_aot_script(AOT_SCRIPT, timeout=300)
    assert all(v == 0 for v in stack.values()), stack
