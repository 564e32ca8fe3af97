#!/usr/bin/env bash
# Session 3, device run 3 (run 11 overall): HyperAttention GPU tests after the no-copy change, forward tile sweep, targets.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run11 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; sleep 1; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
step gpu-tests 100 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hyper_attention.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
step hyper-tiles 120 python3 .scratch/hyper_tiles.py
step hyper-bench 150 python3 .scratch/hyper_bench.py 131072
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
