#!/usr/bin/env bash
# Session 3, device run 5 (run 13 overall): holographic forward variants (round 2, a3fbc4a).
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
timeout -s INT -k 10 150 python3 .scratch/holo_sweep2.py > "$R/holo-sweep2.log" 2>&1; echo "exit $?" >> "$R/holo-sweep2.log"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
