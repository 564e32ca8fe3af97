#!/usr/bin/env bash
# Session 3, device run 10 (run 19 overall): Based chunk-parallel backward (ae1d3a1): sweep and GPU tests.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
timeout -s INT -k 5 100 python3 .scratch/based_bwd_sweep.py > "$R/based-bwd-sweep.log" 2>&1; echo "exit $?" >> "$R/based-bwd-sweep.log"
timeout -s INT -k 5 80 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_based.py > "$R/gpu-tests.log" 2>&1; echo "exit $?" >> "$R/gpu-tests.log"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
