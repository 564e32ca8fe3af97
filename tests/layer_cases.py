"""Layer and op test bodies that several methods share word for word: softmax, linear, Based,
sliding-window, holographic and hyper attention.

Each method's test file keeps its own test functions (names, strategies, seeds, shapes); the test
builds its layers or inputs and calls one of these with them, then asserts what only its method
has (the cache's parts and sizes). Layers are passed as factories (`lambda: zw.SlidingWindowAttention(16, 2,
window=5)`) so that they are built after the seed is set, as before.
"""

from typing import Callable

import torch

from strategies import TOL, assert_close, device, grad_tol, grads, randn, tol_for


def decode(layer, x, t):
    """Prefill x[:, :t] (none if t = 0), then step through the rest one token at a time.
    Returns the outputs [B, T, C] and the last cache."""
    ys, cache = [], None
    if t:
        y, cache = layer.prefill(x[:, :t])
        ys.append(y)
    for i in range(t, x.shape[1]):
        y_i, cache = layer.step(x[:, i], cache)
        ys.append(y_i[:, None])
    return torch.cat(ys, 1), cache


def assert_prefill_then_decode_equals_forward(make_layer: Callable, T, t, seed, C=12, what="y"):
    """A float64 zoo layer (make_layer() after seeding, hidden size C, B = 2): prefill t tokens then
    decode the rest equals the forward. Returns the layer and its last cache for the caller's checks."""
    t = min(t, T)
    torch.manual_seed(seed % 1000)
    layer = make_layer().double()
    x = randn(seed, 2, T, C)
    y_ref = layer(x)
    y, cache = decode(layer, x, t)
    assert_close(y, y_ref, TOL["f64"], what)
    return layer, cache


def assert_fast_layer_decodes_like_its_forward(make_layer: Callable):
    """A fast layer of hidden size 32 on the test device: prefill 13 tokens and decode 7 equals its forward."""
    dev = device()
    torch.manual_seed(0)
    layer = make_layer().to(dev)
    x = randn(0, 1, 20, 32, dtype=torch.float32, device=dev)
    with torch.no_grad():
        y_ref = layer(x)
        y, _ = decode(layer, x, 13)
    assert_close(y, y_ref, tol_for(torch.float32, dev), "y")


def assert_fast_layer_gradients_equal_zoo_layer(make_zoo: Callable, make_fast: Callable, dev="cuda",
                                                tol=TOL["f32-gpu"]):
    """The fast layer with the zoo layer's weights (hidden size 256, B = 2, T = 300, float32) gives the
    zoo layer's parameter gradients under a random cotangent."""
    torch.manual_seed(0)
    ref = make_zoo().to(dev)
    fast = make_fast().to(dev)
    fast.load_state_dict(ref.state_dict())
    x = randn(1, 2, 300, 256, dtype=torch.float32, device=dev)
    dy = randn(2, 2, 300, 256, dtype=torch.float32, device=dev)
    (ref(x) * dy).sum().backward()
    (fast(x) * dy).sum().backward()
    for (n, p), (_, pf) in zip(ref.named_parameters(), fast.named_parameters()):
        assert_close(pf.grad, p.grad, grad_tol(tol), n)


def assert_layer_compiles_fullgraph_with_aot_eager_forward_and_step(make_layer: Callable):
    """A float32 zoo layer of hidden size 16 (B = 2, T = 19): the compiled forward and the compiled
    step after an 18-token prefill equal the eager forward."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = make_layer()
    x = randn(0, 2, 19, 16, dtype=torch.float32)
    y = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert_close(y, layer(x), TOL["f32-interpret"], "forward")
    _, cache = layer.prefill(x[:, :18])
    y_t, _ = torch.compile(layer.step, fullgraph=True, backend="aot_eager")(x[:, 18], cache)
    assert_close(y_t, layer(x)[:, 18], TOL["f32-interpret"], "step")


def assert_compiled_op_gradients_equal_eager(op: Callable, call: Callable, inputs, cot, seed=None):
    """op compiled (fullgraph, aot_eager) gives eager op's gradients. call(f) is the function of the
    inputs (as keywords) that runs f; with seed, the global generator is seeded before each run (an op
    that samples)."""
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    if seed is not None:
        torch.manual_seed(seed)
    got = grads(call(compiled), inputs, cot)
    if seed is not None:
        torch.manual_seed(seed)
    ref = grads(call(op), inputs, cot)
    for n in ref:
        assert_close(got[n], ref[n], TOL["f32-interpret"], f"d{n}")


def assert_fast_o_and_lse_equal_zoo(zoo_op, fast_op, q, k, v, **kw):
    """A softmax-family fast op in q's (half) precision against its zoo form in float64: o to q's
    dtype's tolerance, lse (stored in fp32) to float32's."""
    dev = q.device.type
    o_ref, lse_ref = zoo_op(q.double(), k.double(), v.double(), **kw, return_lse=True)
    o, lse = fast_op(q, k, v, **kw, return_lse=True)
    assert o.dtype == q.dtype and lse.dtype == torch.float32
    assert_close(o, o_ref, tol_for(q.dtype, dev), "o")
    assert_close(lse, lse_ref, tol_for(torch.float32, dev), "lse")


def assert_fast_gradients_equal_zoo(zoo_fn, fast_fn, inputs, cot, dtype):
    """Gradients of fast_fn on inputs equal zoo_fn's on their float64 copies (each gradient in its
    input's dtype), to grad_tol of dtype's tolerance on the inputs' device."""
    dev = next(iter(inputs.values())).device.type
    inputs64 = {n: x.detach().double().requires_grad_() for n, x in inputs.items()}
    ref = grads(zoo_fn, inputs64, cot)
    got = grads(fast_fn, inputs, cot)
    tol = grad_tol(tol_for(dtype, dev))
    scale = max(r.abs().max().item() for r in ref.values())  # the size of this call's gradients
    for n in ref:
        assert got[n].dtype == inputs[n].dtype
        if ref[n].any():
            assert_close(got[n], ref[n], tol, f"d{n}")
        else:  # zero by the math, e.g. dq at T = 1 without lse (o = v whatever q is): the kernel's
            # terms cancel, to rounding at the scale of the gradients (seen: 4.8e-8, fp32, CI)
            err = got[n].detach().abs().max().item()
            assert err <= tol.worst * scale, f"d{n}: should be zero, {err:.3g} against gradients of size {scale:.3g}"


def with_future_replaced(xs, t, new):
    """Copies of the tensors xs [B, T, ...] with every token after t replaced: by the number new, or
    by new(shape) where new is a function of the replaced part's shape."""
    out = tuple(x.clone() for x in xs)
    for x in out:
        x[:, t + 1:] = new(x[:, t + 1:].shape) if callable(new) else new
    return out
