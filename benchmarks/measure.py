"""How one implementation is measured: time, peak memory, error, roofline floor.

- Time: warm-up calls first (compilation, autotuning), then `reps` timed calls, each alone
  between two CUDA events after flushing the L2 cache (as triton.testing.do_bench does), and
  the median. On a CPU, time.perf_counter around each call.
- Peak memory (CUDA only): `torch.cuda.max_memory_allocated()` during one call, after a reset,
  minus what was allocated just before the call. So inputs and the cotangent are excluded;
  outputs, saved activations, workspaces and (fwd+bwd) the input gradients are included.
- Error: relative RMS ‖x − ref‖₂ / ‖ref‖₂ (fla's metric) against the method's own float64
  definition (the zoo parallel form on the same, already rounded, inputs).
- Floor: max(FLOPs / peak FLOP/s, bytes / peak bandwidth) with the ceilings below.
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time

import torch

# ------------------------------------------------------------------------------------------------
# Roofline ceilings. Measured, not datasheet: what a dense bf16 matmul and a device-to-device
# copy reach on the project's H100 (torch 2.11, Triton 3.6), recorded in the steering repo's
# shared/reference/anchors.md §8 ("bf16 matmul ceiling 702–724 TFLOP/s; copy 3.02 TB/s"); the
# top of the matmul range is taken.
# The datasheet says 989 TFLOP/s dense bf16 and 3.35 TB/s; no kernel reaches those. Other
# devices have no measured ceilings here: pass --peak-tflops / --peak-tbps to get floors.
# ------------------------------------------------------------------------------------------------
H100_BF16_TFLOPS = 724.0  # dense bf16/fp16 matmul, measured ceiling
H100_COPY_TBPS = 3.0  # HBM3 copy bandwidth (read + write), measured ceiling
MEASURED_CEILINGS = {"H100": {"bf16": H100_BF16_TFLOPS, "fp16": H100_BF16_TFLOPS, "tbps": H100_COPY_TBPS}}

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any GPU's L2 (H100: 50 MB)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def ceilings(device_name: str, dtype: str, peak_tflops: float | None, peak_tbps: float | None):
    """(TFLOP/s, TB/s) to compute floors with; None where unknown for this device and dtype."""
    known = next((c for key, c in MEASURED_CEILINGS.items() if key in device_name), {})
    return (peak_tflops if peak_tflops else known.get(dtype),
            peak_tbps if peak_tbps else known.get("tbps"))


def floor_ms(flops: float, nbytes: float, tflops: float | None, tbps: float | None) -> float | None:
    """The roofline floor of one call in ms: the slower of the compute and the memory bound.
    Unknown ceilings give None (a floor from half the roofline would flatter)."""
    if tflops is None or tbps is None:
        return None
    return max(flops / (tflops * 1e12), nbytes / (tbps * 1e12)) * 1e3


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
_flush_buffer: dict[str, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    buf = _flush_buffer.get(str(device))
    if buf is None:
        buf = _flush_buffer[str(device)] = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    buf.zero_()


def time_ms(step, device: torch.device, *, reps: int, warmup: int, max_case_s: float):
    """Median ms of `step()` and the number of timed calls. `warmup` untimed calls come first;
    the number of timed calls drops (to at least one) when one call is so slow that `reps` of
    them would exceed `max_case_s` seconds."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(max(1, warmup)):
        step()
    sync()
    # One call timed coarsely to size the loop.
    t0 = time.perf_counter()
    step()
    sync()
    est = time.perf_counter() - t0
    reps = max(1, min(reps, int(max_case_s / max(est, 1e-9))))
    times = []
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            _flush_l2(device)
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), reps


def peak_mb(step, device: torch.device, prepare=None) -> float | None:
    """Peak memory of one call above what was allocated before it, in MiB (CUDA only).
    `prepare()` runs first, outside the measurement (e.g. dropping the last call's gradients)."""
    if device.type != "cuda":
        return None
    if prepare is not None:
        prepare()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak / 2**20


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double().to(x.device)
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def exact_softmax_f64(q, k, v, causal: bool, scale: float | None = None) -> torch.Tensor:
    """Exact softmax attention in float64, [B, T, H, D] in and out: the bar for approximations."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        T, S = s.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=s.device).tril(S - T)
        s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def err_pairs(B: int, H: int) -> list[tuple[int, int]]:
    """The (batch row, head) pairs `err` is measured on: the first and the last, so a wrong batch
    or head stride shows, at the cost of two float64 [T, T] problems rather than B·H of them."""
    return sorted({(0, 0), (B - 1, H - 1)})


def take_pairs(x, B: int, H: int, pairs):
    """Stack x[b, :, h] for (b, h) in pairs into [P, T, 1, ...], for tensors laid out
    [B, T, H, ...] (each pair becomes one batch row of a one-head problem); other values pass."""
    if isinstance(x, torch.Tensor) and x.dim() >= 3 and x.shape[0] == B and x.shape[2] == H:
        return torch.stack([x[b, :, h] for b, h in pairs]).unsqueeze(2)
    return x


# ------------------------------------------------------------------------------------------------
# A time limit for one measurement (a runaway compile or a Python loop over 10⁴ chunks)
# ------------------------------------------------------------------------------------------------
class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise CaseTimeout in the main thread after `seconds` (POSIX; a no-op elsewhere)."""
    usable = (seconds and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise CaseTimeout(f"exceeded the per-case limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
