#!/usr/bin/env bash
# Session 3, device run 7 (run 15 overall): holographic GPU tests and target check after the head-width view (both head splits).
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
timeout -s INT -k 10 100 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_holographic.py > "$R/gpu-tests.log" 2>&1; echo "exit $?" >> "$R/gpu-tests.log"
timeout -s INT -k 10 60 python3 .scratch/holo_final.py > "$R/holo-final.log" 2>&1; echo "exit $?" >> "$R/holo-final.log"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
