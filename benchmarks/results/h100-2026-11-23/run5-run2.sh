#!/usr/bin/env bash
# GPU run 2 of session 2 (run 5 overall): GPU tests of the changed files, the foundation benchmark with
# first calls, per-kernel tile sweeps (linear, holographic, softmax, delta rule stages), lat-base tokens/s.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run5 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$R/run.log" 2>&1 && export PYTHONPATH=/tmp/site
python3 -c "import fla; print('fla', fla.__version__)" >> "$R/env.txt" 2>&1
step gpu-tests 75 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_linear_attention.py tests/test_holographic.py
tail -n 2 "$R/gpu-tests.log" | tee -a "$R/run.log"
COMMON="--tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd --reps 10 --warmup 3 --max-case-s 2 --case-timeout-s 45 --no-plots"
step bench-foundation 110 python3 -m benchmarks --methods linear_attention softmax_attention --T 8192 --causal yes --impls fast fla sdpa zoo-compile $COMMON --first-call-impls fast --first-call-timeout-s 40 --budget-s 95 --out "$R" --name h100-foundation
step fast-holographic 40 python3 -m fast.holographic
step fast-softmax 50 python3 -m fast.softmax_attention
step fast-linear 30 python3 -m fast.linear_attention
TR="steps=20 eval_every=1000 eval_windows=16 progress=false tensorboard=false device=cuda"
step lat-fast 45 python3 -m train --config train/configs/lat-base.yaml impl=fast $TR out_dir=$R/lat-fast
step lat-sdpa 45 python3 -m train --config train/configs/lat-base.yaml impl=sdpa mixer=softmax_attention $TR out_dir=$R/lat-sdpa
step fast-deltanet 40 python3 -m fast.deltanet
find "$R" -name "*.pt" -delete
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
cp "$R/run.log" "$OUT/"
