#!/bin/bash
# run 41 (session 11): localise fast HRC-LA's phase-3 fault at K = V = M = 32 (case per process),
# memcheck on the base case, then the small-head-dim GPU test and test_train's hrc_la case.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
timeout 200 python3 .scratch/hrc_iae.py 2>&1 | grep -v -i warn | tee $R/hrc-iae.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "sanitizer: $CS" | tee $R/sanitizer.log
if [ -n "$CS" ]; then
  timeout 150 $CS --tool memcheck --print-limit 20 python3 .scratch/hrc_iae.py '{"B": 2, "T": 100, "H": 2, "K": 32, "M": 32}' >> $R/sanitizer.log 2>&1
  tail -n 60 $R/sanitizer.log
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/site timeout -s INT 150 python3 -m pytest -o addopts="" -n 4 -m gpu -q -rfEs -p no:cacheprovider tests/test_hrc_la.py -k "small_head" > $R/small-test.log 2>&1
echo "exit $?" >> $R/small-test.log; tail -n 30 $R/small-test.log
