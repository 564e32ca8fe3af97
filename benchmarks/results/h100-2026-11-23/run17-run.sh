#!/usr/bin/env bash
# Session 3, device run 9 (run 17 overall): Based chunk-parallel causal forward (55c48b9): GPU tests and sweep.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
timeout -s INT -k 10 90 python3 .scratch/based_sweep.py > "$R/based-sweep.log" 2>&1; echo "exit $?" >> "$R/based-sweep.log"
timeout -s INT -k 10 120 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_based.py > "$R/gpu-tests.log" 2>&1; echo "exit $?" >> "$R/gpu-tests.log"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
