#!/bin/bash
# run 61 (session 16): the fix of runs 58-60: step 4 at 2 stages (K = V = 128, 16-bit), and at K = 256
# in 16-bit steps 2'-5 at BV 16 and 2 stages. Timed at the defaults and with step 4 at (64, 4, 3)
# (the other configuration run 60 found correct); DeltaProduct's repeats compared kernel by kernel;
# the delta family's fast GPU tests (the K = 256 gradients, the new repeat test among them).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
timeout 100 python3 $D/run56-delta_wy.py new delta,gated,dp2 "" "dqkw=64,4,3" 2>&1 | grep -v -i warn | tee $R/delta-wy.log
timeout 40 python3 $D/run58-dp_determinism.py dp2 2>&1 | grep -v -i warn | head -7 | tee $R/dp-determinism.log
PYTHONPATH=/tmp/site timeout -s INT $(left 400) python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -60 > $R/gpu-tests.log
tail -12 $R/gpu-tests.log
echo "ended at $SECONDS s"
