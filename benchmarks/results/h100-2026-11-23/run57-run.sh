#!/bin/bash
# run 57 (session 15; run 56 lost its timings: the fp32 reference of run 54's code asks for more shared
# memory than the H100 has, fixed in fast.deltanet._tiles): steps 1 and 5 in column slices against run
# 54's kernels (.scratch/v/deltanet_head.py = `git show e7bab50:fast/deltanet.py`) at several launch
# configurations; the delta family's GPU tests and the fast files' fp32 tests on the GPU; kept vs
# recomputed intermediates with and without the g check (run54-delta_save.py).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
S="python3 $D/run56-delta_wy.py"
timeout 60 $S new delta,gated,dp2 2>&1 | grep -v -i warn | tee $R/delta-wy.log
cp fast/deltanet.py /tmp/deltanet_new.py
cp .scratch/v/deltanet_head.py fast/deltanet.py
timeout 60 $S head delta,gated,dp2 2>&1 | grep -v -i warn | tee -a $R/delta-wy.log
cp /tmp/deltanet_new.py fast/deltanet.py
timeout 80 $S new delta,gated,dp2 "wy_bwd=32,4,3" "wy_bwd=16,4,2,168" "wy_bwd=64,8,3" 2>&1 | grep -v -i warn | tee -a $R/delta-wy.log
PYTHONPATH=/tmp/site timeout -s INT 130 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -15 | tee $R/gpu-tests.log
PYTHONPATH=/tmp/site timeout -s INT 50 python3 -m pytest -o addopts="" -n 12 -k float32 -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -8 | tee -a $R/gpu-tests.log
for case in delta gated dp2; do timeout 35 python3 $D/run54-delta_save.py $case 2>&1 | grep -v -i warn; done | tee $R/delta-save.log
timeout 40 $S new delta "wy=64,4,2" "wy=128,4,1" 2>&1 | grep -v -i warn | tee -a $R/delta-wy.log
ls $R
