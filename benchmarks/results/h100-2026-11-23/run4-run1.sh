#!/usr/bin/env bash
# GPU run 1 of session 2: K=256 fault diagnosis, untimed methods, SWA over T, lat-base tokens/s, mqar-paper.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run1 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$R/run.log" 2>&1 && export PYTHONPATH=/tmp/site
python3 -c "import fla; print('fla', fla.__version__)" >> "$R/env.txt" 2>&1
step diag 75 python3 .scratch/diag_k256.py
COMMON="--tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd --reps 10 --warmup 3 --max-case-s 2 --case-timeout-s 45 --no-plots --first-call-impls"
step bench-others 150 python3 -m benchmarks --methods based holographic gated_deltanet deltaproduct deltanet --T 8192 --causal yes --impls fast fla sdpa zoo-eager $COMMON --budget-s 135 --out "$R" --name h100-others
step bench-swa 60 python3 -m benchmarks --methods sliding_window_attention sliding_window_attention_w512 --T 2048 8192 32768 --causal yes --impls fast sdpa $COMMON --budget-s 50 --out "$R" --name h100-swa
TR="steps=30 eval_every=1000 eval_windows=32 progress=false tensorboard=false device=cuda"
step lat-fast 60 python3 -m train --config train/configs/lat-base.yaml impl=fast $TR out_dir=$R/lat-fast
step lat-sdpa 60 python3 -m train --config train/configs/lat-base.yaml impl=sdpa mixer=softmax_attention $TR out_dir=$R/lat-sdpa
step mqar-paper 120 python3 -m train --config train/configs/mqar-paper.yaml progress=false tensorboard=false device=cuda out_dir=$R/mqar-paper
find "$R" -name "*.pt" -delete
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
