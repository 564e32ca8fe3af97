#!/bin/bash
# run 53 (session 13): HRC-LA phase 3 at 32 queries a program; the HRC-LA GPU tests in one process with OUT_QUERIES = 32.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
timeout 130 python3 benchmarks/results/h100-2026-11-23/run53-hrc_bq.py 2>&1 | grep -v -i warn | tee $R/hrc-bq.log
timeout -s INT 110 python3 -c "
import sys, fast.hrc_la as fh, pytest
fh.OUT_QUERIES = 32
sys.exit(pytest.main(['-o', 'addopts=', '-p', 'no:xdist', '-p', 'no:cacheprovider', '-m', 'gpu', '-q', '-rfEs', '-x', 'tests/test_hrc_la.py', '-k', 'half_precision or chunk_parallel or no_nan or gradients_equal_zoo_in_bf16']))
" 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -8 | tee $R/gpu-tests-q32.log
