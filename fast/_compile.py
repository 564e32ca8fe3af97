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

Under TRITON_INTERPRET=1 nothing compiles: the dry run still runs (so its host code is tested
on a CPU) and `launch` records each launch's `signature` instead.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_THREADS = 8  # the longest single compile bounds the wait long before this many threads do

_local = threading.local()  # .pool and .futures while a dry run is on this thread
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
        if hasattr(fn, "device_caches"):
            fn.device_caches[device]
        _local.futures.append(pool.submit(_warmup, device, kernel, grid, args, kwargs))


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
    with torch.cuda.device(device):
        kernel.warmup(*args, grid=grid, **kwargs)


def precompile(plans: dict) -> list:
    """Run the dry runs of the keys in `plans` not seen before, their compiles side by side.
    Returns what the dry runs launched (`signature`s under the interpreter, futures otherwise)."""
    todo = {key: run for key, run in plans.items() if key not in _done}
    if not todo or torch.compiler.is_compiling() or getattr(_local, "pool", None) is not None:
        return []  # (a dry run that calls its own op: the outer one is compiling it)
    with _lock:  # one dry run at a time: the launch hook is per thread, the set of keys is not
        todo = {key: run for key, run in todo.items() if key not in _done}
        with ThreadPoolExecutor(max_workers=min(MAX_THREADS, os.cpu_count() or 1)) as pool:
            _local.pool, _local.futures = pool, []
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
