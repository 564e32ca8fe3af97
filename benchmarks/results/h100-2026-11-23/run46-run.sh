#!/bin/bash
# run 46 (session 12): the cost of the small-head tiles (HRC-LA, FAVOR+ at head dim 32).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
OUTDIR=/tmp timeout 400 python3 .scratch/small_time.py 2>&1 | grep -v -i warn | tee $R/small-time.log
