#!/bin/bash
# run 58 (session 16): the delta family at the committed default tiles (step 1 one slice of 128, step 5
# slices of 32 at 4 warps) timed together, gated and DeltaProduct included, step 1 at 8 warps as one
# variant; which kernel makes DeltaProduct's gradients differ between repeats (run58-dp_determinism.py);
# first calls at the default tiles; the delta family's GPU tests (cut by run 57's time limit) with
# tracebacks; their fp32 tests on the GPU; kept vs recomputed with the g check (run54-delta_save.py).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
timeout 70 python3 $D/run56-delta_wy.py new delta,gated,dp2 2>&1 | grep -v -i warn | tee $R/delta-wy.log
timeout 25 python3 $D/run56-delta_wy.py new delta "wy=128,8,1" 2>&1 | grep -v -i warn | tee -a $R/delta-wy.log
timeout 60 python3 $D/run58-dp_determinism.py 2>&1 | grep -v -i warn | tee $R/dp-determinism.log
fc() { local name=$1; shift; env PYTHONPATH=/tmp/site TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 30 python3 $D/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
for m in deltanet gated_deltanet deltaproduct; do
  fc $m-fwdbwd --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
  fc $m-fwd --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
done
grep -E "^== |FIRST_CALL" $R/first.log
PYTHONPATH=/tmp/site timeout -s INT $(left 480) python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -80 > $R/gpu-tests.log
tail -4 $R/gpu-tests.log
PYTHONPATH=/tmp/site timeout -s INT $(left 540) python3 -m pytest -o addopts="" -n 12 -k float32 -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -40 > $R/gpu-tests-fp32.log
tail -3 $R/gpu-tests-fp32.log
for case in delta gated dp2; do timeout $(left 585) python3 $D/run54-delta_save.py $case 2>&1 | grep -v -i warn; done | tee $R/delta-save.log
echo "ended at $SECONDS s"
