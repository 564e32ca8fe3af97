#!/bin/bash
# run 65 (session 17): first calls of the delta family after the forward without gradients got its own
# dry run (run 64: the gated forward's first call 5.59 s, over 5 s), new against old on one machine,
# alternating, each in a fresh process with empty caches (B 4, T 8192, H 16, D 128, bf16); the first-call
# GPU tests; HRC-LA's gradient error with two of run 63's three levers, and with fp32 records and tf32x3 in
# the backward only. Cut to fit the 300 s of device time left.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
fc() { local name=$1; shift; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 $D/run65-first_old_new.py "$@" --impl fast --B 4 --T 8192 --H 16 --D 128 --causal 1 >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
for m in gated_deltanet deltanet deltaproduct; do
  fc "$m fwd new" new --method $m --direction fwd
  fc "$m fwd old" old --method $m --direction fwd
done
for m in gated_deltanet deltaproduct; do [ $SECONDS -lt 120 ] && fc "$m fwdbwd" new --method $m --direction fwdbwd; done
grep -E "^== |FIRST_CALL|compiles:" $R/first.log
PYTHONPATH=/tmp/site timeout -s INT $(left 165) python3 -m pytest -o addopts="" -n 4 -m gpu -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py -k "dry_run or first" 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -8 > $R/gpu-tests.log
tail -2 $R/gpu-tests.log
timeout $(left 220) python3 $D/run63-hrc_grad_precision.py "FEATURE_DOTS_16 off + HALF_RECORDS off" "FEATURE_DOTS_16 off + tf32x3 in the backward" "fp32 records and tf32x3 in the backward" 2>&1 | grep -v -i warn | tee $R/hrc-grad-precision.log
echo "ended at $SECONDS s"
