#!/bin/bash
# run 45 (session 12): step 1 split into a solve kernel and an apply kernel: timing, first calls, and the
# delta family's GPU tests with the split on (X in the input dtype, solve at 8 warps / maxnreg 128).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 200 python3 .scratch/split.py 2>&1 | grep -v -i warn | tee $R/split.log
timeout 100 python3 .scratch/split_first.py 2>&1 | grep -v -i warn | tee $R/split-first.log
ZOO_WY_SPLIT=2 PYTHONPATH=/tmp/site timeout -s INT 200 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py > $R/gpu-tests-split.log 2>&1
echo "exit $?" >> $R/gpu-tests-split.log; tail -n 8 $R/gpu-tests-split.log
