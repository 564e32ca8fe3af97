#!/bin/bash
# run 63 (session 17), call 1 of 2: where the fast causal HRC-LA's bf16 gradient error of run 62 comes
# from (run63-hrc_grad_precision.py); the delta family's GPU tests with step 4's rule of session 16
# (one V tile up to V = 64 in 16-bit, one stage elsewhere; the repeat test at D = 64 and 128), never
# run on the GPU before; their fp32 tests on the GPU (K = 256 in fp32 among them).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
timeout 170 python3 $D/run63-hrc_grad_precision.py 2>&1 | grep -v -i warn | tee $R/hrc-grad-precision.log
PYTHONPATH=/tmp/site timeout -s INT $(left 400) python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -60 > $R/gpu-tests.log
tail -4 $R/gpu-tests.log
PYTHONPATH=/tmp/site timeout -s INT $(left 540) python3 -m pytest -o addopts="" -n 12 -k float32 -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -40 > $R/gpu-tests-fp32.log
tail -4 $R/gpu-tests-fp32.log
echo "ended at $SECONDS s"
