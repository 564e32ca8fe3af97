#!/usr/bin/env bash
# Session 3, device run 4 (run 12 overall): GPU tests of HyperAttention and holographic at the committed tiles; HyperAttention's
# own benchmark (SDPA vs fast, T = 4k..131k, both modes, fwd and fwd+bwd, errors); holographic defaults (public op);
# zoo linear_attention_chunk compiled with max-autotune at L = 128.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run12 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; sleep 1; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
step gpu-tests 110 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hyper_attention.py tests/test_holographic.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
OUT="$R" step hyper-own-bench 170 python3 -m fast.hyper_attention 4096 16384 65536 131072
step holo-defaults 60 python3 .scratch/holo_sweep.py
step zoo-autotune 150 python3 .scratch/zoo_autotune.py 128
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
