"""First calls: compile a fast op's kernel variants side by side, not one after another.

Triton compiles a kernel the first time it is launched with a new specialisation (dtype, head
dims, flags), and it does so when the launch is reached: an op whose forward and backward use
eight variants compiles them in series. Measured on the H100 (Triton 3.6, run 20, fresh process,
empty caches): the delta rule's forward + backward 7.3 s (8 compiles, the WY kernel 1.7-2.0 s
each of its two variants), the gated delta rule's 11.3 s, HyperAttention's causal 8.0 s (9
compiles), against the issues' 5 s. Triton's compiler releases the GIL, so compiles in threads
overlap: six HyperAttention kernels took 5.5 s in series and 1.9 s in six threads there.

`precompile(plans)`: `plans` maps a key (what decides the variants: dtype, head dims, flags,
device) to a dry run, the op's own host code on tiny inputs of the same dtypes and head dims.
For each key not seen before in this process, the dry run runs with every `launch` below turned
into `kernel.warmup` (compile, never run) on a thread pool; then it waits for them all. The real
call that follows finds its kernels compiled, because the dry run reached the same launches with
the same specialisation (T is never a compile key in these files: it is in do_not_specialize).
A dry run that misses a variant costs only time: the real launch compiles it as before.

A dry run must reach every launch on its own thread: a backward op is called directly, not
through autograd, which runs a CUDA backward on its own device thread where this thread's dry run
is not on (HyperAttention's first try, run 23: its backward kernels still compiled in series).
HyperAttention's variants depend on T, so its dry run is the call itself on the same inputs.

Measured with it (H100, fresh process, empty caches): HyperAttention causal fwd + bwd 2.85 s
(run 24; 8.0 s before); delta rule 3.4-5.0 s, gated 4.7-5.5 s, DeltaProduct 4.2-6.0 s over runs
21-24 (7.3, 11.3, 10.5 s before), the WY kernel's own compile (1.6-4.2 s) the floor of that wait
(since run 24 the forward and the backward share it).

Under TRITON_INTERPRET=1 nothing compiles: the dry run still runs (so its host code is tested
on a CPU) and `launch` records each launch's `signature` instead.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_THREADS = 8  # the longest single compile bounds the wait long before this many threads do

_local = threading.local()  # .pool, .futures, .seen while a dry run is on this thread
_done: set = set()
_lock = threading.Lock()


def launch(kernel, grid, *args, **kwargs):
    """`kernel[grid](*args, **kwargs)`, or, inside a dry run, its compilation on the pool."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        kernel[grid](*args, **kwargs)
    elif INTERPRET:
        _local.futures.append(signature(kernel, kwargs))
    else:
        # The JIT function's per-device cache is made on first use; made here, on one thread, so
        # that two threads compiling variants of one kernel cannot each make one and lose a compile.
        device = torch.cuda.current_device()  # the launch's, as the op's device guard set it
        fn = jit_function(kernel)
        # One compile a variant: launches of one variant (the causal recursion's levels, the hash of
        # q and of k) would otherwise all compile at once, side by side (HyperAttention, run 22: 16
        # compiles for 9).
        key = (fn, device, _spec(fn, args, kwargs))
        if key in _local.seen:
            return
        _local.seen.add(key)
        if hasattr(fn, "device_caches"):
            fn.device_caches[device]
        _local.futures.append(pool.submit(_warmup, device, kernel, grid, args, kwargs))


def _spec(fn, args, kwargs) -> tuple:
    """What of a launch picks its compiled variant, as Triton specialises: a constexpr's value (and
    the launch options'), a tensor's dtype and 16-byte alignment, an int's being 1 or a multiple of
    16 (nothing for a do_not_specialize one), a float's nothing, None as such. Keywords are read as
    the parameters they name (a do_not_specialize flag passed by keyword must not split a variant:
    the delta rule's STORE_X did, and its WY kernel compiled twice side by side, run 28)."""
    params = getattr(fn, "params", None) or []
    by_name = {getattr(p, "name", None): p for p in params}
    named = [(params[i] if i < len(params) else None, x) for i, x in enumerate(args)]
    named += [(by_name.get(k), x) for k, x in sorted(kwargs.items()) if k in by_name]
    out = [_arg_spec(p, x) for p, x in named]
    return tuple(out) + tuple(sorted((k, x) for k, x in kwargs.items() if k not in by_name))  # launch options


def _arg_spec(p, x):
    if p is not None and getattr(p, "is_constexpr", False):
        return x
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dtype, x.data_ptr() % 16 == 0)
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return "int" if p is not None and getattr(p, "do_not_specialize", False) \
            else ("int", x == 1, x % 16 == 0, -2**31 <= x < 2**31)
    return type(x).__name__


def jit_function(kernel):
    """The function under any @triton.heuristics / @triton.autotune wrappers."""
    while not hasattr(kernel, "device_caches") and hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel


def signature(kernel, kwargs) -> tuple:
    """A launch as the interpreter's dry run records it: the kernel's name and its keyword
    arguments (the flags and launch options that pick a compiled variant)."""
    return (jit_function(kernel).__name__, tuple(sorted(kwargs.items())))


def _warmup(device, kernel, grid, args, kwargs):
    """Compile one variant, then make its launcher and load its binary onto the device: Triton does
    those two lazily, at the first real launch, which would then do them one kernel after another."""
    with torch.cuda.device(device):
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        for c in compiled if isinstance(compiled, (list, tuple)) else (compiled,):
            init = getattr(c, "_init_handles", None)  # (a private method: absent, it is only slower)
            if init is not None:
                init()


def precompile(plans: dict) -> list:
    """Run the dry runs of the keys in `plans` not seen before, their compiles side by side.
    Returns what the dry runs launched (`signature`s under the interpreter, futures otherwise)."""
    todo = {key: run for key, run in plans.items() if key not in _done}
    if not todo or torch.compiler.is_compiling() or getattr(_local, "pool", None) is not None:
        return []  # (a dry run that calls its own op: the outer one is compiling it)
    with _lock:  # one dry run at a time: the launch hook is per thread, the set of keys is not
        todo = {key: run for key, run in todo.items() if key not in _done}
        with ThreadPoolExecutor(max_workers=min(MAX_THREADS, os.cpu_count() or 1)) as pool:
            _local.pool, _local.futures, _local.seen = pool, [], set()
            try:
                for run in todo.values():
                    run()
            finally:
                futures, _local.pool = _local.futures, None
        for f in futures:
            if not isinstance(f, tuple):
                f.result()  # a compile error surfaces here, as it would at the launch
        _done.update(todo)
    return futures
