#!/bin/bash
# run 60 (session 16): run 59 again with its two scripts fixed (run59-step4.py captured the dry run's
# tiny launch; run59-k256.py's log kept too few lines to name the faulting kernel), and the K = 256
# kernels at 2 stages (every configuration tried in run 59 had 1 stage and faulted).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
D=benchmarks/results/h100-2026-11-23
k() { echo "== $*"; CUDA_LAUNCH_BLOCKING=1 timeout 30 python3 $D/run59-k256.py "$@" 2>&1 | grep -E "K = V|launch _|OK|Error: |out of resource" | grep -v "Search for\|TORCH_USE" | tail -9; }
{ k; k "state_rec=32,4,2"; k "state_bwd=32,4,2"; k "dqkw=32,8,2"; k "wy_bwd=32,8,2"; k "state_rec=16,4,2;state_bwd=16,4,2;dqkw=16,8,2;wy_bwd=16,8,2"; } 2>&1 | tee $R/k256.log
for c in gated dp2; do timeout 80 python3 $D/run59-step4.py $c 64,8,3 64,8,2 64,8,1 32,8,3 64,4,3 128,8,2 2>&1 | grep -v -i warn; done | tee $R/step4.log
echo "ended at $SECONDS s"
