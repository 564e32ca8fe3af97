#!/bin/bash
# run 43 (session 12): fast HRC-LA and Performer at small head dims: defaults, 2-warp tiles, CUDA 12.9's ptxas.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
timeout 330 python3 .scratch/hrc_small.py 2>&1 | grep -v -i warn | tee $R/hrc-small.log
timeout -s INT 150 python3 -m pytest -o addopts="" -q -rfEs -p no:cacheprovider tests/test_hrc_la.py -k small_head 2>&1 | tail -5 | tee $R/pytest-small.log
