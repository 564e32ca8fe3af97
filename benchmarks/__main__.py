"""python -m benchmarks: every method side by side, on one harness.

For each method of benchmarks/specs.py, each sequence length T (batch B = tokens // T, so every
row moves the same number of tokens), each causal mode and direction (fwd, fwd+bwd), and each
implementation (zoo eager, zoo compiled, fast Triton, SDPA, fla): the median time, peak memory,
error against the method's float64 definition, the roofline floor, and, in a fresh process, the
first-call latency. Prints a markdown table and the issues' targets (met / NOT met / not
measured); writes <out>/<name>.json, .md and .png. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import zlib

import torch

from benchmarks import first_call, impls, measure, report, specs, targets

GPU_DEFAULTS = dict(T=[1024, 2048, 4096, 8192, 16384], tokens=32768, H=16, D=128, dtype="bf16", reps=20)
GPU_QUICK = dict(T=[1024, 8192], reps=5)
CPU_DEFAULTS = dict(T=[64, 128, 256], tokens=512, H=2, D=32, dtype="fp32", reps=5)
CPU_QUICK = dict(T=[32, 64], tokens=128, H=2, D=16, reps=3)

DEFINITIONS = {
    "ms": "median wall time of one call between CUDA events (perf_counter on CPU), L2 flushed before each, after warm-up",
    "fwd": "forward under torch.no_grad()",
    "fwdbwd": "forward with autograd, then backward of a fixed random cotangent; input grads reset to None before each call",
    "peak_mb": "CUDA only: torch.cuda.max_memory_allocated during one call minus memory_allocated just before it "
               "(inputs and cotangent excluded; outputs, saved tensors, workspace and input grads included), MiB",
    "first_call_s": "wall time of the first call in a fresh process with empty TRITON_CACHE_DIR and "
                    "TORCHINDUCTOR_CACHE_DIR (compile and autotune included; imports, CUDA start-up and Triton's "
                    "one-time driver build, done by one unrelated trivial kernel first, excluded), "
                    "measured at one shape per method/impl/direction (the first T and causal mode of the run)",
    "err": "relative RMS error ||x - ref|| / ||ref|| against the method's own float64 definition (the zoo "
           "reference_op, e.g. the parallel form, on the same rounded inputs), on (batch 0, head 0) and "
           "(batch B-1, head H-1); fwd: the output; fwdbwd: the largest of the output's and every input gradient's",
    "err_vs_softmax": "for methods that approximate softmax attention: relative RMS error of the output against exact "
                      "softmax attention in float64 on the same q, k, v",
    "floor_ms": "max(flops / peak FLOP/s, bytes / peak bandwidth); bytes = each input read once, each output "
                "written once",
    "x_floor": "ms / floor_ms",
    "tflops": "the spec's FLOP count / ms",
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", help="default: every spec whose zoo module imports")
    p.add_argument("--T", nargs="+", type=int, help="sequence lengths, measured in this order")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--B", type=int, help="fixed batch size")
    size.add_argument("--tokens", type=int, help="B·T held fixed: B = tokens // T (default 32768 on GPU)")
    p.add_argument("--H", type=int)
    p.add_argument("--D", type=int)
    p.add_argument("--dtype", choices=sorted(measure.DTYPES), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--causal", nargs="?", const="yes", default="yes", choices=("yes", "no", "both"),
                   help="causal modes to run (default yes)")
    p.add_argument("--no-causal", dest="causal", action="store_const", const="no")
    p.add_argument("--noncausal-T", nargs="*", type=int, default=[],
                   help="also run non-causal at these T (for methods that have it)")
    p.add_argument("--directions", nargs="+", choices=specs.DIRECTIONS, default=list(specs.DIRECTIONS))
    p.add_argument("--impls", nargs="+", choices=impls.IMPLS,
                   help="default: all (on a CPU all but zoo-compile: one inductor compile takes 10-25 s there)")
    p.add_argument("--first-call-impls", nargs="*", choices=impls.IMPLS,
                   help="first-call latency for these (default: every impl run; none: give the flag no values)")
    p.add_argument("--first-call-directions", nargs="+", choices=specs.DIRECTIONS,
                   help="directions for first-call latency (default: --directions)")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--name", help="file stem in --out (default <device>-<date><suffix>)")
    p.add_argument("--suffix", default="", help="appended to the default file stem, e.g. -others")
    p.add_argument("--reps", type=int, help="timed calls per measurement (default 20 on GPU, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--quick", action="store_true", help="fewer lengths and repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cuda", "cpu"))
    p.add_argument("--peak-tflops", type=float, help="compute ceiling for floors (default: measured H100 bf16)")
    p.add_argument("--peak-tbps", type=float, help="bandwidth ceiling for floors, TB/s (default: measured H100)")
    p.add_argument("--max-case-s", type=float, default=5.0, help="fewer repeats when reps × one call exceeds this")
    p.add_argument("--case-timeout-s", type=float, default=180.0, help="give up one measurement after this")
    p.add_argument("--first-call-timeout-s", type=float, default=240.0)
    p.add_argument("--budget-s", type=float, help="start no new measurement after this many seconds")
    p.add_argument("--threads", type=int, help="CPU threads for torch (on a busy machine 1 avoids OpenMP stalls)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    base = dict(GPU_DEFAULTS if cuda else CPU_DEFAULTS)
    if args.quick:
        base.update(GPU_QUICK if cuda else CPU_QUICK)
    args.device = "cuda" if cuda else "cpu"
    if args.impls is None:
        args.impls = [i for i in impls.IMPLS if cuda or i != "zoo-compile"]
    for k in ("T", "H", "D", "dtype", "reps"):
        if getattr(args, k) is None:
            setattr(args, k, base[k])
    if args.B is None and args.tokens is None:
        args.tokens = base["tokens"]
    return args


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def short_device(name: str) -> str:
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?|RTX ?\d+)\b", name)
    return (m.group(1).replace(" ", "").lower() if m else "gpu") if not name.startswith("CPU") else "cpu"


def _version(*dists) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def driver_version() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def meta_record(args, argv, device, tflops, tbps) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "method": "meta",
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "fla": _version("fla-core", "flash-linear-attention"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cuda": torch.version.cuda if cuda else None,
        "driver": driver_version() if cuda else None,
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "peak_tflops": tflops,
        "peak_tbps": tbps,
        "ceilings": ("measured H100 ceilings (benchmarks/measure.py)" if tflops and not args.peak_tflops
                     else "given on the command line" if tflops else "none known for this device/dtype: no floors"),
        "definitions": DEFINITIONS,
    }


# ------------------------------------------------------------------------------------------------
# One case: a method at one shape and causal mode, every implementation and direction
# ------------------------------------------------------------------------------------------------
class Case:
    """Inputs, cotangent and float64 reference of one (method, B, T, causal), shared by all impls."""

    def __init__(self, spec, B, T, H, D, dtype, device, causal, seed):
        self.spec, self.B, self.T, self.H, self.D = spec, B, T, H, D
        self.dtype, self.device, self.causal = dtype, device, causal
        self.seed = zlib.crc32(f"{spec.name}/{B}/{T}/{H}/{D}/{causal}/{seed}".encode())
        self.x = spec.make_inputs(B, T, H, D, dtype, device, causal, self.seed)
        self.cot = None
        self._ref = None  # (o, {name: grad} or None), float64, on the err rows and heads
        self.pairs = measure.err_pairs(B, H) if spec.independent_heads else None

    def cotangent(self, o: torch.Tensor) -> torch.Tensor:
        if self.cot is None or self.cot.shape != o.shape:
            g = specs.generator(self.device, self.seed + 1)
            self.cot = specs.randn(g, tuple(o.shape), o.dtype, self.device)
        return self.cot

    def rows_of(self, t):
        """The err pairs' slice of t (all of t when the spec's heads are not independent)."""
        return t if self.pairs is None else measure.take_pairs(t, self.B, self.H, self.pairs)

    def reference(self, with_grads: bool):
        if self._ref is None or (with_grads and self._ref[1] is None):
            ref = impls.reference(self.spec)
            x64 = {n: (self.rows_of(v).detach().double() if isinstance(v, torch.Tensor) else v)
                   for n, v in self.x.items()}
            if with_grads:
                for n in self.spec.grad_inputs:
                    x64[n].requires_grad_(True)
                o = ref(x64, self.causal)
                o.backward(self.rows_of(self.cot).double())
                self._ref = (o.detach(), {n: x64[n].grad for n in self.spec.grad_inputs})
            else:
                with torch.no_grad():
                    self._ref = (ref(x64, self.causal), None)
        return self._ref


def measure_impl(case: Case, fn, direction: str, args, with_err: bool = True) -> dict:
    """ms, reps, peak_mb, err (and err_vs_softmax) of one implementation in one direction."""
    spec, x, causal = case.spec, case.x, case.causal
    leaves = [x[n] for n in spec.grad_inputs]
    if direction == "fwd":
        def step():
            with torch.no_grad():
                return fn(x, causal)
    else:
        for t in leaves:
            t.requires_grad_(True)
        cot = case.cotangent(fn(x, causal).detach())  # a warm-up call that also gives o's shape

        def step():
            for t in leaves:
                t.grad = None
            o = fn(x, causal)
            o.backward(cot)
            return o
    ms, reps = measure.time_ms(step, case.device, reps=args.reps, warmup=args.warmup, max_case_s=args.max_case_s)
    def drop_grads():
        for t in leaves:
            t.grad = None

    out = {"ms": ms, "reps": reps, "peak_mb": measure.peak_mb(step, case.device, prepare=drop_grads)}
    if not with_err:
        for t in leaves:
            t.grad = None
            t.requires_grad_(False)
        return out
    # Error: one more call, compared on the err rows/heads with the float64 definition.
    o = step()
    ref_o, ref_grads = case.reference(with_grads=direction == "fwdbwd")
    errs = [measure.rel_rms(case.rows_of(o), ref_o)]
    if direction == "fwdbwd":
        errs += [measure.rel_rms(case.rows_of(t.grad), ref_grads[n]) for n, t in zip(spec.grad_inputs, leaves)]
        out["err_grads"] = max(errs[1:])
    out["err"] = max(errs)
    if spec.approximates_softmax and direction == "fwd":
        q, k, v = (case.rows_of(x[n]) for n in ("q", "k", "v"))
        out["err_vs_softmax"] = measure.rel_rms(case.rows_of(o), measure.exact_softmax_f64(q, k, v, causal))
    for t in leaves:
        t.grad = None
        t.requires_grad_(False)
    return out


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def main(argv=None, *, handle_sigterm: bool = False) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = measure.DTYPES[args.dtype]
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    deadline = started + args.budget_s if args.budget_s else float("inf")
    if handle_sigterm:  # `timeout` sends SIGTERM: finish writing what was measured
        def _term(signum, frame):
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, _term)

    all_specs = specs.all_specs()
    names = args.methods or list(all_specs)
    chosen = []
    for name in names:
        if name not in all_specs:
            sys.exit(f"unknown method {name!r}; the specs know {sorted(all_specs)}")
        why = specs.module_available(all_specs[name].zoo_path)
        if why:
            print(f"[bench] skipping {name}: {all_specs[name].zoo_path} does not import ({why})", file=sys.stderr)
        else:
            chosen.append(all_specs[name])
    methods = [s.name for s in chosen]
    impls.allow_many_compiles()

    tflops, tbps = measure.ceilings(device_name(device) if device.type == "cuda" else "", args.dtype,
                                    args.peak_tflops, args.peak_tbps)
    meta = meta_record(args, argv, device, tflops, tbps)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name or f"{short_device(meta['device'])}-{meta['date'][:10]}{args.suffix}")

    modes = {"yes": [True], "no": [False], "both": [True, False]}[args.causal]
    shapes = [(T, c) for T in args.T for c in modes]
    shapes += [(T, False) for T in args.noncausal_T if (T, False) not in shapes]
    cases = [(spec, T, c) for T, c in shapes for spec in chosen if c in spec.causal_modes]
    head_T, head_causal = shapes[0] if shapes else (None, None)
    fc_impls = args.impls if args.first_call_impls is None else args.first_call_impls
    fc_jobs = [(spec, impl, d) for impl in impls.IMPLS if impl in fc_impls and impl in args.impls
               for spec in chosen if impls.applicable(spec, impl) and head_causal in spec.causal_modes
               for d in (args.first_call_directions or args.directions)]
    # Order: the first length (the headline, for the targets), then fast first calls (a target),
    # then the other lengths, then the other first calls; a budget cuts the tail, not the head.
    first_T = [c for c in cases if c[1] == head_T]
    jobs = ([("case", c) for c in first_T] + [("first", j) for j in fc_jobs if j[1] == "fast"]
            + [("case", c) for c in cases if c[1] != head_T] + [("first", j) for j in fc_jobs if j[1] != "fast"])

    def batch(T):
        return args.B if args.B else max(1, args.tokens // T)

    records: list[dict] = []
    sdpa_cache: dict[tuple, dict] = {}
    skipped: dict[tuple, str] = {}  # (method, impl, B, T, causal) -> why it cannot run here
    said: set[tuple] = set()
    n_steps = sum(len(args.directions) * sum(impls.applicable(s, i) for i in args.impls) for s, _, _ in cases)
    n_steps += len(fc_jobs)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_steps, desc="bench", unit="meas", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)  # a log file gets a line per 10 s

    def save():
        report.write_json(stem + ".json", [meta] + records)

    def base_record(spec, impl, direction, B, T, causal):
        H, D = args.H, args.D
        work = specs.SOFTMAX_ATTENTION if impl == "sdpa" else spec  # SDPA does softmax's work, whoever asks
        flops = work.flops(B, T, H, D, causal, direction)
        nbytes = work.bytes(B, T, H, D, causal, direction, torch.finfo(dtype).bits // 8)
        return {"method": spec.name, "impl": impl, "direction": direction, "causal": causal, "B": B, "T": T,
                "H": H, "D": D, "dtype": args.dtype, "ms": None, "peak_mb": None, "first_call_s": None,
                "err": None, "variant": spec.variant or None, "flops": flops, "bytes": nbytes,
                "floor_ms": measure.floor_ms(flops, nbytes, tflops, tbps), "tflops": None, "x_floor": None,
                "reps": None, "note": ""}

    def run_case(spec, T, causal):
        B = batch(T)
        try:
            case = Case(spec, B, T, args.H, args.D, dtype, device, causal, args.seed)
        except Exception as e:  # the spec cannot make inputs at this size: say so for every row
            for impl in (i for i in args.impls if impls.applicable(spec, i)):
                for d in args.directions:
                    records.append({**base_record(spec, impl, d, B, T, causal), "note": "inputs: " + _short(e)})
                    bar.update()
            return
        for impl in (i for i in args.impls if impls.applicable(spec, i)):
            try:
                fn, skip = impls.build(spec, impl, device, causal, (B, T, args.H, args.D)), None
            except impls.Skip as e:
                fn, skip = None, str(e)
                skipped[(spec.name, impl, B, T, causal)] = skip
                if (spec.name, impl, skip) not in said:  # say each reason once
                    said.add((spec.name, impl, skip))
                    bar.write(f"[bench] {spec.name} {impl} T={T}: skipped: {skip}", file=sys.stderr)
            for direction in args.directions:
                rec = base_record(spec, impl, direction, B, T, causal)
                bar.set_postfix_str(f"{spec.name} {impl} {direction} T={T}{'' if causal else ' nc'}")
                if skip:
                    rec["note"] = skip
                elif time.monotonic() > deadline:
                    rec["note"] = "not run: --budget-s spent"
                else:
                    key = (B, T, args.H, args.D, args.dtype, causal, direction)
                    try:
                        if impl == "sdpa" and not spec.sdpa_same_function:
                            # The speed bar: SDPA on q, k, v ~ N(0, 1) of this shape (this method's
                            # own inputs may differ, e.g. k with n_h·T rows), timed once per shape.
                            if key not in sdpa_cache:
                                bar_case = Case(specs.SOFTMAX_ATTENTION, B, T, args.H, args.D, dtype, device,
                                                causal, args.seed)
                                with measure.time_limit(args.case_timeout_s):
                                    sdpa_cache[key] = measure_impl(bar_case, impls.sdpa_call, direction, args,
                                                                   with_err=False)
                                del bar_case
                            got = {k: v for k, v in sdpa_cache[key].items() if not k.startswith("err")}
                            rec["note"] = "SDPA (softmax attention) on q, k, v ~ N(0, 1) of this shape: the speed bar"
                        else:
                            with measure.time_limit(args.case_timeout_s):
                                got = measure_impl(case, fn, direction, args)
                            if impl == "sdpa":
                                sdpa_cache.setdefault(key, got)
                        rec.update(got)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException as e:  # OOM, a timeout, a kernel that raises: a row that says so
                        rec["note"] = _short(e)
                        bar.write(f"[bench] {spec.name} {impl} {direction} T={T}: {rec['note']}", file=sys.stderr)
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    for t in case.x.values():
                        if isinstance(t, torch.Tensor):
                            t.grad = None
                            t.requires_grad_(False)
                for k in ("err", "err_grads", "err_vs_softmax"):  # JSON has no NaN: null and say so
                    if isinstance(rec.get(k), float) and not math.isfinite(rec[k]):
                        rec["note"] = "; ".join(filter(None, [rec["note"], f"{k} is {rec[k]} (non-finite output)"]))
                        rec[k] = None
                if rec["ms"] is not None:
                    rec["tflops"] = rec["flops"] / (rec["ms"] * 1e-3) / 1e12
                    if rec["floor_ms"]:
                        rec["x_floor"] = rec["ms"] / rec["floor_ms"]
                records.append(rec)
                save()
                bar.update()
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def run_first_call(spec, impl, direction):
        B = batch(head_T)
        bar.set_postfix_str(f"first call: {spec.name} {impl} {direction}")
        ran = False
        if (spec.name, impl, B, head_T, head_causal) in skipped:
            s, note = None, ""  # the row already says why the impl cannot run here
        elif time.monotonic() > deadline:
            s, note = None, "first call not run: --budget-s spent"
        else:
            timeout = min(args.first_call_timeout_s, max(10.0, deadline - time.monotonic()))
            s, note, timed_out = first_call.measure(spec.name, impl, (B, head_T, args.H, args.D), args.dtype,
                                                    head_causal, direction, args.device, timeout)
            ran = not (timed_out and timeout < args.first_call_timeout_s)
            if not ran:  # cut short by the budget, not by its own limit: a gap, not a failure
                note = f"first call cut off after {timeout:.0f} s by --budget-s"
        match = [r for r in records if (r["method"], r["impl"], r["direction"], r["T"], r["B"], r["causal"])
                 == (spec.name, impl, direction, head_T, B, head_causal)]
        if not match:
            match = [base_record(spec, impl, direction, B, head_T, head_causal)]
            records.append(match[0])
        for r in match:
            r["first_call_s"] = s
            if ran:
                r["first_call_ran"] = True  # a process was started: None then means it failed
            if note:
                r["note"] = "; ".join(filter(None, [r["note"], note]))
        save()
        bar.update()

    interrupted = False
    try:
        for kind, job in jobs:
            (run_case if kind == "case" else run_first_call)(*job)
    except KeyboardInterrupt:
        interrupted = True
        print("\n[bench] interrupted: writing what was measured", file=sys.stderr)
    finally:
        bar.close()
        save()
        table = report.markdown_table(records, methods)
        rows = targets.evaluate(records)
        header = (f"# Benchmark: {meta['device']}\n\n`{meta['command']}`  \n{meta['date']}; torch {meta['torch']}, "
                  f"triton {meta['triton']}, fla {meta['fla']}, CUDA {meta['cuda']}, driver {meta['driver']}; "
                  f"ceilings: {tflops} TFLOP/s, {tbps} TB/s ({meta['ceilings']})"
                  + ("\n\n**Interrupted: partial results.**" if interrupted else ""))
        text = (f"{header}\n\n{table}\n\n## Targets\n\n{targets.markdown(rows)}\n\n## Columns\n\n"
                + "\n".join(f"- `{k}`: {v}" for k, v in DEFINITIONS.items()) + "\n")
        with open(stem + ".md", "w") as f:
            f.write(text)
        print(text, flush=True)
        pngs = []
        if not args.no_plots:
            try:
                pngs = report.plot(records, methods, stem)
            except Exception as e:  # a plot must never cost the table
                print(f"[bench] plotting failed: {_short(e)}", file=sys.stderr)
        torch.set_num_threads(threads_before)
        print(f"[bench] wrote {stem}.json, {stem}.md" + "".join(f", {p}" for p in pngs)
              + f" in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return [meta] + records


if __name__ == "__main__":
    main(handle_sigterm=True)
