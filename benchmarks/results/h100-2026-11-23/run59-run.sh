#!/bin/bash
# run 59 (session 16): run 58's two findings. (1) step 4's dw differs between identical launches with
# the gate (run59-step4.py: replay one captured launch at several configurations); (2) the illegal
# memory access of the K = V = 256 bf16 gradient test (run59-k256.py, CUDA_LAUNCH_BLOCKING=1, one
# process a configuration); then DeltaProduct's GPU tests alone (run 58's failed in the worker that
# had met the fault).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
for c in gated dp2; do timeout 90 python3 $D/run59-step4.py $c 64,8,3 64,8,2 64,8,1 32,8,3 32,8,2 64,4,3 128,8,2 128,8,1 2>&1 | grep -v -i warn; done | tee $R/step4.log
k() { echo "== $*"; CUDA_LAUNCH_BLOCKING=1 timeout 40 python3 $D/run59-k256.py "$@" 2>&1 | grep -E "K = V|launch|OK|Error|error" | grep -v "Search for\|TORCH_USE" | tail -4; }
{ k; k gated; for o in "state_fwd=32,8,1" "state_rec=32,4,1" "state_bwd=32,4,1" "dqkw=32,4,1" "wy_bwd=32,4,1" "state_bwd=16,8,1" "dqkw=16,8,1" "wy_bwd=16,8,1" "wy=64,4,1"; do k "$o"; done; } 2>&1 | tee $R/k256.log
PYTHONPATH=/tmp/site timeout -s INT $(left 540) python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfE --tb=short -p no:cacheprovider tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -60 > $R/gpu-tests-dp.log
tail -12 $R/gpu-tests-dp.log
echo "ended at $SECONDS s"
