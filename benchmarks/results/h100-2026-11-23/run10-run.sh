#!/usr/bin/env bash
# Session 3, device run 2 (run 10 overall): HyperAttention GPU tests and targets after the causal rewrite (c9c912b),
# holographic load-pipelining sweep (db4a66c).
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run10 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; sleep 1; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
step gpu-tests 120 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hyper_attention.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
step hyper-bench 200 python3 .scratch/hyper_bench.py 131072
step holo-sweep 80 python3 .scratch/holo_sweep.py
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
