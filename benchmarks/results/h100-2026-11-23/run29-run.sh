#!/bin/bash
# run 29: the delta forward with R computed in step 2 (R_IN_STEP2) against step 1's R; HRC-LA's chunk-parallel
# backward (helper's sweep); GPU tests of HRC-LA and Performer
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ for case in delta gated dp2; do R2=1 timeout 90 python3 .scratch/delta_tiles.py $case ops 2>&1 | grep -v -i warn; done
  for case in delta gated; do R2=1 timeout 120 python3 .scratch/delta_tiles.py $case state_fwd 2>&1 | grep -v -i warn; done; } | tee $R/r2.log
timeout 170 python3 .scratch/hrc_bwd_sweep.py 2>&1 | grep -v -i warn | tee $R/hrc-bwd.log
timeout 200 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hrc_la.py tests/test_performer.py > $R/gpu-tests.log 2>&1
tail -n 8 $R/gpu-tests.log
tar -czf $OUT/results.tar.gz -C $OUT results
