"""The implementations a method is timed in, each built as `fn(inputs, causal) -> o`.

- `zoo-eager`: the zoo chunk form, eager PyTorch.
- `zoo-compile`: the same function under `torch.compile(fullgraph=True)` (mode default,
  dynamic shapes as torch decides: the first length compiles static, a second one dynamic).
- `fast`: the Triton mirror's op of the same name in fast/<method>.py.
- `sdpa`: torch's scaled_dot_product_attention on the same q, k, v ([B, T, H, D] viewed as
  [B, H, T, D]), cuDNN attention on a GPU where it runs (else FlashAttention-2): the speed bar
  for every method.
- `fla`: flash-linear-attention's op for the same function, where the spec names one.
"""

from __future__ import annotations

import importlib
import inspect
import os

import torch
import torch.nn.functional as F

IMPLS = ("fast", "zoo-compile", "zoo-eager", "fla", "sdpa")  # also the table's row order


class Skip(Exception):
    """This implementation cannot run here; the message says why (it goes in the record's note)."""


def applicable(spec, impl: str) -> bool:
    """Whether a record exists at all for (method, impl): fla only where the spec names an op."""
    return impl != "fla" or spec.fla is not None


def sdpa_call(x, causal: bool) -> torch.Tensor:
    q, k, v = (x[n].transpose(1, 2) for n in ("q", "k", "v"))  # [B, H, T, D] views, no copies
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        half = q.dtype in (torch.float16, torch.bfloat16)
        if half:
            # The fastest backend torch has for half precision: cuDNN's fused attention on
            # Hopper (FA3-class), else FlashAttention-2. The bar is the best SDPA, not FA2.
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
                try:
                    with sdpa_kernel([backend]):
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    break
                except RuntimeError:  # this backend does not take these inputs here
                    continue
        else:
            with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return o.transpose(1, 2)  # [B, T, H, D]


def _fla_fn(spec):
    try:
        module = importlib.import_module(spec.fla.module)
        fn = getattr(module, spec.fla.op)
    except Exception as e:  # fla missing or broken on this stack: say what it raised
        raise Skip(f"fla: {spec.fla.module}.{spec.fla.op} did not import: {type(e).__name__}: {e}") from None
    try:  # fla < 0.2 defaulted to head-first [B, H, T, D]; ask for [B, T, H, D] where it can
        if "head_first" in inspect.signature(fn).parameters:
            import functools

            fn = functools.partial(fn, head_first=False)
    except (TypeError, ValueError):
        pass
    return fn


_compiled: dict[str, object] = {}


def build(spec, impl: str, device: torch.device, causal: bool, shape: tuple[int, int, int, int]):
    """`fn(inputs, causal) -> o` for this implementation, or raise Skip(reason)."""
    B, T, H, D = shape
    if spec.skip is not None:
        reason = spec.skip(impl, B, T, H, D, causal, device.type)
        if reason:
            raise Skip(reason)
    if impl == "sdpa":
        return sdpa_call
    if impl == "fla":
        if device.type != "cuda":
            raise Skip("fla runs on CUDA only")
        if spec.fla.causal_only and not causal:
            raise Skip(f"fla's {spec.fla.op} is causal only")
        fn = _fla_fn(spec)
        return lambda x, c: spec.fla.call(fn, x, c)
    if impl in ("zoo-eager", "zoo-compile"):
        try:
            op = getattr(importlib.import_module(spec.zoo_path), spec.chunk_op)
        except Exception as e:
            raise Skip(f"{spec.zoo_path}.{spec.chunk_op}: {type(e).__name__}: {e}") from None
        if impl == "zoo-compile":
            if spec.name not in _compiled:
                _compiled[spec.name] = torch.compile(op, fullgraph=True)
            op = _compiled[spec.name]
        return lambda x, c: spec.call(op, x, c)
    if impl == "fast":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise Skip("fast kernels on a CPU need TRITON_INTERPRET=1")
        try:
            op = getattr(importlib.import_module(spec.fast_path), spec.chunk_op)
        except Exception as e:
            raise Skip(f"{spec.fast_path}.{spec.chunk_op}: {type(e).__name__}: {e}") from None
        return lambda x, c: spec.call(op, x, c)
    raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")


def reference(spec):
    """The float64 oracle `fn(inputs, causal) -> o`: the zoo's `reference_op`."""
    op = getattr(importlib.import_module(spec.zoo_path), spec.reference_op)
    return lambda x, c: spec.call(op, x, c)


def allow_many_compiles() -> None:
    """One compiled op meets several lengths, both causal modes and grad on/off: let dynamo keep
    them all instead of falling back to eager after its default of 8 recompiles."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 64)
