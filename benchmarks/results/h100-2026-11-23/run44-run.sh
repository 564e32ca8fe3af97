#!/bin/bash
# run 44 (session 12): step 1 with whole-chunk products (timing, first calls); the whole GPU test suite
# (small-head-dim tiles of HRC-LA and FAVOR+, head dim 32 cases added to four methods' GPU tests).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 140 python3 .scratch/wy64.py 2>&1 | grep -v -i warn | tee $R/wy64.log
timeout 90 python3 .scratch/wy64_first.py 2>&1 | grep -v -i warn | tee $R/wy64-first.log
PYTHONPATH=/tmp/site timeout -s INT 340 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests > $R/gpu-tests.log 2>&1
echo "exit $?" >> $R/gpu-tests.log; tail -n 25 $R/gpu-tests.log
