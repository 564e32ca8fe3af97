#!/bin/bash
# run 51 (session 13): HRC-LA phase 3: bf16 records as the read-out's operand, stages; ncu of phase 3 and the walk.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
timeout 200 python3 benchmarks/results/h100-2026-11-23/run51-hrc_p3.py 2>&1 | grep -v -i warn | tee $R/hrc-p3.log
timeout 150 ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --launch-skip 2 --launch-count 2 -k regex:"_hrc_la_chunk_(out|h)_kernel" python3 -c "
import sys; sys.argv = ['x', 'ncu']
exec(open('benchmarks/results/h100-2026-11-23/run51-hrc_p3.py').read().split('VARIANTS = ')[0] + open('benchmarks/results/h100-2026-11-23/run51-hrc_p3.py').read().split('    if len(sys.argv) > 1:  # one forward for ncu')[1].replace('\n        ', '\n'))
" > $R/ncu.log 2>&1; echo "ncu rc $?"; grep -E "Profiling|Duration|Throughput|Warp Cycles|Issued|Stall|Occupancy|Registers|Eligible|Active Warps" $R/ncu.log | head -60
